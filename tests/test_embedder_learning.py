"""Learning evidence for stage 1: the tiny config, trained briefly on a fake store, gives priors that cluster
by emotion on held-out identities and carry less identity than the raw visual features."""
from pathlib import Path

import pytest
from lightning.pytorch.cli import LightningCLI
from store_fixtures import make_fake_store, one_thread  # noqa: F401 (fixture)

from dicetalk.data.embedder_data import EmbedderDataModule
from dicetalk.lightning import EmbedderModule

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny" / "embedder.yaml"
TRAIN_IDS = ("M001", "M002", "M004", "M005", "W001", "W002", "W003")
HELD_OUT = ("M003", "W009", "W015")


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_tiny_embedder_learns_emotion_not_identity(tmp_path, monkeypatch):
    store = make_fake_store(tmp_path / "store", mead_ids=TRAIN_IDS + HELD_OUT,
                            splits={i: "test" for i in HELD_OUT}, seed=7)
    monkeypatch.chdir(tmp_path)  # the config's relative output paths land here
    cli = LightningCLI(EmbedderModule, EmbedderDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       args=["--config", str(TINY), "--data.store", str(store), "--trainer.logger", "false",
                             "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "null",
                             "--trainer.val_check_interval", "1000000"], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    figures = {k.removeprefix("val/"): float(v)
               for k, v in cli.trainer.validate(cli.model, cli.datamodule, verbose=False)[0].items()}
    print("\nstage-1 learning evidence (held-out identities):",
          ", ".join(f"{k}={v:.3f}" for k, v in sorted(figures.items())))

    assert figures["clustering_video_audio"] >= 3.0
    assert figures["clustering_video_audio"] > figures["clustering_audio"]
    assert figures["knn5_emotion_video_audio"] >= 0.8
    assert figures["identity_probe_prior"] < figures["identity_probe_raw_visual"]
