"""Stage-2 LightningModule: trains the DICE-Talk talker on TalkerDataModule batches.

Per step: frames -> scaled VAE latents (or cached latents), reference frame -> noise-augmented unscaled
latents + CLIP embedding, emotion prior from the frozen stage-1 embedder (sampled, or its mean), condition
dropout, then :func:`dicetalk.models.talker.step.diffusion_step` (EDM denoising + lambda_cls CE + lambda_vq VQ).

Checkpoints hold only the trainable talker weights (``state_dict`` is overridden), their EMA and a pointer
to the frozen base (``talker_base``: size, svd folder, talker config, trainable mode); the frozen UNet
part, VAE, CLIP and embedder are rebuilt from the init arguments. :func:`load_for_inference` rebuilds a
trained talker without Lightning or the embedder.
"""

from __future__ import annotations

import os
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torch.nn.modules.module import _IncompatibleKeys

from dicetalk.conditioning import DropoutRates, apply_condition_drops, sample_condition_drops
from dicetalk.constants import EMOTIONS
from dicetalk.diffusion.edm import added_time_ids, augment_reference, sample_noise_aug_strength
from dicetalk.diffusion.sampler import euler_sample, karras_sigmas
from dicetalk.media import write_video
from dicetalk.models.embedder import load_embedder
from dicetalk.models.talker import LossWeights, TalkerConfig, TalkerParts, build_talker, emotion_class, tiny_talker_config
from dicetalk.models.talker.losses import accuracy
from dicetalk.models.talker.step import diffusion_step, encode_image, vae_decode, vae_encode

CKPT_FORMAT = "dicetalk-talker-ckpt-v1"
PriorMode = Literal["sample", "mean"]


def _talker_config(size: str, overrides: Mapping[str, Any] | None) -> TalkerConfig:
    overrides = dict(overrides or {})
    return tiny_talker_config(**overrides) if size == "tiny" else TalkerConfig(**overrides)


