"""Stage-1 LightningModule: InfoNCE training of the emotion embedder, with embedding-quality validation."""
from __future__ import annotations

import math
from dataclasses import asdict

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from dicetalk.constants import EMOTIONS
from dicetalk.evaluation.embedding import clustering_strength, knn_accuracy, linear_probe_accuracy, tsne_figure
from dicetalk.losses import info_nce, pair_statistics
from dicetalk.models.embedder import MODALITIES, EmbedderConfig, EmotionEmbedder

_MODALITY_TAG = {"both": "video_audio", "video": "video", "audio": "audio"}


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup from 0, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class EmbedderModule(pl.LightningModule):
    """Trains EmotionEmbedder with symmetric InfoNCE on window pairs (EmbedderDataModule batches).

    Validation embeds labelled windows of held-out identities with video+audio, video only and audio only
    and logs clustering strength (Table 5), 5-NN emotion accuracy, an identity probe on the priors versus
    on the raw visual features, and (TensorBoard) a t-SNE figure.
    """

    def __init__(
        self,
        embedder: EmbedderConfig | None = None,
        temperature: float = 0.1,
        lr: float = 3e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 500,
        min_lr_ratio: float = 0.05,
        sample_prior: bool = True,
        knn_k: int = 5,
        probe_folds: int = 4,
        tsne_every_n_val: int = 1,
    ):
        super().__init__()
        config = embedder if isinstance(embedder, EmbedderConfig) else EmbedderConfig(**(embedder or {}))
        self.save_hyperparameters(ignore=["embedder"])
        self.hparams["embedder"] = asdict(config)  # plain dict: checkpoints stay weights_only-loadable
        self.embedder = EmotionEmbedder(config)
        self._val_outputs: list[dict[str, np.ndarray]] = []
        self._val_count = 0

    # -- setup / checkpoint -------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # Runs before a checkpoint is restored, so resumed runs keep their saved statistics.
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and hasattr(datamodule, "expression_stats"):
            self.embedder.set_expression_stats(*datamodule.expression_stats())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # plain-typed copies read by models.embedder.load_embedder and priors.checkpoint_window
        checkpoint["embedder_config"] = self.embedder.config_dict()
        window = getattr(getattr(self.trainer, "datamodule", None), "hparams", {}).get("window")
        if window is not None:
            checkpoint["embedder_window"] = int(window)

    # -- training -----------------------------------------------------------------------------------
    def forward(self, expression: Tensor, whisper: Tensor, modality: str | None = None):
        return self.embedder(expression, whisper, modality)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        b = batch["key"].shape[0]
        # one forward for both sides; modality dropout is drawn independently per row
        out = self.embedder(
            torch.cat([batch["anchor_expression"], batch["positive_expression"]]),
            torch.cat([batch["anchor_whisper"], batch["positive_whisper"]]),
        )
        z = out.prior if self.hparams.sample_prior else out.mu
        anchors, positives = z[:b], z[b:]
        loss = info_nce(anchors, positives, self.hparams.temperature, batch["mask_key"])
        stats = pair_statistics(anchors, positives, batch["mask_key"])
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, batch_size=b)
        self.log("train/sigma", out.sigma.mean(), batch_size=b)
        return loss

    def configure_optimizers(self):
        h = self.hparams
        decay, no_decay = [], []
        for name, p in self.embedder.named_parameters():
            # no weight decay on biases, norms and positional tables
            (no_decay if p.ndim < 2 or name.startswith("pos_") else decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": h.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=h.lr, betas=tuple(h.betas),
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(h.warmup_steps, total // 2)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, warmup, total, h.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- validation ---------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        row = {k: batch[k].cpu().numpy() for k in ("emotion", "identity", "clip")}
        for m in MODALITIES:
            row[m] = self.embedder(batch["expression"], batch["whisper"], m).mu.float().cpu().numpy()
        row["raw_visual"] = batch["expression"].float().mean(dim=1).cpu().numpy()
        self._val_outputs.append(row)

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs or self.trainer.sanity_checking:
            return
        figures = embedding_report(
            {k: np.concatenate([o[k] for o in self._val_outputs]) for k in self._val_outputs[0]},
            k=self.hparams.knn_k, folds=self.hparams.probe_folds,
        )
        # every rank evaluates the same full set (see EmbedderDataModule), so no cross-rank reduction
        self.log_dict({f"val/{k}": v for k, v in figures.items()}, sync_dist=False)
        self._val_count += 1
        every = self.hparams.tsne_every_n_val
        experiment = getattr(self.logger, "experiment", None)
        if every > 0 and self._val_count % every == 0 and hasattr(experiment, "add_figure") and self.global_rank == 0:
            rows = self._val_outputs
            fig = tsne_figure(np.concatenate([o["both"] for o in rows]), np.concatenate([o["emotion"] for o in rows]),
                              EMOTIONS, title=f"priors (mu), held-out identities, step {self.global_step}")
            experiment.add_figure("val/tsne_priors", fig, global_step=self.global_step)
        self._val_outputs = []


def embedding_report(v: dict[str, np.ndarray], k: int = 5, folds: int = 4) -> dict[str, float]:
    """Embedding-quality figures from validation outputs.

    ``v`` holds per-window arrays: ``both``/``video``/``audio`` (mu per input modality), ``raw_visual``
    (window-mean expression features), ``emotion``, ``identity``, ``clip``.
    """
    out: dict[str, float] = {}
    for m in MODALITIES:
        strength = clustering_strength(v[m], v["emotion"], v["identity"])
        if strength:
            out[f"clustering_{_MODALITY_TAG[m]}"] = float(np.mean(list(strength.values())))
        out[f"knn{k}_emotion_{_MODALITY_TAG[m]}"] = knn_accuracy(v[m], v["emotion"], k, exclude_groups=v["clip"])
    out[f"knn{k}_emotion_cross_identity"] = knn_accuracy(v["both"], v["emotion"], k, exclude_groups=v["identity"])
    if len(np.unique(v["identity"])) >= 2 and len(np.unique(v["emotion"])) >= 2:
        # probes trained on some emotions, tested on the others: identity information that is not emotion
        out["identity_probe_prior"] = linear_probe_accuracy(v["both"], v["identity"], v["emotion"], folds)
        out["identity_probe_raw_visual"] = linear_probe_accuracy(v["raw_visual"], v["identity"], v["emotion"], folds)
    return out
