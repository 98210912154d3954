"""Emotion priors from a trained stage-1 embedder.

- ``clip_prior``: (mu, sigma) of any expression + whisper feature arrays (a whole clip: windows are
  embedded and merged as an equal-weight mixture, moment-matched);
- ``store_clip_prior`` for a clip of a store; ``media_prior`` for a video + audio file, given a feature
  extractor (the data_prep pipeline provides one: landmarks -> expression features, whisper-tiny);
- ``emotion_priors`` + ``write_priors``: per-emotion mean priors over a split ("prompt" features, paper 4.1)
  in the released DICE-Talk format (``{emotion}.npy`` = pickled ``{'mu': float32 (1, 256)}``) and as one
  safetensors file.

    python -m dicetalk.priors export --ckpt last.ckpt --store STORE --out priors/
    python -m dicetalk.priors clip --ckpt last.ckpt --store STORE --clip-id M003_angry_3_001 --out angry.npy
    python -m dicetalk.priors media --ckpt last.ckpt --video ref.mp4 [--audio ref.wav] --whisper DIR --out ref.npy
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from dicetalk.constants import EMOTIONS
from dicetalk.data.embedder_data import read_window
from dicetalk.data.store import Clip, Store
from dicetalk.media import atomic_path
from dicetalk.models.embedder import EmotionEmbedder, load_embedder

SAFETENSORS_NAME = "emotion_priors.safetensors"
# (video path, audio path or None) -> (expression (T, D) float32, whisper (2T, 5, 384))
FeatureExtractor = Callable[[Path, Path | None], tuple[np.ndarray, np.ndarray]]


@torch.no_grad()
def clip_prior(
    model: EmotionEmbedder, expression: np.ndarray, whisper: np.ndarray, window: int, modality: str = "both"
) -> tuple[np.ndarray, np.ndarray]:
    """Prior (mu, sigma), each (prior_dim,) float32, of a whole clip.

    The clip is cut into ``window``-frame windows (the last one aligned to the clip end; a clip shorter
    than the window is one window); the window Gaussians are merged as an equal mixture:
    mu = mean(mu_w), sigma^2 = mean(sigma_w^2 + mu_w^2) - mu^2.
    """
    expression = np.asarray(expression, np.float32)
    t = expression.shape[0]
    if t == 0:
        raise ValueError("clip_prior: empty expression array")
    whisper_full = np.zeros((2 * t, *np.shape(whisper)[1:]), np.float32)
    part = np.asarray(whisper[: 2 * t], np.float32)  # audio may be a little shorter than the video
    whisper_full[: len(part)] = part
    n = min(window, t)
    starts = sorted(set(range(0, t - n + 1, n)) | {t - n})
    device = next(model.parameters()).device
    e = torch.from_numpy(np.stack([expression[s : s + n] for s in starts])).to(device)
    w = torch.from_numpy(np.stack([whisper_full[2 * s : 2 * (s + n)] for s in starts])).to(device)
    was_training = model.training
    model.eval()
    out = model(e, w, modality)
    model.train(was_training)
    mu_w, var_w = out.mu.double(), out.sigma.double() ** 2
    mu = mu_w.mean(0)
    var = (var_w + mu_w**2).mean(0) - mu**2
    return mu.float().cpu().numpy(), var.clamp_min(0).sqrt().float().cpu().numpy()


def store_clip_prior(
    model: EmotionEmbedder, store: Store, clip: Clip | str, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """Prior (mu, sigma) of one clip of a store."""
    clip = store.clip(clip) if isinstance(clip, str) else clip
    expression, whisper = read_window(store, clip, 0, clip.n_frames)
    return clip_prior(model, expression, whisper, window)


def media_prior(
    model: EmotionEmbedder, video: str | Path, audio: str | Path | None, extract: FeatureExtractor, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """Prior (mu, sigma) of a video (+ separate audio, or None to use the video's track).

    ``extract`` turns the files into the store's per-clip features; pass the data_prep feature pipeline
    (the same face crop, landmarks and whisper-tiny as the store) so the prior matches training inputs.
    """
    expression, whisper = extract(Path(video), None if audio is None else Path(audio))
    return clip_prior(model, expression, whisper, window)


def emotion_priors(
    model: EmotionEmbedder, store: Store, window: int, splits: Sequence[str] = ("train",)
) -> dict[str, np.ndarray]:
    """Mean clip prior mu per emotion over the labelled clips of ``splits``: {emotion: (prior_dim,)}."""
    sums: dict[str, list[np.ndarray]] = defaultdict(list)
    for clip in store.select(None, splits):
        if clip.emotion is not None:
            sums[clip.emotion].append(store_clip_prior(model, store, clip, window)[0])
    if not sums:
        raise ValueError(f"{store.root}: no labelled clips in splits {list(splits)}")
    return {e: np.mean(sums[e], axis=0).astype(np.float32) for e in EMOTIONS if e in sums}


def write_priors(
    priors: dict[str, np.ndarray], out_dir: str | Path, metadata: dict[str, str] | None = None
) -> list[Path]:
    """Write ``{emotion}.npy`` (released format) and one safetensors file; returns the written paths."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    tensors = {}
    for emotion, mu in priors.items():
        mu = np.asarray(mu, np.float32).reshape(1, -1)
        tensors[emotion] = mu
        path = out / f"{emotion}.npy"
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, {"mu": mu}, allow_pickle=True)
        paths.append(path)
    path = out / SAFETENSORS_NAME
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return [*paths, path]


