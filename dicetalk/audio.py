"""Whisper-tiny encoder features: 5 hidden states x 384 at 50 Hz, two per 25 fps video frame.

The encoder only accepts exactly one window of audio (30 s for whisper-tiny; ``max_source_positions`` / 50
seconds in general), so longer audio is cut into consecutive windows, each padded by the feature extractor,
and the hidden states of the windows are concatenated, as the released DICE-Talk inference does.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dicetalk.constants import SAMPLE_RATE, SAMPLES_PER_FRAME, WHISPER_DIM, WHISPER_LAYERS

DEFAULT_WHISPER = "openai/whisper-tiny"
_NEEDED_FILES = ("config.json", "preprocessor_config.json", "model.safetensors or pytorch_model.bin")


class WhisperError(RuntimeError):
    """The whisper weights cannot be found or do not have the expected shape."""


def resolve_whisper(name_or_path: str | os.PathLike = DEFAULT_WHISPER) -> Path:
    """A local folder holding a whisper checkpoint: ``name_or_path`` itself, or its snapshot in the HF cache.

    Never downloads when ``HF_HUB_OFFLINE=1``; otherwise the hub client may fetch the files (small, 150 MB).
    """
    path = Path(name_or_path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise WhisperError(f"{path}: not a whisper checkpoint folder (needs {', '.join(_NEEDED_FILES)})")
        return path
    if path.exists() or str(name_or_path).count("/") != 1:
        raise WhisperError(f"{name_or_path}: no such whisper folder or hub id")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), allow_patterns=["*.json", "*.safetensors", "*.txt"]))
    except Exception as exc:  # offline, not cached, no network: all mean the same to the user
        raise WhisperError(
            f"whisper weights {name_or_path!r} are not available ({type(exc).__name__}). Put {', '.join(_NEEDED_FILES)} "
            f"in a folder and pass --whisper FOLDER, or run `huggingface-cli download {name_or_path}` on a "
            f"networked machine (cache: $HF_HOME/hub)"
        ) from exc


class WhisperFeatures:
    """Hidden states of a whisper encoder for 16 kHz mono audio; load once, call per clip."""

    def __init__(self, name_or_path: str | os.PathLike = DEFAULT_WHISPER, device: str = "cpu", batch_size: int = 8):
        import torch
        from transformers import WhisperFeatureExtractor, WhisperModel

        folder = resolve_whisper(name_or_path)
        try:
            self.extractor = WhisperFeatureExtractor.from_pretrained(folder)
            self.encoder = WhisperModel.from_pretrained(folder).get_encoder().to(device).eval()
        except OSError as exc:
            raise WhisperError(f"{folder}: incomplete whisper checkpoint, needs {', '.join(_NEEDED_FILES)} ({exc})") from exc
        config = self.encoder.config
        if config.d_model != WHISPER_DIM or config.encoder_layers + 1 != WHISPER_LAYERS:
            raise WhisperError(
                f"{folder}: expected a whisper-tiny shaped encoder (d_model {WHISPER_DIM}, {WHISPER_LAYERS - 1} "
                f"layers), got d_model {config.d_model}, {config.encoder_layers} layers"
            )
        if self.extractor.nb_max_frames != 2 * config.max_source_positions:
            raise WhisperError(
                f"{folder}: feature extractor window ({self.extractor.nb_max_frames} mel frames) does not match "
                f"the encoder ({2 * config.max_source_positions})"
            )
        self.window = self.extractor.n_samples  # samples per encoder window
        self.positions = config.max_source_positions  # 50 Hz outputs per window
        self.device, self.batch_size = device, batch_size
        self._torch = torch

    def __call__(self, audio: np.ndarray, n_frames: int) -> np.ndarray:
        """(2 * n_frames, 5, 384) float16 features of ``audio`` (16 kHz mono), zero audio past its end."""
        torch = self._torch
        n_out = 2 * n_frames
        n_windows = max(1, -(-n_frames * SAMPLES_PER_FRAME // self.window))
        padded = np.zeros(n_windows * self.window, dtype=np.float32)
        audio = np.asarray(audio, dtype=np.float32)[: len(padded)]
        padded[: len(audio)] = audio
        windows = list(padded.reshape(n_windows, self.window))
        chunks = []
        for start in range(0, n_windows, self.batch_size):
            mel = self.extractor(windows[start:start + self.batch_size], sampling_rate=SAMPLE_RATE,
                                 return_tensors="pt").input_features
            with torch.inference_mode():
                out = self.encoder(mel.to(self.device, dtype=self.encoder.dtype), output_hidden_states=True)
            # (B, positions, 5, 384) -> (B * positions, 5, 384): windows follow each other in time.
            states = torch.stack(out.hidden_states, dim=2).flatten(0, 1)
            chunks.append(states.float().cpu().numpy())
        return np.concatenate(chunks)[:n_out].astype(np.float16)


def make_tiny_whisper(folder: str | os.PathLike, window_seconds: int = 1, seed: int = 0) -> Path:
    """Save a random whisper model of the whisper-tiny encoder shape (384 wide, 4 layers, 6 heads) to ``folder``.

    Small feed-forward layers, a one-token decoder and a ``window_seconds`` encoder window keep it fast;
    the feature extractor saved beside it uses the same window. For tests and the CPU demo only.
    """
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    folder = Path(folder)
    positions = window_seconds * 50
    config = WhisperConfig(
        vocab_size=8, num_mel_bins=80, d_model=WHISPER_DIM, encoder_layers=WHISPER_LAYERS - 1, decoder_layers=1,
        encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=positions, max_target_positions=4,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
    )
    torch.manual_seed(seed)
    model = WhisperModel(config)
    # With the default init (std 0.02) the conv front end outputs ~0.1 against the sinusoidal position table's
    # ~0.7: 99.8% of the hidden states' variance is the position inside the encoder window, and an embedder
    # trained on them hears almost nothing (audio-only 5-NN at chance). He-initialised convs keep the log-mel
    # contrasts at unit scale (the sound is then ~20% of the variance, measured on the demo store), so this
    # stand-in, like a trained whisper, carries the acoustics.
    with torch.no_grad():
        for conv in (model.encoder.conv1, model.encoder.conv2):
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            conv.bias.zero_()
    model.save_pretrained(folder)
    # chunk_length is in seconds; n_samples and nb_max_frames follow from it.
    WhisperFeatureExtractor(chunk_length=window_seconds).save_pretrained(folder)
    return folder
