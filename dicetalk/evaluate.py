"""Evaluation protocol and result tables (paper Tables 1 and 2).

MEAD test clips: the reference frame is the first frame of a neutral clip of the same identity, the audio
(whisper features) is the target clip's, and the emotion prior comes from (V) another clip of the same
identity and emotion, through the stage-1 embedder, or (P) the exported per-emotion mean prior
(``{priors}/{emotion}.npy``). HDTF test clips: their own first frame, and their own video as the emotion
reference (V; without an embedder the preset neutral prior, recorded as such).

Two stages, so generation can be spread over GPUs or a SLURM array and resumed:

    dicetalk eval --config configs/eval.yaml --stage generate --shard I --num-shards N   # any number of times
    dicetalk eval --config configs/eval.yaml --stage metrics                            # once, at the end

Every job (one video) is written atomically to ``{out}/videos/{mode}/{clip_id}.mp4``; a job whose file
exists is skipped, so a killed run continues where it stopped. ``{out}/generation.json`` pins the settings
that change the videos; a later run with different settings is refused instead of mixing results.
The metrics stage writes ``results.json``, ``results.csv``, ``results.md`` and ``results.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from dicetalk import media
from dicetalk.constants import EMOTIONS, SAMPLES_PER_FRAME
from dicetalk.pipeline import DiceTalkPipeline, GenerationInput, SamplingConfig

MODES = ("V", "P")
NEUTRAL = "neutral"
TABLE1_COLUMNS = ("fvd", "fid", "sync_c", "sync_d", "emo_score", "neutral", "non_neutral")
TABLE2_COLUMNS = ("fvd", "fid", "sync_c", "sync_d")
HEADERS = {"fvd": "FVD↓", "fid": "FID↓", "sync_c": "Sync-C↑", "sync_d": "Sync-D↓", "emo_score": "Emo-Score↑",
           "neutral": "Neutral↑", "non_neutral": "Non-neutral↑"}
# The paper's own rows (Tables 1 and 2), shown beside ours for reference.
PAPER_ROWS = {
    "mead": [("paper: Ours-V", "audio + video", (382.1692, 54.0682, 6.2182, 8.7805, 0.4615, 0.4659, 0.4601)),
             ("paper: Ours-P", "audio + prompt", (377.0500, 52.9348, 6.1158, 8.9969, 0.4865, 0.5373, 0.4696))],
    "hdtf": [],  # Table 2 lists no DICE-Talk row
}


class EvalError(RuntimeError):
    """The evaluation cannot run as configured; the message says why."""


@dataclass
class EvalConfig:
    """Everything an evaluation run needs (YAML keys of configs/eval.yaml)."""

    store: str = ""
    talker: str = ""  # talker checkpoint (see dicetalk.pipeline.load_talker_parts)
    out: str = "outputs/eval"
    svd: str | None = None  # stable-video-diffusion-img2vid-xt folder (overrides the checkpoint's base)
    priors: str | None = None  # folder of {emotion}.npy mean priors (Ours-P)
    embedder: str | None = None  # stage-1 checkpoint (Ours-V and HDTF)
    embedder_window: int | None = None
    modes: list[str] = field(default_factory=lambda: list(MODES))
    datasets: list[str] = field(default_factory=lambda: ["mead", "hdtf"])
    split: str = "test"
    emotions: list[str] = field(default_factory=lambda: list(EMOTIONS))
    identities: list[str] | None = None  # MEAD identities of the split to evaluate (None: all)
    levels: list[int] | None = None  # MEAD levels to evaluate (None: all)
    clips_per_group: int | None = None  # at most this many clips per (identity, emotion, level)
    hdtf_clips: int | None = None  # at most this many HDTF clips
    max_frames: int | None = None  # cut every clip to this many 25 fps frames
    size: int | None = None  # generation size in pixels (None: the store's frame size)
    seed: int = 0
    device: str = "auto"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    metric_frame_stride: int = 1  # FID / Emo-Score on every k-th frame (1 = all, the protocol)
    random_backbones: bool = False  # real metric architectures with random weights (demo/tests only)
    backbone_weights: dict[str, str] = field(default_factory=dict)  # fid / fvd / sync / emo -> file
    figure_frames: int = 4

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> "EvalConfig":
        """Build from a (YAML) dict; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise EvalError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
        values = dict(values)
        sampling = values.pop("sampling", None) or {}
        if isinstance(sampling, SamplingConfig):
            sampling = asdict(sampling)
        s_known = {f.name for f in dataclasses.fields(SamplingConfig)}
        if set(sampling) - s_known:
            raise EvalError(f"{where}: unknown sampling keys {sorted(set(sampling) - s_known)}")
        cfg = cls(**values, sampling=SamplingConfig(**sampling))
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "config") -> None:
        """Raise EvalError for values that cannot work."""
        bad_modes = set(self.modes) - set(MODES)
        bad_emotions = set(self.emotions) - set(EMOTIONS)
        bad_sets = set(self.datasets) - {"mead", "hdtf"}
        for name, bad in (("modes", bad_modes), ("emotions", bad_emotions), ("datasets", bad_sets)):
            if bad:
                raise EvalError(f"{where}: unknown {name} {sorted(bad)}")
        if self.metric_frame_stride < 1:
            raise EvalError(f"{where}: metric_frame_stride must be >= 1")

    def generation_key(self) -> dict[str, Any]:
        """The settings that change the generated videos (pinned in generation.json)."""
        keys = ("talker", "svd", "priors", "embedder", "embedder_window", "max_frames", "size", "seed")
        return {**{k: getattr(self, k) for k in keys}, "sampling": asdict(self.sampling)}