def read_prior(path: str | Path) -> np.ndarray:
    """mu (1, D) float32 from a released-format ``.npy`` prior (a pickled {'mu': ...} dict)."""
    try:
        value = np.load(path, allow_pickle=True)
        mu = value.item()["mu"] if value.dtype == object else value
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise ValueError(f"{path}: not a prior file ({type(e).__name__}: {e})") from None
    return np.asarray(mu, np.float32).reshape(1, -1)


def checkpoint_window(path: str | Path) -> int:
    """Training window length stored in an EmbedderModule checkpoint."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "embedder_window" not in ckpt:
        raise ValueError(f"{path}: no 'embedder_window' (pass --window)")
    return int(ckpt["embedder_window"])


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: ``export`` per-emotion priors; ``clip`` / ``media``: the prior of one store clip / any video."""
    parser = argparse.ArgumentParser(prog="python -m dicetalk.priors", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("export", "clip", "media"):
        p = sub.add_parser(name)
        p.add_argument("--ckpt", required=True, help="EmbedderModule checkpoint (e.g. .../last.ckpt)")
        p.add_argument("--out", required=True, help="export: output folder; clip / media: output .npy")
        p.add_argument("--window", type=int, default=None, help="frames per window (default: the training window)")
        if name == "media":
            p.add_argument("--video", required=True, help="any video with a face")
            p.add_argument("--audio", default=None, help="separate audio file (default: the video's track)")
            p.add_argument("--whisper", default="openai/whisper-tiny", help="whisper-tiny folder or hub id")
            p.add_argument("--landmarks", default="face_alignment", choices=["face_alignment", "sidecar"])
            continue
        p.add_argument("--store", required=True)
        if name == "export":
            p.add_argument("--splits", nargs="+", default=["train"])
        else:
            p.add_argument("--clip-id", required=True)
    args = parser.parse_args(argv)
    model = load_embedder(args.ckpt)
    window = args.window or checkpoint_window(args.ckpt)
    if args.command == "media":
        from data_prep.pipeline import feature_extractor  # data_prep's clip preparation = the store's features

        extract = feature_extractor(args.whisper, args.landmarks)
        audio = None if args.audio is None else Path(args.audio)
        _save_prior(args.out, *media_prior(model, Path(args.video), audio, extract, window))
        return
    store = Store(args.store)
    if args.command == "export":
        priors = emotion_priors(model, store, window, args.splits)
        meta = {"checkpoint": str(args.ckpt), "store": str(args.store), "splits": json.dumps(args.splits),
                "window": str(window)}
        for path in write_priors(priors, args.out, meta):
            print(path)
    else:
        _save_prior(args.out, *store_clip_prior(model, store, args.clip_id, window))


def _save_prior(path: str | Path, mu: np.ndarray, sigma: np.ndarray) -> None:
    """One prior in the released format ({'mu': (1, D)}), plus its sigma."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.save(f, {"mu": mu[None], "sigma": sigma[None]}, allow_pickle=True)
    print(out)


if __name__ == "__main__":
    main()
