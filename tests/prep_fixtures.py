"""Tiny raw MEAD / HDTF fixtures for the data_prep tests: a drawn face that moves, with exact landmarks.

Videos are small (96 x 80 px), about 1.5 s long; MEAD is 30 fps video-only mp4 + m4a audio, HDTF 25 fps mp4
with an AAC track; every video has a ``{stem}.landmarks.npy`` sidecar (T_source, 68, 2) in pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dicetalk import media

WIDTH, HEIGHT = 96, 80


def template() -> np.ndarray:
    """68 points of a frontal face in a unit box (x right, y down), in the iBUG-68 order."""
    t = np.linspace(np.pi, 0, 17)
    jaw = np.stack([0.5 + 0.45 * np.cos(t), 0.45 + 0.5 * np.sin(t)], 1)
    brows = np.stack([np.r_[np.linspace(0.15, 0.42, 5), np.linspace(0.58, 0.85, 5)], np.full(10, 0.28)], 1)
    nose = np.r_[np.stack([np.full(4, 0.5), np.linspace(0.38, 0.58, 4)], 1),
                 np.stack([np.linspace(0.42, 0.58, 5), np.full(5, 0.62)], 1)]
    a = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    eye = np.stack([0.07 * np.cos(a), 0.03 * np.sin(a)], 1)
    eyes = np.r_[eye + [0.32, 0.4], eye + [0.68, 0.4]]
    b = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    c = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    mouth = np.r_[np.stack([0.5 + 0.15 * np.cos(b), 0.76 + 0.05 * np.sin(b)], 1),
                  np.stack([0.5 + 0.1 * np.cos(c), 0.76 + 0.03 * np.sin(c)], 1)]
    return np.concatenate([jaw, brows, nose, eyes, mouth]).astype(np.float32)


def face_clip(n: int, seed: int = 0, width: int = WIDTH, height: int = HEIGHT) -> tuple[np.ndarray, np.ndarray]:
    """(frames (n, H, W, 3) uint8, landmarks (n, 68, 2) float32): a drawn face drifting and talking."""
    rng = np.random.default_rng(seed)
    k = np.arange(n)[:, None]
    face_size = 36 + 4 * rng.random()
    centre = np.stack([width / 2 + 8 * np.sin(k[:, 0] / 9 + seed), height / 2 + 3 * np.cos(k[:, 0] / 13)], 1)
    base = template()
    mouth_open = 0.5 + 0.5 * np.sin(k / 3 + seed)  # (n, 1)
    points = np.broadcast_to(base, (n, 68, 2)).copy()
    points[:, 48:, 1] += (points[:, 48:, 1] - 0.76) * mouth_open * 1.5
    landmarks = (points - 0.5) * face_size + centre[:, None, :]
    y, x = np.mgrid[0:height, 0:width]
    frames = np.empty((n, height, width, 3), dtype=np.uint8)
    frames[:] = np.array([40, 60, 90], np.uint8) + np.uint8(seed * 20 % 80)
    cx, cy = centre[:, 0, None, None], centre[:, 1, None, None]
    skin = ((x - cx) / (0.5 * face_size)) ** 2 + ((y - cy) / (0.55 * face_size)) ** 2 < 1
    frames[skin] = (220, 180, 150)
    for lo, hi in ((36, 42), (42, 48), (48, 60)):
        ex, ey = landmarks[:, lo:hi].mean(1).T
        rx = np.ptp(landmarks[:, lo:hi, 0], 1) / 2 + 0.5
        ry = np.ptp(landmarks[:, lo:hi, 1], 1) / 2 + 0.5
        blob = ((x - ex[:, None, None]) / rx[:, None, None]) ** 2 + ((y - ey[:, None, None]) / ry[:, None, None]) ** 2 < 1
        frames[blob] = (60, 20, 30)
    return frames, landmarks.astype(np.float32)


def speech(seconds: float, seed: int = 0, rate: int = 16_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t + seed)
    return (0.3 * envelope * np.sin(2 * np.pi * (150 + 30 * seed) * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def write_clip(video: Path, seconds: float, fps: float, seed: int, audio: Path | None = None,
               embed_audio: bool = False, audio_seconds: float | None = None, face_missing: float = 0.0) -> None:
    """One raw clip: video (+ embedded or separate audio) and its landmark sidecar."""
    n = int(round(seconds * fps))
    frames, landmarks = face_clip(n, seed)
    if face_missing:
        landmarks[: int(face_missing * n)] = np.nan
    wave = speech(seconds if audio_seconds is None else audio_seconds, seed)
    video.parent.mkdir(parents=True, exist_ok=True)
    media.write_video(video, frames, fps, audio=wave if embed_audio else None)
    np.save(video.with_name(f"{video.stem}.landmarks.npy"), landmarks)
    if audio is not None:
        media.write_audio(audio, wave)


def mead_paths(root: Path, identity: str, emotion: str, level: int, number: int) -> tuple[Path, Path]:
    rel = Path(emotion) / f"level_{level}" / f"{number:03d}"
    return (root / identity / "video" / "front" / rel).with_suffix(".mp4"), \
        (root / identity / "audio" / rel).with_suffix(".m4a")


def make_mead(root: Path, clips=(("M003", "angry", 3, 1), ("M005", "happy", 1, 1), ("M005", "neutral", 1, 2),
                                 ("W011", "sad", 2, 1)), seconds: float = 1.4) -> list[str]:
    """Good MEAD clips (30 fps, m4a audio); returns their clip ids."""
    ids = []
    for seed, (identity, emotion, level, number) in enumerate(clips):
        video, audio = mead_paths(root, identity, emotion, level, number)
        write_clip(video, seconds, 30, seed, audio=audio)
        ids.append(f"{identity}_{emotion}_{level}_{number:03d}")
    return ids


def make_hdtf(root: Path, stems=("WRA_AdamKinzinger0_000", "WRA_AdamKinzinger1_000", "RD_Radio11_000",
                                 "WDA_BarackObama_001"), seconds: float = 1.4) -> list[str]:
    """Good HDTF clips (flat 25 fps mp4 with AAC audio); returns their clip ids."""
    for seed, stem in enumerate(stems):
        write_clip(root / f"{stem}.mp4", seconds, 25, seed + 10, embed_audio=True)
    return list(stems)


def make_bad_mead(root: Path) -> dict[str, str]:
    """One MEAD clip per failure mode; returns clip id -> expected failure reason."""
    expected = {}

    def clip(emotion, number, reason):
        expected[f"M009_{emotion}_1_{number:03d}"] = reason
        return mead_paths(root, "M009", emotion, 1, number)

    video, audio = clip("fear", 1, "corrupt_video")
    write_clip(video, 1.4, 30, 1, audio=audio)
    data = video.read_bytes()
    video.write_bytes(data[:48] + bytes(len(data) - 48))  # header kept, everything after zeroed
    video, _ = clip("fear", 2, "no_audio")
    write_clip(video, 1.4, 30, 2)  # no m4a, video-only mp4
    video, audio = clip("fear", 3, "audio_too_short")
    write_clip(video, 1.6, 30, 3, audio=audio, audio_seconds=0.6)
    video, audio = clip("happy", 1, "no_face")
    write_clip(video, 1.4, 30, 4, audio=audio, face_missing=0.8)
    video, audio = clip("happy", 2, "too_short")
    write_clip(video, 0.5, 30, 5, audio=audio)
    video, audio = clip("happy", 3, "unreadable")  # a dangling symlink (tests run as root: chmod is no test)
    video.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(root / "nowhere.mp4", video)
    video, audio = clip("sad", 1, "unreadable")  # a folder where the file should be
    video.mkdir(parents=True)
    return expected
