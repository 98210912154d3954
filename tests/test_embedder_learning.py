"""Learning evidence for stage 1 on the real chain: synthetic raw MEAD -> data_prep (sidecar landmarks, random
whisper-tiny stand-in) -> the tiny embedder config -> figures on held-out identities (issue 4)."""
from pathlib import Path

import pytest
from lightning.pytorch.cli import LightningCLI

from data_prep.__main__ import main as prep
from data_prep.synthetic import SyntheticConfig, generate
from dicetalk.audio import make_tiny_whisper
from dicetalk.data.embedder_data import EmbedderDataModule
from dicetalk.lightning import EmbedderModule

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny" / "embedder.yaml"
# The first 8 synthetic MEAD actors: M003 and W009 test, one more val (all three held out), 5 train.
N_IDENTITIES, TEST_IDS = 8, ("M003", "W009")


def prepared_store(root: Path) -> Path:
    """A small synthetic MEAD set (all 8 emotions, levels 1 and 3, 1.6 s, 32 px) through data_prep."""
    generate(root / "raw", SyntheticConfig(mead_identities=N_IDENTITIES, hdtf_speakers=0, seconds=1.6, size=32,
                                           clips_per_level=2, levels=(1, 3), workers=1))
    whisper = make_tiny_whisper(root / "whisper")
    store = root / "store"
    assert prep(["mead", "--raw", str(root / "raw" / "mead"), "--out", str(store), "--landmarks", "sidecar",
                 "--whisper", str(whisper), "--size", "32", "--device", "cpu", "--workers", "1",
                 "--no-progress"]) == 0
    assert prep(["index", str(store), "--mead-test-ids", *TEST_IDS]) == 0
    return store


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_tiny_embedder_learns_emotion_not_identity(tmp_path, monkeypatch):
    store = prepared_store(tmp_path)
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
    assert figures["knn5_emotion_audio"] > 1.5 / 8  # the audio-only path hears emotion (chance: 1/8)
