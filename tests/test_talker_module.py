"""TalkerModule: labels, priors, checkpoints without the frozen base, resume, inference loading, validation
sample, ablation configs."""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from dicetalk.data.talker_data import TalkerDataModule
from dicetalk.lightning.talker_module import TalkerModule, load_for_inference
from talker_fixtures import make_embedder_ckpt, make_talker_store, tiny_data_args

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("talker_module")
    return make_talker_store(root / "store"), make_embedder_ckpt(root / "embedder.ckpt")


def _trainer(root: Path, max_steps: int, **kwargs) -> pl.Trainer:
    callbacks = [pl.callbacks.ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, save_top_k=0,
                                              every_n_train_steps=2)]
    return pl.Trainer(default_root_dir=root, max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                      num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False, **kwargs)


def test_labels_follow_the_classifier_classes(env):
    _, ckpt = env
    # happy = EMOTIONS[4], neutral = EMOTIONS[5]; 22 classes: neutral 0, then 7 emotions x 3 levels
    emotion, level = torch.tensor([4, 5, -1, 0]), torch.tensor([3, 1, 0, 2])
    module = TalkerModule(embedder_ckpt=str(ckpt))
    assert module.labels(emotion, level).tolist() == [1 + 3 * 4 + 2, 0, -1, 1 + 3 * 0 + 1]
    module8 = TalkerModule(embedder_ckpt=str(ckpt), talker={"num_classes": 8})
    assert module8.labels(emotion, level).tolist() == [4, 5, -1, 0]


def test_prior_is_sampled_or_the_mean(env):
    store, ckpt = env
    dm = TalkerDataModule(**tiny_data_args(store))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    sampled = TalkerModule(embedder_ckpt=str(ckpt), prior="sample")
    mean = TalkerModule(embedder_ckpt=str(ckpt), prior="mean")
    mu = mean.embedder(batch["prior_expression"], batch["prior_whisper"], "both").mu
    torch.testing.assert_close(mean.priors(batch), mu)
    torch.testing.assert_close(mean.priors(batch), mean.priors(batch))
    assert not torch.allclose(sampled.priors(batch), sampled.priors(batch))


def test_checkpoint_holds_trainable_weights_only_and_resumes(env, tmp_path):
    store, ckpt = env
    pl.seed_everything(0)
    module = TalkerModule(embedder_ckpt=str(ckpt), ema_decay=0.5, lr=1e-3)
    trainer = _trainer(tmp_path, 2)
    trainer.fit(module, TalkerDataModule(**tiny_data_args(store)))
    last = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)

    trainable = set(module.talker.trainable_named_parameters("new"))
    assert set(saved["state_dict"]) == {f"talker.{n}" for n in trainable}
    assert not any(k.startswith(("vae.", "image_encoder.", "embedder.", "talker.unet.conv_in")) for k in saved["state_dict"])
    assert set(saved["talker_ema"]) == trainable
    assert saved["talker_base"]["size"] == "tiny" and saved["talker_base"]["trainable"] == "new"
    # weights + EMA + two Adam moments + < 0.5 MB overhead; the frozen part (~10 MB here) would not fit
    trainable_bytes = sum(p.numel() * 4 for n, p in module.talker.named_parameters() if n in trainable)
    frozen_bytes = sum(p.numel() * 4 for p in module.parameters()) - trainable_bytes
    assert frozen_bytes > 4_000_000
    assert last.stat().st_size < 4 * trainable_bytes + 500_000

    # load_from_checkpoint: same trainable weights and the same (seeded) frozen base
    loaded = TalkerModule.load_from_checkpoint(last)
    for (name, p), (_, q) in zip(module.talker.named_parameters(), loaded.talker.named_parameters()):
        torch.testing.assert_close(p, q, msg=name)
    assert loaded.ema is not None and set(loaded.ema) == trainable

    # resume: the run continues from step 2 to 4 with the restored optimizer
    resumed = TalkerModule(embedder_ckpt=str(ckpt), ema_decay=0.5, lr=1e-3)
    trainer = _trainer(tmp_path, 4)
    trainer.fit(resumed, TalkerDataModule(**tiny_data_args(store)), ckpt_path=str(last))
    assert trainer.global_step == 4
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4


