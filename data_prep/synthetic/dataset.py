"""Identities, per-clip randomness, one-clip drawing, and writing the MEAD / HDTF trees."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from data_prep.synthetic.face import (
    EMOTION_EXPRESSIONS,
    LEVEL_SCALE,
    Expression,
    FaceTraits,
    blink_curve,
    emotion_expression,
    face_landmarks,
    random_pose,
    random_traits,
    render,
)
from data_prep.synthetic.speech import (
    EMOTION_PROSODY,
    REFERENCE_RMS,
    Prosody,
    Voice,
    frame_rms,
    random_voice,
    synth_speech,
)
from dicetalk.constants import EMOTIONS, LEVELS, SAMPLE_RATE
from dicetalk.media import atomic_path, save_npy, write_audio, write_video

MEAD_FPS = 30.0  # real MEAD is 30 fps; data_prep resamples to 25
HDTF_FPS = 25.0

# Released MEAD actor ids. The default 6 are M003 W009 (default test ids) + M005 W011 M007 W014, so the default
# split has 2 test and 4 non-test identities; the other test ids come next, then the remaining actors.
_MEAD_RELEASED = (
    "M003 M005 M007 M009 M011 M012 M013 M019 M022 M023 M024 M025 M026 M027 M028 M029 M030 M031 M032 M033 M034 "
    "M035 M037 M039 M040 M041 M042 W009 W011 W014 W015 W016 W017 W018 W019 W021 W023 W024 W025 W026 W028 W029 "
    "W033 W035 W036 W037 W038 W040"
).split()
_MEAD_FIRST = ("M003", "W009", "M005", "W011", "M007", "W014", "M030", "W015", "W029")
MEAD_IDS: tuple[str, ...] = _MEAD_FIRST + tuple(i for i in _MEAD_RELEASED if i not in _MEAD_FIRST)

# Fictional HDTF speakers: subsets cycle WRA, RD, WDA; name = first + last; the first names alternate sex.
_FIRST = ("Ada", "Ben", "Cara", "Dev", "Elin", "Finn", "Gia", "Hugo", "Iris", "Jon", "Kira", "Leo")
_LAST = ("Holt", "Marsh", "Quill", "Brandt", "Voss", "Lorne", "Pike", "Sato", "Reyes", "Dunmore")
_SUBSETS = ("WRA", "RD", "WDA")
MAX_HDTF_SPEAKERS = len(_FIRST) * len(_LAST)
MAX_SECONDS = 600.0


def hdtf_speaker(i: int) -> tuple[str, str, bool]:
    """(subset, CamelCase name, female) of the i-th synthetic HDTF speaker."""
    return _SUBSETS[i % 3], _FIRST[i % len(_FIRST)] + _LAST[(i // len(_FIRST) + i) % len(_LAST)], i % 2 == 0


def seed_sequence(seed: int, *keys: object) -> np.random.SeedSequence:
    """A seed that depends only on ``seed`` and ``keys`` (stable across runs and processes, unlike hash())."""
    digest = hashlib.sha256("/".join(map(str, (seed, *keys))).encode()).digest()
    return np.random.SeedSequence(int.from_bytes(digest[:16], "little"))


@dataclass(frozen=True)
class Identity:
    """A synthetic person: how they look, sound and move."""

    name: str
    female: bool
    face: FaceTraits
    voice: Voice
    expressiveness: float  # scales every expression of this person


def make_identity(seed: int, name: str, female: bool) -> Identity:
    """The identity called ``name`` in the set generated with ``seed`` (the same for every clip)."""
    rng = np.random.default_rng(seed_sequence(seed, "identity", name))
    return Identity(name, female, random_traits(rng, female), random_voice(rng, female), float(rng.uniform(0.85, 1.15)))


def mead_identity(seed: int, mead_id: str) -> Identity:
    """MEAD actor ``mead_id`` (M... men, W... women)."""
    return make_identity(seed, mead_id, mead_id.startswith("W"))


@dataclass
class Clip:
    """One drawn clip. ``landmarks`` are NaN on frames where the face is not visible."""

    frames: np.ndarray  # (T, S, S, 3) uint8
    landmarks: np.ndarray  # (T, 68, 2) float32 pixels
    audio: np.ndarray  # (N,) float32 mono, N = T * sample_rate / fps
    fps: float
    sample_rate: int
    mouth_open: np.ndarray  # (T,) speech-driven opening in face units (before the expression's jaw_open)


def mouth_from_audio(audio: np.ndarray, sample_rate: int, fps: float, n_frames: int) -> np.ndarray:
    """Per-frame mouth opening (face units) from the RMS under each frame: louder speech opens wider."""
    return 0.2 * np.clip(frame_rms(audio, sample_rate, fps, n_frames) / REFERENCE_RMS, 0, 2.0) ** 0.7


def draw_clip(
    identity: Identity,
    expression: Expression,
    prosody: Prosody,
    seed: np.random.SeedSequence | int,
    n_frames: int,
    fps: float,
    size: int,
    sample_rate: int = SAMPLE_RATE,
    face_visible: np.ndarray | None = None,
) -> Clip:
    """Speech for ``prosody`` and the matching talking face with ``expression``, plus per-clip noise.

    ``face_visible`` (T,) bool hides the face on some frames (to craft no-face inputs for tests).
    """
    if n_frames < 1 or size < 16 or size % 2:
        raise ValueError(f"need n_frames >= 1 and an even size >= 16, got {n_frames} frames, {size} px")
    seed = np.random.SeedSequence(seed) if isinstance(seed, int) else seed
    audio_ss, pose_ss, expr_ss, misc_ss = seed.spawn(4)  # independent streams: changing one leaves the others
    rng = np.random.default_rng(audio_ss)
    jitter = lambda x, sd: x * (1 + rng.normal(0, sd))  # noqa: E731
    prosody = replace(prosody, pitch=jitter(prosody.pitch, 0.05), tempo=jitter(prosody.tempo, 0.08),
                      energy=jitter(prosody.energy, 0.12), pitch_range=jitter(prosody.pitch_range, 0.15))
    n_samples = int(round(n_frames * sample_rate / fps))
    audio = synth_speech(rng, identity.voice, prosody, n_samples, sample_rate)
    mouth = mouth_from_audio(audio, sample_rate, fps, n_frames)
    rng = np.random.default_rng(expr_ss)
    noise = Expression(*rng.normal(0, 0.04, len(Expression().as_array())))
    # a negative jaw offset would push the closed lips through each other
    noise = replace(noise, blush=0.0, jaw_open=abs(noise.jaw_open) / 4)
    expr = expression.scaled(identity.expressiveness).plus(noise)
    rng = np.random.default_rng(misc_ss)
    t = identity.face
    blink = blink_curve(n_frames, fps, t.blink_period, rng.uniform(0, t.blink_period))
    gaze = tuple(rng.normal(0, 0.015, 2))
    gain = rng.uniform(0.95, 1.05)  # per-clip illumination
    lm_units = face_landmarks(t, expr, mouth, blink)
    pose = random_pose(np.random.default_rng(pose_ss), t, n_frames, fps, size)
    frames = render(t, expr, lm_units, pose, size, gaze=gaze, face_visible=face_visible)
    frames = np.minimum((frames.astype(np.uint16) * int(256 * gain)) >> 8, 255).astype(np.uint8)
    landmarks = pose.apply(lm_units).astype(np.float32)
    if face_visible is not None:
        landmarks[~np.asarray(face_visible, bool)] = np.nan
    return Clip(frames, landmarks, audio, fps, sample_rate, mouth)


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. See the package docstring for the meaning and defaults."""

    seed: int = 0
    mead_identities: int = 6
    hdtf_speakers: int = 4
    seconds: float = 2.0
    size: int = 128
    clips_per_level: int = 2
    hdtf_videos: int = 1
    hdtf_clips: int = 3
    emotions: tuple[str, ...] = EMOTIONS
    levels: tuple[int, ...] = LEVELS
    workers: int = 1

    def validate(self) -> None:
        """Raise ValueError with a one-line reason for any unusable setting."""
        bad = [e for e in self.emotions if e not in EMOTIONS]
        if bad:
            raise ValueError(f"unknown emotion {bad[0]!r} (choose from {', '.join(EMOTIONS)})")
        if not self.emotions or len(set(self.emotions)) != len(self.emotions):
            raise ValueError("emotions must be a non-empty list without repeats")
        if not self.levels or any(k not in LEVELS for k in self.levels) or len(set(self.levels)) != len(self.levels):
            raise ValueError(f"levels must be distinct values among {LEVELS}, got {self.levels}")
        if not 0 <= self.mead_identities <= len(MEAD_IDS):
            raise ValueError(f"mead_identities must be in 0..{len(MEAD_IDS)}, got {self.mead_identities}")
        if not 0 <= self.hdtf_speakers <= MAX_HDTF_SPEAKERS:
            raise ValueError(f"hdtf_speakers must be in 0..{MAX_HDTF_SPEAKERS}, got {self.hdtf_speakers}")
        if self.mead_identities == 0 and self.hdtf_speakers == 0:
            raise ValueError("nothing to generate: mead_identities and hdtf_speakers are both 0")
        for name in ("clips_per_level", "hdtf_videos", "hdtf_clips", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 2 / HDTF_FPS <= self.seconds <= MAX_SECONDS:  # also rejects NaN
            raise ValueError(f"seconds must be in {2 / HDTF_FPS:g}..{MAX_SECONDS:g}, got {self.seconds}")
        if self.size < 32 or self.size % 2:
            raise ValueError(f"size must be an even number >= 32, got {self.size}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclass
class Summary:
    """What ``generate`` wrote."""

    out: Path
    mead_root: Path
    hdtf_root: Path
    mead_clips: int = 0
    hdtf_clips: int = 0
    mead_ids: list[str] = field(default_factory=list)
    hdtf_speakers: list[str] = field(default_factory=list)
    seconds: float = 0.0  # total video duration
    elapsed: float = 0.0  # wall time of the run

    def describe(self) -> str:
        return (
            f"wrote {self.mead_clips} MEAD clips ({len(self.mead_ids)} identities: {' '.join(self.mead_ids) or '-'}) "
            f"under {self.mead_root} and {self.hdtf_clips} HDTF clips ({len(self.hdtf_speakers)} speakers) "
            f"under {self.hdtf_root}: {self.seconds:.1f} s of video in {self.elapsed:.1f} s"
        )


def mead_video_path(root: Path, mead_id: str, emotion: str, level: int, index: int) -> Path:
    return root / mead_id / "video" / "front" / emotion / f"level_{level}" / f"{index:03d}.mp4"


def mead_audio_path(root: Path, mead_id: str, emotion: str, level: int, index: int) -> Path:
    return root / mead_id / "audio" / emotion / f"level_{level}" / f"{index:03d}.m4a"


def landmarks_path(video: Path) -> Path:
    """The ground-truth sidecar of a video: ``{stem}.landmarks.npy`` next to it."""
    return video.with_name(f"{video.stem}.landmarks.npy")


def n_frames_for(seconds: float, fps: float) -> int:
    return max(1, int(round(seconds * fps)))


def emotion_prosody(emotion: str, level: int) -> Prosody:
    """Speech prosody of a MEAD emotion at level 1-3 (the same intensity scale as the face)."""
    return EMOTION_PROSODY[emotion].at_level(LEVEL_SCALE[level])


def write_mead_clip(root: Path, mead_id: str, emotion: str, level: int, index: int, clip: Clip) -> Path:
    """Write video (no audio track), m4a and landmark sidecar in the MEAD layout; returns the video path."""
    video = mead_video_path(root, mead_id, emotion, level, index)
    # The video goes last: once it exists under its final name, its sidecar and audio exist too.
    save_npy(landmarks_path(video), clip.landmarks)
    write_audio(mead_audio_path(root, mead_id, emotion, level, index), clip.audio, clip.sample_rate)
    write_video(video, clip.frames, clip.fps)
    return video


def write_hdtf_clip(root: Path, stem: str, clip: Clip) -> Path:
    """Write ``root/{stem}.mp4`` with its AAC track and landmark sidecar; returns the video path."""
    video = root / f"{stem}.mp4"
    save_npy(landmarks_path(video), clip.landmarks)
    write_video(video, clip.frames, clip.fps, audio=clip.audio, sample_rate=clip.sample_rate)
    return video


def _mead_job(args: tuple) -> float:
    root, cfg, mead_id, emotion, level, index = args
    n = n_frames_for(cfg.seconds, MEAD_FPS)
    clip = draw_clip(mead_identity(cfg.seed, mead_id), emotion_expression(emotion, level),
                     emotion_prosody(emotion, level), seed_sequence(cfg.seed, "mead", mead_id, emotion, level, index),
                     n, MEAD_FPS, cfg.size)
    write_mead_clip(root, mead_id, emotion, level, index, clip)
    return n / MEAD_FPS


# HDTF videos carry a mild, video-wide mood (clips of one video share it): mostly neutral or pleasant talk.
_HDTF_MOODS = ("neutral", "neutral", "happy", "happy", "sad", "angry", "surprised", "contempt")


def hdtf_stem(i: int, video: int, clip: int) -> str:
    """File stem of clip ``clip`` of video ``video`` of the i-th speaker, e.g. ``WRA_AdaHolt0_000``."""
    subset, name, _ = hdtf_speaker(i)
    return f"{subset}_{name}{video}_{clip:03d}"


def hdtf_identity(seed: int, i: int) -> Identity:
    """The i-th HDTF speaker (kept apart from MEAD actors by a name prefix)."""
    _, name, female = hdtf_speaker(i)
    return make_identity(seed, f"hdtf/{name}", female)


def _hdtf_job(args: tuple) -> float:
    root, cfg, i, video, index = args
    name = hdtf_speaker(i)[1]
    mood_rng = np.random.default_rng(seed_sequence(cfg.seed, "hdtf-mood", name, video))
    mood, strength = _HDTF_MOODS[mood_rng.integers(len(_HDTF_MOODS))], mood_rng.uniform(0.1, 0.4)
    n = n_frames_for(cfg.seconds, HDTF_FPS)
    clip = draw_clip(hdtf_identity(cfg.seed, i), EMOTION_EXPRESSIONS[mood].scaled(strength),
                     EMOTION_PROSODY[mood].at_level(strength), seed_sequence(cfg.seed, "hdtf", name, video, index),
                     n, HDTF_FPS, cfg.size)
    write_hdtf_clip(root, hdtf_stem(i, video, index), clip)
    return n / HDTF_FPS


def check_output_dir(out: Path) -> None:
    """Raise ValueError unless ``out`` is, or can be created as, a folder."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise ValueError(f"{out}: {'exists and is' if p == out else f'{p} is'} not a folder")
            return


def generate(out: str | os.PathLike, cfg: SyntheticConfig = SyntheticConfig()) -> Summary:
    """Write the synthetic MEAD tree to ``out/mead`` and the HDTF clips to ``out/hdtf``; overwrite what is there."""
    cfg.validate()
    out = Path(out)
    check_output_dir(out)
    start = time.perf_counter()
    summary = Summary(out, out / "mead", out / "hdtf")
    summary.mead_ids = list(MEAD_IDS[: cfg.mead_identities])
    summary.hdtf_speakers = [hdtf_speaker(i)[1] for i in range(cfg.hdtf_speakers)]
    mead = [(summary.mead_root, cfg, m, e, k, j) for m in summary.mead_ids for e in cfg.emotions
            for k in cfg.levels if e != "neutral" or k == 1  # neutral exists at level 1 only
            for j in range(1, cfg.clips_per_level + 1)]
    hdtf = [(summary.hdtf_root, cfg, i, v, c) for i in range(cfg.hdtf_speakers)
            for v in range(cfg.hdtf_videos) for c in range(cfg.hdtf_clips)]
    out.mkdir(parents=True, exist_ok=True)
    if cfg.workers > 1:
        # fork where available: workers start at once with everything imported (clips do not depend on it)
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(cfg.workers, mp_context=ctx) as pool:
            mead_s = list(pool.map(_mead_job, mead, chunksize=4))
            hdtf_s = list(pool.map(_hdtf_job, hdtf, chunksize=2))
    else:
        mead_s, hdtf_s = [_mead_job(j) for j in mead], [_hdtf_job(j) for j in hdtf]
    summary.mead_clips, summary.hdtf_clips = len(mead), len(hdtf)
    summary.seconds = float(sum(mead_s) + sum(hdtf_s))
    with atomic_path(out / "synthetic.json") as tmp:  # how to regenerate this exact set
        settings = {k: v for k, v in asdict(cfg).items() if k != "workers"}  # workers do not change the output
        tmp.write_text(json.dumps({"generator": "data_prep.synthetic", **settings}, indent=1) + "\n")
    summary.elapsed = time.perf_counter() - start
    return summary