def load_config(path: str | os.PathLike | None, overrides: dict[str, Any] | None = None) -> EvalConfig:
    """EvalConfig from a YAML file (or defaults) with ``overrides`` (None values ignored) applied."""
    from dicetalk.preflight import read_yaml

    values: dict[str, Any] = read_yaml(path, EvalError) if path is not None else {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key.startswith("sampling."):
            values.setdefault("sampling", {})[key.removeprefix("sampling.")] = value
        else:
            values[key] = value
    return EvalConfig.from_dict(values, str(path or "config"))


# ------------------------------------------------------------------------------------------------ protocol


@dataclass(frozen=True)
class Job:
    """One generated video: which clip it reproduces and where its reference and emotion come from."""

    table: str  # "mead" | "hdtf"
    mode: str  # "V" | "P" (MEAD) | "hdtf"
    clip_id: str  # target clip: audio, real frames, target emotion
    identity: str
    emotion: str | None
    level: int | None
    reference_clip: str  # first frame = the reference image
    emotion_clip: str | None  # V / hdtf: the clip the prior is computed from; P: None (preset prior)
    n_frames: int

    @property
    def name(self) -> str:
        return f"{self.mode}/{self.clip_id}"

    def video_path(self, out: Path) -> Path:
        return out / "videos" / self.mode / f"{self.clip_id}.mp4"


def build_jobs(store, cfg: EvalConfig, has_embedder: bool) -> list[Job]:
    """Every video of the protocol, sorted by name (independent of sharding)."""
    jobs: list[Job] = []

    def frames(clip) -> int:
        return min(clip.n_frames, cfg.max_frames) if cfg.max_frames else clip.n_frames

    if "mead" in cfg.datasets:
        clips = [c for c in store.select(["mead"], [cfg.split]) if c.emotion in cfg.emotions
                 and (cfg.levels is None or c.level in cfg.levels)
                 and (cfg.identities is None or c.identity in cfg.identities)]
        groups: dict[tuple, list] = {}
        for clip in sorted(clips, key=lambda c: c.clip_id):
            groups.setdefault((clip.identity, clip.emotion, clip.level), []).append(clip)
        neutral = {}
        for clip in sorted(store.select(["mead"], [cfg.split]), key=lambda c: c.clip_id):
            if clip.emotion == NEUTRAL:
                neutral.setdefault(clip.identity, clip.clip_id)
        by_emotion: dict[tuple, list] = {}
        for clip in sorted(store.select(["mead"], [cfg.split]), key=lambda c: (c.level != 3, c.clip_id)):
            by_emotion.setdefault((clip.identity, clip.emotion), []).append(clip)
        for (identity, emotion, level), members in sorted(groups.items(), key=lambda kv: str(kv[0])):
            for clip in members[: cfg.clips_per_group or None]:
                reference = neutral.get(identity, clip.clip_id)
                for mode in cfg.modes:
                    if mode == "V":
                        if not has_embedder:
                            continue
                        # another clip of the same identity and emotion: same level first, then level 3, ...
                        others = [c for c in by_emotion[(identity, emotion)] if c.clip_id != clip.clip_id]
                        others.sort(key=lambda c: (c.level != level, c.level != 3, c.clip_id))
                        if not others:
                            continue
                        source = others[0].clip_id
                    else:
                        source = None
                    jobs.append(Job("mead", mode, clip.clip_id, identity, emotion, level, reference, source,
                                    frames(clip)))
    if "hdtf" in cfg.datasets:
        clips = sorted(store.select(["hdtf"], [cfg.split]), key=lambda c: c.clip_id)[: cfg.hdtf_clips or None]
        for clip in clips:
            jobs.append(Job("hdtf", "hdtf", clip.clip_id, clip.identity, None, None, clip.clip_id,
                            clip.clip_id if has_embedder else None, frames(clip)))
    return sorted(jobs, key=lambda j: j.name)


def shard_jobs(jobs: Sequence[Job], shard: int, num_shards: int) -> list[Job]:
    """The jobs of one shard: every ``num_shards``-th job from ``shard`` (balanced across emotions)."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise EvalError(f"shard {shard} of {num_shards}: need 0 <= shard < num_shards")
    return list(jobs[shard::num_shards])


class PriorSource(Protocol):
    """Where emotion priors come from (the stage-1 embedder and the exported means by default)."""

    def clip(self, clip_id: str) -> np.ndarray: ...  # (D,) prior of a store clip (V)

    def label(self, emotion: str) -> np.ndarray: ...  # (D,) preset prior (P)


class StorePriors:
    """Priors from a stage-1 embedder checkpoint (clip priors) and a folder of ``{emotion}.npy`` means."""

    def __init__(self, store, embedder: str | None, priors_dir: str | None, window: int | None = None):
        self.store, self.priors_dir = store, priors_dir
        self.model = self.window = None
        if embedder:
            from dicetalk.models.embedder import load_embedder
            from dicetalk.priors import checkpoint_window

            self.model = load_embedder(embedder)
            self.window = window or checkpoint_window(embedder)

    @property
    def has_embedder(self) -> bool:
        return self.model is not None

    def clip(self, clip_id: str) -> np.ndarray:
        from dicetalk.priors import store_clip_prior

        if self.model is None:
            raise EvalError("clip priors need the stage-1 embedder (embedder: CKPT)")
        return store_clip_prior(self.model, self.store, clip_id, self.window)[0]

    def label(self, emotion: str) -> np.ndarray:
        from dicetalk.pipeline import resolve_emotion

        if self.priors_dir is None:
            raise EvalError("preset priors need a priors folder (priors: DIR with {emotion}.npy)")
        return resolve_emotion(emotion, self.priors_dir)


def job_prior(job: Job, priors: PriorSource) -> tuple[np.ndarray, str]:
    """The job's emotion prior and a description of where it came from."""
    if job.emotion_clip is not None:
        return priors.clip(job.emotion_clip), f"video:{job.emotion_clip}"
    label = job.emotion if job.mode == "P" else NEUTRAL
    return priors.label(label), f"prior:{label}"


# ---------------------------------------------------------------------------------------------- generation


def _resize(frame: np.ndarray, size: int | None) -> np.ndarray:
    from dicetalk.face import resize_frames

    return frame if size is None else resize_frames(frame[None], size, size)[0]


def generate_job(job: Job, store, pipeline: DiceTalkPipeline, priors: PriorSource, cfg: EvalConfig,
                 out: Path) -> None:
    """Generate one video (with the clip's audio muxed in) and write it atomically."""
    reference = media.read_frames(store.path(job.reference_clip, "frames"), [0])[0]
    face_box = np.asarray(store.array(job.reference_clip, "face_box")[0], np.float32)
    whisper = np.asarray(store.array(job.clip_id, "whisper")[: 2 * job.n_frames], np.float32)
    prior, _ = job_prior(job, priors)
    audio = media.read_audio(store.path(job.clip_id, "audio"))[: job.n_frames * SAMPLES_PER_FRAME]
    frames = pipeline(GenerationInput(_resize(reference, cfg.size), face_box, whisper, prior, job.n_frames),
                      seed=cfg.seed)
    media.write_video(job.video_path(out), frames, 25, audio=audio)


def pin_generation(out: Path, cfg: EvalConfig) -> None:
    """Write generation.json on the first run; refuse a later run whose settings differ."""
    path = out / "generation.json"
    key = json.loads(json.dumps(cfg.generation_key()))
    if path.is_file():
        pinned = json.loads(path.read_text())
        if pinned != key:
            diff = sorted(k for k in set(pinned) | set(key) if pinned.get(k) != key.get(k))
            raise EvalError(f"{path}: videos in {out} were generated with other settings ({', '.join(diff)}); "
                            f"use another out folder or delete it")
        return
    out.mkdir(parents=True, exist_ok=True)
    with media.atomic_path(path) as tmp:
        tmp.write_text(json.dumps(key, indent=2))


def run_generation(jobs: Sequence[Job], store, pipeline: DiceTalkPipeline, priors: PriorSource, cfg: EvalConfig,
                   out: Path, log=print) -> int:
    """Generate the jobs whose video does not exist yet; returns how many were generated."""
    todo = [j for j in jobs if not j.video_path(out).is_file()]
    log(f"generate: {len(jobs) - len(todo)} of {len(jobs)} videos already done, {len(todo)} to go")
    for i, job in enumerate(todo, 1):
        start = time.perf_counter()
        generate_job(job, store, pipeline, priors, cfg, out)
        log(f"[{i}/{len(todo)}] {job.name} ({job.n_frames} frames, {time.perf_counter() - start:.1f} s)")
    return len(todo)


# ------------------------------------------------------------------------------------------------- metrics


class _RandomI3D(torch.nn.Module):
    """Stand-in for the I3D TorchScript (which has no Python architecture here): a small random 3D conv
    net giving 400-d clip features. Only for ``random_backbones`` demos; its FVD means nothing."""

    num_features = 400

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv3d(3, 16, (3, 7, 7), stride=(1, 4, 4), padding=(1, 3, 3)), torch.nn.ReLU(),
            torch.nn.Conv3d(16, 64, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(64, 400))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:  # uint8 (N, T, 3, H, W)
        return self.net(clips.float().div(127.5).sub(1).transpose(1, 2))


def random_backbones(seed: int = 0) -> dict[str, Any]:
    """The metric architectures (FID-Inception, SyncNet, EMO-AffectNet; a small stand-in for I3D) with
    random weights, as ``build_metrics`` overrides. Numbers computed with them are meaningless."""
    from dicetalk.metrics.backbones import EmoAffectNetResNet50, FIDInceptionV3, SyncNet
    from dicetalk.metrics.fid import InceptionPool3

    torch.manual_seed(seed)
    return {"fid": InceptionPool3(FIDInceptionV3()), "fvd": _RandomI3D(), "sync": SyncNet(),
            "emo": EmoAffectNetResNet50(), "random": True}


@dataclass
class Metrics:
    """The four metrics of one table."""

    fid: Any
    fvd: Any
    sync: Any
    emo: Any

    def weights(self) -> dict[str, Any]:
        return {name: getattr(self, name).weights_info for name in ("fid", "fvd", "sync", "emo")}


def build_metrics(cfg: EvalConfig, backbones: dict[str, Any] | None, device: torch.device) -> Metrics:
    """Metrics with the registry weights (``cfg.backbone_weights`` paths), or the given modules.

    ``backbones``: {"fid", "fvd", "sync", "emo": module, optional "sync_size" / "emo_size": input size,
    "random": True to label them random-weight architectures}.
    """
    from dicetalk.metrics import FID, FVD, EmoScore, SyncScore

    paths = cfg.backbone_weights
    b = dict(backbones or {})
    metrics = Metrics(
        fid=FID(feature_extractor=b.get("fid"), weights_path=paths.get("fid")),
        fvd=FVD(feature_extractor=b.get("fvd"), weights_path=paths.get("fvd")),
        sync=SyncScore(backbone=b.get("sync"), weights_path=paths.get("sync"), **_size(b, "sync_size")),
        emo=EmoScore(backbone=b.get("emo"), weights_path=paths.get("emo"), **_size(b, "emo_size")),
    )
    if b.get("random"):
        for name in ("fid", "fvd", "sync", "emo"):
            frozen = getattr(metrics, name).extractor if name in ("fid", "fvd") else getattr(metrics, name).backbone
            arch = type(frozen.net).__name__
            frozen.info = {"name": f"RANDOM WEIGHTS:{arch}", "path": None, "sha256": None, "status": "random"}
    for name in ("fid", "fvd", "sync", "emo"):
        getattr(metrics, name).to(device)
    return metrics


def _size(backbones: dict[str, Any], key: str) -> dict[str, int]:
    return {"image_size": int(backbones[key])} if key in backbones else {}


def _video_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (T, 3, H, W) uint8


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def score_table(table: str, mode: str, jobs: Sequence[Job], store, metrics: Metrics, cfg: EvalConfig, out: Path,
                priors_desc: dict[str, str], log=print) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics of one table row (e.g. MEAD Ours-P) and its per-video rows."""
    stride = cfg.metric_frame_stride
    rows = []
    for job in jobs:
        fake = media.read_frames(job.video_path(out))[: job.n_frames]
        real = media.read_frames(store.path(job.clip_id, "frames"))[: job.n_frames]
        audio = media.read_audio(store.path(job.clip_id, "audio"))[: job.n_frames * SAMPLES_PER_FRAME]
        fake_t, real_t = _video_tensor(fake), _video_tensor(real)
        metrics.fid.update(real_t[::stride], real=True)
        metrics.fid.update(fake_t[::stride], real=False)
        metrics.fvd.update([real_t], real=True)
        metrics.fvd.update([fake_t], real=False)
        offset, sync_d, sync_c = metrics.sync.score_video(fake_t, torch.from_numpy(audio))
        row = {"table": table, "mode": mode, "clip_id": job.clip_id, "identity": job.identity,
               "emotion": job.emotion, "level": job.level, "n_frames": len(fake),
               "reference": job.reference_clip, "emotion_source": priors_desc.get(job.name, ""),
               "sync_c": sync_c, "sync_d": sync_d, "sync_offset": offset, "emo_acc": None}
        if table == "mead":
            from dicetalk.metrics.emo import MEAD_TO_CLASS

            if MEAD_TO_CLASS[job.emotion] is not None:
                predictions = metrics.emo.predict(fake_t[::stride])
                row["emo_acc"] = float((predictions == MEAD_TO_CLASS[job.emotion]).float().mean())
            else:
                predictions = torch.zeros(len(fake_t[::stride]), dtype=torch.long)
            metrics.emo.update_predictions([predictions], [job.emotion])
        rows.append(row)
        log(f"scored {job.name}")
    summary: dict[str, Any] = {"table": table, "mode": mode, "n_videos": len(rows),
                               "n_frames": int(sum(r["n_frames"] for r in rows))}
    for name, metric in (("fid", metrics.fid), ("fvd", metrics.fvd)):
        try:
            summary[name] = _finite(metric.compute())
            summary[f"{name}_n"] = dict(metric.counts)
        except RuntimeError as err:  # fewer than 2 samples on a side
            summary[name], summary[f"{name}_n"] = None, str(err)
    summary["sync_c"] = _finite(np.mean([r["sync_c"] for r in rows]))
    summary["sync_d"] = _finite(np.mean([r["sync_d"] for r in rows]))
    if table == "mead":
        emo = metrics.emo.compute()
        for key in ("emo_score", "neutral", "non_neutral"):
            summary[key] = _finite(emo[key])
        summary["per_emotion"] = {e: _finite(emo[e]) for e in EMOTIONS if e in emo}
        summary["emo_frames"] = int(emo["frames"])
    for metric in (metrics.fid, metrics.fvd, metrics.sync, metrics.emo):
        metric.reset()
    return summary, rows


# ------------------------------------------------------------------------------------------------- reports


def method_name(table: str, mode: str) -> tuple[str, str]:
    """(Method, Condition) as the paper labels them."""
    if table == "hdtf":
        return "Ours", "audio + video"
    return (f"Ours-{mode}", "audio + video" if mode == "V" else "audio + prompt")


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    # A tiny non-zero value (e.g. FID of near-constant random-backbone features) must not read as a perfect 0.
    return f"{value:.2e}" if 0 < abs(value) < 5e-5 else f"{value:.4f}"


def render_markdown(results: dict[str, Any]) -> str:
    """results.md: Tables 1 and 2, what they were computed from, and the per-video rows."""
    lines = ["# DICE-Talk evaluation", ""]
    if results["random_backbones"]:
        lines += ["**WARNING: metric backbones have RANDOM WEIGHTS (demo / test run). The numbers below only "
                  "show that the pipeline runs; they are not comparable with the paper.**", ""]
    for table, title, columns in (("mead", "Table 1: MEAD test set", TABLE1_COLUMNS),
                                  ("hdtf", "Table 2: HDTF test set", TABLE2_COLUMNS)):
        summaries = [s for s in results["tables"] if s["table"] == table]
        if not summaries:
            continue
        lines += [f"## {title}", "", "| Method | Condition | " + " | ".join(HEADERS[c] for c in columns)
                  + " | videos | frames |", "|" + "---|" * (len(columns) + 4)]
        for s in summaries:
            method, condition = method_name(table, s["mode"])
            lines.append(f"| {method} | {condition} | " + " | ".join(_fmt(s.get(c)) for c in columns)
                         + f" | {s['n_videos']} | {s['n_frames']} |")
        for method, condition, values in PAPER_ROWS[table]:
            lines.append(f"| {method} | {condition} | " + " | ".join(f"{v:.4f}" for v in values) + " | | |")
        lines.append("")
        for s in summaries:
            lines.append(f"- {method_name(table, s['mode'])[0]}: FID on {s.get('fid_n')} frames, FVD on "
                         f"{s.get('fvd_n')} 16-frame clips" + (f", Emo-Score on {s['emo_frames']} frames"
                                                              if 'emo_frames' in s else ""))
        lines.append("")
    lines += ["## Metric backbones", "", "| metric | weights | sha256 | status |", "|---|---|---|---|"]
    for name, info in results["backbones"].items():
        lines.append(f"| {name} | {info.get('name')} ({info.get('path')}) | {info.get('sha256') or '-'} | "
                     f"{info.get('status')} |")
    lines += ["", "## Config", "", "```json", json.dumps(results["config"], indent=2), "```", "",
              "## Per-video results", "",
              "| table | mode | clip | emotion | frames | Sync-C | Sync-D | offset | emo acc | emotion source |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["videos"]:
        lines.append(f"| {r['table']} | {r['mode']} | {r['clip_id']} | {r['emotion'] or '-'} | {r['n_frames']} | "
                     f"{_fmt(r['sync_c'])} | {_fmt(r['sync_d'])} | {r['sync_offset']} | {_fmt(r['emo_acc'])} | "
                     f"{r['emotion_source']} |")
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("kind", "table", "method", "condition", "clip_id", "identity", "emotion", "level", "n_videos",
              "n_frames", *TABLE1_COLUMNS, "sync_offset", "emo_acc", "emotion_source")


def render_csv(results: dict[str, Any]) -> str:
    """results.csv: ``# key: value`` header lines (backbones, config), then table rows and per-video rows."""
    buf = io.StringIO()
    if results["random_backbones"]:
        buf.write("# WARNING: metric backbones have RANDOM WEIGHTS; the numbers are meaningless\n")
    for name, info in results["backbones"].items():
        buf.write(f"# backbone {name}: {info.get('name')} sha256={info.get('sha256')} status={info.get('status')}\n")
    buf.write(f"# config: {json.dumps(results['config'], sort_keys=True)}\n")
    writer = csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for s in results["tables"]:
        method, condition = method_name(s["table"], s["mode"])
        writer.writerow({**s, "kind": "table", "method": method, "condition": condition})
    for r in results["videos"]:
        method, condition = method_name(r["table"], r["mode"])
        writer.writerow({**r, "kind": "video", "method": method, "condition": condition, "n_videos": 1})
    return buf.getvalue()


def render_figure(results: dict[str, Any], jobs: Sequence[Job], store, out: Path, n_frames: int) -> Path:
    """results.png: per-emotion scores of each MEAD row, and a grid of frames (one row per emotion)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mead = [s for s in results["tables"] if s["table"] == "mead"]
    samples: dict[str, Job] = {}
    for job in jobs:  # prefer P (the preset prior shows the emotion most directly), then V
        if job.table == "mead" and (job.emotion not in samples or (job.mode == "P" and samples[job.emotion].mode != "P")):
            samples[job.emotion] = job
    emotions = [e for e in EMOTIONS if e in samples]
    rows = max(1, len(emotions))
    fig = plt.figure(figsize=(3 + 1.6 * (n_frames + 1), 2.2 + 1.4 * rows), constrained_layout=True)
    grid = fig.add_gridspec(rows + 1, n_frames + 1, height_ratios=[2.5] + [1] * rows)
    ax = fig.add_subplot(grid[0, :])
    width = 0.8 / max(1, len(mead))
    for k, s in enumerate(mead):
        values = [s.get("per_emotion", {}).get(e) for e in EMOTIONS]
        ax.bar(np.arange(len(EMOTIONS)) + k * width, [np.nan if v is None else v for v in values], width,
               label=method_name("mead", s["mode"])[0])
    ax.set_xticks(np.arange(len(EMOTIONS)) + width * (len(mead) - 1) / 2, EMOTIONS)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Emo-Score (frame accuracy)")
    title = "Per-emotion scores (MEAD)" + ("  [RANDOM metric backbones]" if results["random_backbones"] else "")
    ax.set_title(title)
    if mead:
        ax.legend()
    for r, emotion in enumerate(emotions, start=1):
        job = samples[emotion]
        video = media.read_frames(job.video_path(out))
        picks = np.linspace(0, len(video) - 1, n_frames).round().astype(int)
        reference = media.read_frames(store.path(job.reference_clip, "frames"), [0])[0]
        for c, image in enumerate([reference, *video[picks]]):
            axis = fig.add_subplot(grid[r, c])
            axis.imshow(image)
            axis.set_xticks([])
            axis.set_yticks([])
            if c == 0:
                axis.set_ylabel(f"{emotion}\n({job.mode})", rotation=0, ha="right", va="center")
            if r == 1:
                axis.set_title("reference" if c == 0 else f"frame {picks[c - 1]}", fontsize=8)
    path = out / "results.png"
    with media.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return path


def write_text(path: Path, text: str) -> None:
    with media.atomic_path(path) as tmp:
        tmp.write_text(text)


def run_metrics(jobs: Sequence[Job], store, cfg: EvalConfig, out: Path, priors_desc: dict[str, str],
                backbones: dict[str, Any] | None, device: torch.device, log=print) -> dict[str, Any]:
    """Score every generated video and write results.{json,csv,md,png}; returns the results dict."""
    missing = [j.name for j in jobs if not j.video_path(out).is_file()]
    if missing:
        raise EvalError(f"{out}: {len(missing)} of {len(jobs)} videos not generated yet (e.g. {missing[0]}); "
                        f"run the generate stage for every shard first")
    if cfg.random_backbones and backbones is None:
        backbones = random_backbones(cfg.seed)
    metrics = build_metrics(cfg, backbones, device)
    tables, videos = [], []
    groups = [("mead", mode) for mode in MODES] + [("hdtf", "hdtf")]
    for table, mode in groups:
        members = [j for j in jobs if j.table == table and j.mode == mode]
        if members:
            summary, rows = score_table(table, mode, members, store, metrics, cfg, out, priors_desc, log)
            tables.append(summary)
            videos += rows
    results = {"tables": tables, "videos": videos, "backbones": metrics.weights(),
               "random_backbones": bool((backbones or {}).get("random")), "config": _config_dict(cfg),
               "store": str(cfg.store), "n_videos": len(videos), "n_frames": int(sum(r["n_frames"] for r in videos))}
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.json", json.dumps(results, indent=2, default=str))
    write_text(out / "results.csv", render_csv(results))
    write_text(out / "results.md", render_markdown(results))
    render_figure(results, jobs, store, out, cfg.figure_frames)
    return results


def _config_dict(cfg: EvalConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg), default=str))


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate(cfg: EvalConfig, stage: str = "all", shard: int = 0, num_shards: int = 1,
             pipeline: DiceTalkPipeline | None = None, priors: PriorSource | None = None,
             backbones: dict[str, Any] | None = None, progress: bool = True, log=print) -> dict[str, Any] | None:
    """Run the protocol: ``generate`` this shard's videos, compute the ``metrics``, or ``all`` (both; the
    metrics only when this is the only shard). ``pipeline``, ``priors`` and ``backbones`` replace the
    ones built from the config (tests). Returns the results dict when metrics ran."""
    from dicetalk.data.store import Store

    if stage not in ("all", "generate", "metrics"):
        raise EvalError(f"stage must be all, generate or metrics, got {stage!r}")
    if not cfg.store:
        raise EvalError("no store given (store: STORE)")
    store = Store(cfg.store)
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    if priors is None:
        priors = StorePriors(store, cfg.embedder, cfg.priors, cfg.embedder_window)
    has_embedder = getattr(priors, "has_embedder", True)
    jobs = build_jobs(store, cfg, has_embedder)
    if not jobs:
        raise EvalError(f"{cfg.store}: no {cfg.split} clips match the config (datasets {cfg.datasets}, "
                        f"emotions {cfg.emotions}, modes {cfg.modes})")
    if isinstance(priors, StorePriors) and cfg.priors is None and any(j.emotion_clip is None for j in jobs):
        raise EvalError("mode P (and HDTF without an embedder) needs the exported priors (priors: DIR)")
    if "V" in cfg.modes and not has_embedder:
        log("note: no stage-1 embedder (embedder: CKPT), so Ours-V is skipped and HDTF uses the neutral prior")
    priors_desc = {j.name: (f"video:{j.emotion_clip}" if j.emotion_clip else
                            f"prior:{j.emotion if j.mode == 'P' else NEUTRAL}") for j in jobs}
    if stage in ("all", "generate"):
        pin_generation(out, cfg)
        mine = shard_jobs(jobs, shard, num_shards)
        if any(not j.video_path(out).is_file() for j in mine):
            if pipeline is None:
                from dicetalk.pipeline import load_talker_parts

                if not cfg.talker:
                    raise EvalError("no talker checkpoint given (talker: CKPT)")
                parts = load_talker_parts(cfg.talker, cfg.svd)
                pipeline = DiceTalkPipeline(parts.talker, parts.vae, parts.image_encoder, parts.vae_scaling,
                                            cfg.sampling, device, progress)
            run_generation(mine, store, pipeline, priors, cfg, out, log)
        if stage == "generate" or num_shards > 1:
            return None
    return run_metrics(jobs, store, cfg, out, priors_desc, backbones, device, log)


def print_tables(results: dict[str, Any], stream=sys.stdout) -> None:
    """Print Tables 1 and 2 (the head of results.md)."""
    text = render_markdown(results)
    stream.write(text.split("## Metric backbones")[0])