class TalkerModule(pl.LightningModule):
    """DICE-Talk stage 2. Init arguments (all in the YAML configs):

    size / svd_path / variant: the base ("tiny" random test sizes, or "full" from a local svd-xt folder);
    talker: TalkerConfig overrides (e.g. ``use_bank: false``, ``kv_mode: all``, ``num_classes: 8``);
    embedder_ckpt: stage-1 EmbedderModule checkpoint (frozen; gives the emotion priors);
    prior: "sample" (s = mu + sigma * eps, default) or "mean" (the mean-prior ablation);
    trainable: "new" | "attention" | "all"; lambda_cls, lambda_vq: loss weights;
    dropout: condition-dropout rates {audio, image, emotion, all}; time_ids: SVD added_time_ids
    (fps, motion bucket, third slot; DICE-Talk inference passes 12.5, 8, 16);
    gradient_checkpointing; frozen_dtype: cast the frozen weights ("bf16"/"fp16") to halve their memory;
    optimizer: lr, weight_decay, betas, warmup_steps, adam_8bit (bitsandbytes AdamW8bit when installed,
    else AdamW with a warning); ema_decay: EMA of the trainable weights (None = off);
    val_sample_steps: Euler steps of the rendered validation sample; bank_window: steps over which bank
    usage (perplexity, dead entries) is measured.
    """

    def __init__(
        self,
        size: Literal["tiny", "full"] = "tiny",
        svd_path: str | None = None,
        variant: str | None = None,
        talker: dict[str, Any] | None = None,
        embedder_ckpt: str | None = None,
        prior: PriorMode = "sample",
        trainable: Literal["new", "attention", "all"] = "new",
        lambda_cls: float = 0.1,
        lambda_vq: float = 1.0,
        dropout: dict[str, float] | None = None,
        time_ids: tuple[float, float, float] = (12.5, 8.0, 16.0),
        gradient_checkpointing: bool = False,
        frozen_dtype: Literal["bf16", "fp16"] | None = None,
        lr: float = 1e-5,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        adam_8bit: bool = False,
        ema_decay: float | None = None,
        vae_chunk: int = 16,
        val_sample_steps: int = 4,
        bank_window: int = 100,
    ):
        super().__init__()
        if prior not in ("sample", "mean"):
            raise ValueError(f"TalkerModule: prior must be 'sample' or 'mean', got {prior!r}")
        if embedder_ckpt is None:
            raise ValueError("TalkerModule: embedder_ckpt (the stage-1 checkpoint) is required for the priors")
        self.save_hyperparameters()
        parts = build_talker(size, svd_path, _talker_config(size, talker), variant)
        self.talker, self.vae, self.image_encoder = parts.talker, parts.vae, parts.image_encoder
        self.vae_scaling = parts.vae_scaling
        self.embedder = load_embedder(embedder_ckpt).requires_grad_(False)
        self.trainable_names = sorted(self.talker.trainable_named_parameters(trainable))
        self.talker.set_trainable(trainable)
        if gradient_checkpointing:
            self.talker.unet.enable_gradient_checkpointing()
        if frozen_dtype is not None:
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[frozen_dtype]
            for module in (self.talker, self.vae, self.image_encoder):
                for p in module.parameters():
                    if not p.requires_grad:
                        p.data = p.data.to(dtype)
        self.loss_weights = LossWeights(cls=lambda_cls, vq=lambda_vq)
        self.dropout_rates = DropoutRates(**(dropout or {}))
        self.ema: dict[str, Tensor] | None = None
        self._bank_indices: deque[Tensor] = deque(maxlen=bank_window)

    # -- frozen parts --------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> TalkerModule:
        """Train mode for the talker only: the VAE, CLIP and the embedder stay in eval mode."""
        super().train(mode)
        for frozen in (self.vae, self.image_encoder, self.embedder):
            frozen.eval()
        return self

    def setup(self, stage: str) -> None:
        window = getattr(getattr(self.trainer, "datamodule", None), "hparams", {}).get("prior_window")
        ckpt = torch.load(self.hparams.embedder_ckpt, map_location="cpu", weights_only=True)
        trained = ckpt.get("embedder_window")
        if window is not None and trained is not None and int(window) != int(trained):
            rank_zero_warn(f"data.prior_window={window} but the embedder was trained on {trained}-frame windows")

    # -- checkpoints: trainable weights + EMA + pointer to the base ---------------------------------
    def state_dict(self, *args: Any, destination: dict | None = None, prefix: str = "", keep_vars: bool = False):
        """Only the trainable talker weights (``talker.<name>``); the frozen base is never saved."""
        out = OrderedDict() if destination is None else destination
        params = dict(self.talker.named_parameters())
        for name in self.trainable_names:
            p = params[name]
            out[f"{prefix}talker.{name}"] = p if keep_vars else p.detach()
        return out

    def load_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True, assign: bool = False):
        """Load trainable talker weights saved by :meth:`state_dict`; the rest keeps its (base) values."""
        expected = {f"talker.{n}" for n in self.trainable_names}
        unknown = sorted(set(state_dict) - expected)
        if unknown:
            raise KeyError(f"TalkerModule: {len(unknown)} checkpoint keys are not trainable here, e.g. {unknown[0]}"
                           f" (trainable mode {self.hparams.trainable!r})")
        missing = sorted(expected - set(state_dict))
        if strict and missing:
            raise KeyError(f"TalkerModule: checkpoint lacks {len(missing)} trainable weights, e.g. {missing[0]}")
        self.talker.load_state_dict({k[len("talker."):]: v for k, v in state_dict.items()}, strict=False, assign=assign)
        return _IncompatibleKeys(missing, [])

    def base_pointer(self) -> dict[str, Any]:
        """What rebuilds the frozen base: size, svd folder, variant, talker config, trainable mode."""
        h = self.hparams
        return {"format": CKPT_FORMAT, "size": h.size, "svd_path": h.svd_path, "variant": h.variant,
                "config": asdict(self.talker.config), "trainable": h.trainable}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["talker_base"] = self.base_pointer()
        if self.ema is not None:
            checkpoint["talker_ema"] = {k: v.detach().cpu().clone() for k, v in self.ema.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        base = checkpoint.get("talker_base", {})
        if base.get("format") != CKPT_FORMAT:
            raise ValueError(f"TalkerModule: not a talker checkpoint (talker_base format {base.get('format')!r})")
        if "talker_ema" in checkpoint:
            self.ema = {k: v.clone() for k, v in checkpoint["talker_ema"].items()}

    # -- EMA ----------------------------------------------------------------------------------------
    def _trainable(self) -> Iterator[tuple[str, Tensor]]:
        params = dict(self.talker.named_parameters())
        return ((n, params[n]) for n in self.trainable_names)

    def on_fit_start(self) -> None:
        if self.hparams.ema_decay is not None and self.ema is None:
            self.ema = {n: p.detach().float().clone() for n, p in self._trainable()}
        elif self.ema is not None:
            self.ema = {n: v.to(self.device) for n, v in self.ema.items()}

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.hparams.ema_decay
        for name, p in self._trainable():
            self.ema[name].lerp_(p.detach().float(), 1 - decay)

    @contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Swap the EMA weights in for the duration (no-op without EMA)."""
        if self.ema is None:
            yield
            return
        saved = {n: p.detach().clone() for n, p in self._trainable()}
        with torch.no_grad():
            for n, p in self._trainable():
                p.copy_(self.ema[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self._trainable():
                    p.copy_(saved[n])

    # -- inputs ---------------------------------------------------------------------------------------
    def labels(self, emotion: Tensor, level: Tensor) -> Tensor:
        """Classifier classes of raw (emotion id, level) pairs; -1 where unlabelled."""
        classes = self.talker.config.num_classes
        values = [
            emotion_class(EMOTIONS[e] if e >= 0 else None, lv or None, classes)
            for e, lv in zip(emotion.tolist(), level.tolist())
        ]
        return torch.tensor(values, dtype=torch.long, device=emotion.device)

    @torch.no_grad()
    def priors(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Emotion priors (B, prior_dim) of the batch's windows from the frozen embedder."""
        out = self.embedder(batch["prior_expression"], batch["prior_whisper"], "both")
        return (out.mu if self.hparams.prior == "mean" else out.prior).float()

    @torch.no_grad()
    def conditions(self, batch: Mapping[str, Tensor], train: bool) -> dict[str, Tensor]:
        """Clean scaled latents and every conditioning input of a batch (condition dropout when ``train``)."""
        ref_pixels = batch["ref_pixels"]
        b = ref_pixels.shape[0]
        strength = sample_noise_aug_strength(b, device=self.device)
        if "latents" in batch:
            clean = batch["latents"].float()
            ref_latents = batch["ref_latents"].float() / self.vae_scaling
            ref_latents = augment_reference(ref_latents, strength) if train else ref_latents
        else:
            pixels = batch["pixels"]
            chunk = self.hparams.vae_chunk
            clean = (vae_encode(self.vae, pixels.flatten(0, 1), chunk).unflatten(0, pixels.shape[:2])
                     * self.vae_scaling).float()
            ref_in = augment_reference(ref_pixels, strength) if train else ref_pixels
            ref_latents = vae_encode(self.vae, ref_in, chunk, sample=False).float()
        image_embeds = encode_image(self.image_encoder, ref_pixels).float()
        whisper, prior = batch["whisper"].float(), self.priors(batch)
        if train:
            drops = sample_condition_drops(b, self.dropout_rates, device=self.device)
            whisper, ref_latents, image_embeds, prior = apply_condition_drops(
                drops, whisper=whisper, ref_latents=ref_latents, image_embeds=image_embeds, prior=prior
            )
        return {
            "clean": clean,
            "ref_latents": ref_latents,
            "image_embeds": image_embeds,
            "added_time_ids": added_time_ids(*self.hparams.time_ids, b, device=self.device),
            "whisper": whisper,
            "prior": prior,
            "face_mask": batch["face_mask"].float(),
            "labels": self.labels(batch["emotion"], batch["level"]),
        }

    # -- training -------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        inputs = self.conditions(batch, train=True)
        clean, labels = inputs.pop("clean"), inputs["labels"]
        result = diffusion_step(self.talker, clean, weights=self.loss_weights, **inputs)
        b = clean.shape[0]
        self.log("train/loss", result.loss, prog_bar=True, batch_size=b)
        self.log_dict({"train/denoise": result.denoise, "train/cls": result.cls, "train/vq": result.vq}, batch_size=b)
        acc = accuracy(result.output.logits.detach(), labels)
        if not torch.isnan(acc):
            self.log("train/cls_acc", acc, batch_size=int((labels >= 0).sum()))
        if result.output.bank_index is not None:
            self._log_bank(result.output.bank_index)
        return result.loss

    def _log_bank(self, index: Tensor) -> None:
        gathered = self.all_gather(index).flatten() if self.trainer.world_size > 1 else index
        self._bank_indices.append(gathered.detach().cpu())
        counts = torch.bincount(torch.cat(list(self._bank_indices)), minlength=self.talker.config.bank_size).double()
        p = counts / counts.sum()
        entropy = -(p[p > 0] * p[p > 0].log()).sum()
        self.log_dict({"train/bank_perplexity": entropy.exp().float(), "train/bank_dead": (counts == 0).sum().float()},
                      rank_zero_only=True)

    def on_after_backward(self) -> None:
        # gradient checkpointing recomputes blocks during backward from the context: clear only now
        self.talker.clear_context()

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # EMA here, not in on_train_batch_end: checkpoint callbacks run before the module's batch-end hook
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None and self.hparams.ema_decay is not None:
            self._update_ema()

    def configure_optimizers(self):
        h = self.hparams
        params = [p for _, p in self._trainable()]
        optimizer_cls = torch.optim.AdamW
        if h.adam_8bit:
            try:
                import bitsandbytes as bnb

                optimizer_cls = bnb.optim.AdamW8bit
            except ImportError:
                rank_zero_warn("adam_8bit: bitsandbytes is not installed, using torch AdamW")
        optimizer = optimizer_cls(params, lr=h.lr, weight_decay=h.weight_decay, betas=tuple(h.betas))
        warmup = max(1, h.warmup_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # -- validation -----------------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        with self.ema_weights():
            inputs = self.conditions(batch, train=False)
            clean, labels = inputs.pop("clean"), inputs["labels"]
            generator = torch.Generator(self.device).manual_seed(batch_idx)  # same sigmas and noise every time
            result = diffusion_step(self.talker, clean, weights=self.loss_weights, generator=generator, **inputs)
            self.talker.clear_context()
            b = clean.shape[0]
            self.log_dict({"val/loss": result.loss, "val/denoise": result.denoise, "val/cls": result.cls},
                          batch_size=b, sync_dist=True)
            acc = accuracy(result.output.logits, labels)
            if not torch.isnan(acc):
                self.log("val/cls_acc", acc, batch_size=int((labels >= 0).sum()), sync_dist=True)
            if batch_idx == 0 and self.global_rank == 0 and not self.trainer.sanity_checking:
                self._log_sample(clean[:1], {k: v[:1] for k, v in inputs.items()}, batch["ref_pixels"][:1])

    @torch.no_grad()
    def sample(self, inputs: Mapping[str, Tensor], shape: torch.Size, steps: int, seed: int = 0) -> Tensor:
        """Euler sample of scaled latents ``shape`` (B, F, 4, h, w) with the talker in eval mode (all bank
        entries), from the conditioning ``inputs`` (as :meth:`conditions` returns them)."""
        sigmas = karras_sigmas(steps).to(self.device)
        generator = torch.Generator(self.device).manual_seed(seed)
        x = torch.randn(shape, generator=generator, device=self.device) * sigmas[0]
        args = {k: inputs[k] for k in ("ref_latents", "image_embeds", "added_time_ids", "whisper", "prior", "face_mask")}
        was_training = self.talker.training
        self.talker.eval()
        try:
            out = euler_sample(lambda z, s: self.talker(z, s, **args).denoised.float(), x, sigmas)
        finally:
            self.talker.clear_context()
            self.talker.train(was_training)
        return out

    def _log_sample(self, clean: Tensor, inputs: dict[str, Tensor], ref_pixels: Tensor) -> None:
        """Render one validation sample; log reference | generated | ground-truth frames to TensorBoard as an
        animated image and write it as mp4 under the log dir."""
        latents = self.sample(inputs, clean.shape, self.hparams.val_sample_steps)
        chunk = self.hparams.vae_chunk
        generated = vae_decode(self.vae, latents / self.vae_scaling, chunk)[0]  # (F, 3, H, W)
        truth = vae_decode(self.vae, clean / self.vae_scaling, chunk)[0]
        ref = ref_pixels[0].float().clamp(-1, 1).expand_as(generated)
        panel = torch.cat([ref, generated, truth], dim=-1)  # side by side, per frame
        frames = ((panel + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu()  # (F, 3, H, 3W)
        experiment = getattr(self.logger, "experiment", None)
        log_dir = getattr(self.logger, "log_dir", None) or self.trainer.default_root_dir
        path = Path(log_dir) / "samples" / f"step{self.global_step:07d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        even = frames[..., : frames.shape[-2] // 2 * 2, : frames.shape[-1] // 2 * 2]  # H.264 needs even sides
        write_video(path, even.permute(0, 2, 3, 1).numpy(), 25 / 2)
        if experiment is not None and hasattr(experiment, "_get_file_writer"):  # a TensorBoard SummaryWriter
            experiment._get_file_writer().add_summary(gif_summary("val/sample", frames, fps=12.5), self.global_step)

    # -- inference loading ----------------------------------------------------------------------------
    @staticmethod
    def load_for_inference(
        ckpt_path: str | os.PathLike, map_location: str | torch.device = "cpu", use_ema: bool = True,
        svd_path: str | None = None,
    ) -> tuple[TalkerParts, dict[str, Any]]:
        """See :func:`load_for_inference`."""
        return load_for_inference(ckpt_path, map_location, use_ema, svd_path)


def gif_summary(tag: str, frames: Tensor, fps: float):
    """A TensorBoard image summary holding an animated GIF of ``frames`` (F, 3, H, W) uint8.

    TensorBoard plays GIF image summaries as videos. torch's ``add_video`` needs moviepy 1.x and, with
    torch 2.9 and numpy >= 2.4, fails in its own reshape, so the GIF is encoded here with Pillow.
    """
    import io

    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    images = [Image.fromarray(frame.permute(1, 2, 0).numpy()) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=1000 / fps, loop=0)
    image = Summary.Image(height=frames.shape[-2], width=frames.shape[-1], colorspace=3,
                          encoded_image_string=buffer.getvalue())
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def load_for_inference(
    ckpt_path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    use_ema: bool = True,
    svd_path: str | None = None,
) -> tuple[TalkerParts, dict[str, Any]]:
    """Rebuild a trained talker from a TalkerModule checkpoint, without Lightning or the stage-1 embedder.

    The base (tiny, or full from the svd-xt folder recorded at training time; ``svd_path`` overrides it,
    e.g. on another machine) is built, then the trainable weights are loaded: the EMA copy when the
    checkpoint has one and ``use_ema``. Returns ``(TalkerParts(talker, vae, image_encoder, vae_scaling),
    info)``, the talker in eval mode on ``map_location``; ``info`` is the checkpoint's base pointer plus
    ``hyper_parameters`` (time_ids, prior mode, ...), ``global_step`` and ``ema`` (whether EMA was used).
    """
    path = os.fspath(ckpt_path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise ValueError(f"{path}: cannot read a checkpoint ({err})") from err
    base = ckpt.get("talker_base") if isinstance(ckpt, dict) else None
    if not base or base.get("format") != CKPT_FORMAT:
        raise ValueError(f"{path}: not a TalkerModule checkpoint (no talker_base of format {CKPT_FORMAT})")
    parts = build_talker(base["size"], svd_path or base["svd_path"], TalkerConfig(**base["config"]), base["variant"])
    ema = ckpt.get("talker_ema") if use_ema else None
    prefix = "talker."
    weights = ema or {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    own = parts.talker.state_dict()
    bad = [k for k in weights if k not in own or own[k].shape != weights[k].shape]
    if bad:
        raise ValueError(f"{path}: {len(bad)} weights do not fit the rebuilt talker, e.g. {bad[0]}")
    parts.talker.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()}, strict=False)
    for module in (parts.talker, parts.vae, parts.image_encoder):
        module.to(map_location).eval()
    info = {**base, "hyper_parameters": dict(ckpt.get("hyper_parameters", {})),
            "global_step": ckpt.get("global_step"), "ema": ema is not None}
    return parts, info


__all__ = ["TalkerModule", "load_for_inference", "CKPT_FORMAT"]