def test_bad_checkpoint_keys_are_reported(env):
    _, ckpt = env
    module = TalkerModule(embedder_ckpt=str(ckpt))
    state = module.state_dict()
    with pytest.raises(KeyError, match="not trainable"):
        module.load_state_dict({**state, "talker.unet.conv_in.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="lacks"):
        module.load_state_dict(dict(list(state.items())[1:]))


def test_load_for_inference(env, tmp_path):
    store, ckpt = env
    module = TalkerModule(embedder_ckpt=str(ckpt), ema_decay=0.5, lr=1e-2)
    trainer = _trainer(tmp_path, 2)
    trainer.fit(module, TalkerDataModule(**tiny_data_args(store)))
    last = tmp_path / "checkpoints" / "last.ckpt"

    parts, info = TalkerModule.load_for_inference(last)
    assert info["ema"] and info["size"] == "tiny" and info["global_step"] == 2
    assert tuple(info["hyper_parameters"]["time_ids"]) == (12.5, 8.0, 16.0)
    assert not parts.talker.training and parts.vae_scaling == pytest.approx(0.18215)
    own = dict(parts.talker.named_parameters())
    for name, value in module.ema.items():
        torch.testing.assert_close(own[name], value, msg=name)
    torch.testing.assert_close(own["unet.conv_in.weight"], module.talker.unet.conv_in.weight)  # frozen base

    raw, info = load_for_inference(last, use_ema=False)
    trained = dict(module.talker.named_parameters())
    name = next(iter(module.ema))
    torch.testing.assert_close(dict(raw.talker.named_parameters())[name], trained[name])
    assert not torch.allclose(trained[name], module.ema[name])  # EMA and raw weights differ
    with pytest.raises(ValueError, match="not a TalkerModule checkpoint"):
        load_for_inference(ckpt)  # the stage-1 checkpoint


def test_validation_renders_a_sample(env, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dicetalk.media import read_frames

    store, ckpt = env
    module = TalkerModule(embedder_ckpt=str(ckpt), val_sample_steps=2)
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", logger=logger, enable_progress_bar=False,
                         enable_model_summary=False)
    metrics = trainer.validate(module, TalkerDataModule(**tiny_data_args(store)))[0]
    assert {"val/loss", "val/denoise", "val/cls", "val/cls_acc"} <= set(metrics)
    videos = list(Path(logger.log_dir).glob("samples/*.mp4"))
    assert len(videos) == 1
    assert read_frames(videos[0]).shape == (4, 32, 96, 3)  # reference | generated | ground truth
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert "val/sample" in events.Tags()["images"]
    import io

    from PIL import Image

    gif = Image.open(io.BytesIO(events.Images("val/sample")[0].encoded_image_string))
    assert (gif.format, gif.n_frames, gif.size) == ("GIF", 4, (96, 32))  # an animation TensorBoard plays


def _ablation_args(name: str) -> dict:
    tiny = yaml.safe_load((CONFIGS / "tiny" / "talker.yaml").read_text())["model"]["init_args"]
    override = yaml.safe_load((CONFIGS / "ablations" / f"{name}.yaml").read_text())["model"]["init_args"]
    override.get("talker", {}).pop("num_classes", None)
    return {**tiny, **override, "talker": {**tiny["talker"], **override.get("talker", {})}}


@pytest.mark.parametrize("name", ["no_bank", "no_classifier", "learnable_ca", "mean_prior"])
def test_ablation_configs_switch_what_they_say(env, name):
    _, ckpt = env
    args = _ablation_args(name)
    module = TalkerModule(**{**args, "embedder_ckpt": str(ckpt)})
    emotion = module.talker.emotion
    cls = yaml.safe_load((CONFIGS / "tiny" / "talker.yaml").read_text())["model"]["init_args"]["lambda_cls"]
    assert cls > 0
    expected = {
        "no_bank": (False, "auto", cls, 1.0, "sample"),
        "no_classifier": (True, "auto", 0.0, 1.0, "sample"),
        "learnable_ca": (True, "all", cls, 0.0, "sample"),
        "mean_prior": (True, "auto", cls, 1.0, "mean"),
    }[name]
    got = (emotion.use_bank, emotion.kv_mode, module.loss_weights.cls, module.loss_weights.vq, module.hparams.prior)
    assert got == expected
