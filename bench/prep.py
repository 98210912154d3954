"""Benchmark: data_prep throughput per worker (one process), step by step and for the whole clip.

    python bench/prep.py [--raw DIR --dataset mead|hdtf] [--size 512] [--clips 8] [--whisper DIR]

Without ``--raw`` a small synthetic raw set is generated (data_prep.synthetic, 128 px, 2 s clips). Steps:
probe + 25 fps frame choice, decode (only the chosen frames, sorted), crop + resize, write (mp4 + wav + npy),
then the whole ``prepare_clip`` + ``write_clip`` with sidecar landmarks and a tiny random whisper (or the
whisper folder given). Numbers are per clip and per output frame, for one worker.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from data_prep import layouts
from data_prep.pipeline import (Models, PrepConfig, nearest_frames, prepare_clip, staging_folder, video_seconds,
                               write_clip)
from dicetalk import face, media
from dicetalk.audio import make_tiny_whisper
from dicetalk.constants import FPS


def _timed(fn, clips, *args):
    """Run fn over the clips, return (seconds, results)."""
    start = time.perf_counter()
    results = [fn(c, *args) for c in clips]
    return time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--raw", type=Path, help="raw dataset folder (default: generate a synthetic one)")
    parser.add_argument("--dataset", default="mead", choices=("mead", "hdtf"))
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--whisper", help="whisper folder (default: a tiny random one)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_prep_"))
    raw = args.raw
    if raw is None:
        from data_prep.synthetic import SyntheticConfig, generate

        generate(work / "raw", SyntheticConfig(mead_identities=2, hdtf_speakers=2, clips_per_level=1,
                                               emotions=("angry", "happy", "sad"), levels=(3,), seconds=2.0))
        raw = work / "raw" / args.dataset
    clips = layouts.discover(args.dataset, raw)[: args.clips]
    whisper = args.whisper or str(make_tiny_whisper(work / "whisper"))
    config = PrepConfig(size=args.size, landmarks="sidecar", whisper=whisper)
    models = Models(config)

    def probe(spec):
        info = media.probe_video(spec.video)
        stamps = media.frame_timestamps(spec.video)
        n = int(np.floor(video_seconds(stamps, info.fps) * FPS + 0.01))
        return info, nearest_frames(stamps, n)

    t_probe, probed = _timed(probe, clips)
    n_frames = sum(len(s) for _, s in probed)
    start = time.perf_counter()
    decoded = [media.read_frames(spec.video, np.unique(src)) for spec, (_, src) in zip(clips, probed)]
    t_decode = time.perf_counter() - start
    landmarks = [models.landmarks(face.ClipFrames(s.clip_id, s.video, src, i.n_frames, None))
                 for s, (i, src) in zip(clips, probed)]
    start = time.perf_counter()
    crops = []
    for frames, lm, (info, src) in zip(decoded, landmarks, probed):
        boxes = face.crop_boxes(face.fill_missing(lm), info.width, info.height)
        rows = np.searchsorted(np.unique(src), src)
        crops.append(face.crop_and_resize(frames[rows], boxes, args.size)[0])
    t_crop = time.perf_counter() - start
    start = time.perf_counter()
    for i, frames in enumerate(crops):
        out = work / "write" / str(i)
        out.mkdir(parents=True)
        media.write_video(out / "frames.mp4", frames, FPS)
        media.write_audio(out / "audio.wav", np.zeros(len(frames) * 640, np.float32))
        np.save(out / "landmarks.npy", np.zeros((len(frames), 68, 2), np.float32))
    t_write = time.perf_counter() - start

    _ = models.whisper  # load time is not per clip
    start = time.perf_counter()
    for spec in clips:
        with staging_folder(work / "store", spec.clip_id) as tmp:
            write_clip(work / "store", spec, prepare_clip(spec, config, models, folder=tmp), tmp)
    t_full = time.perf_counter() - start

    print(f"{len(clips)} {args.dataset} clips, {n_frames} frames at 25 fps, crop {args.size} px, one worker")
    print(f"{'step':<34}{'clips/s':>10}{'frames/s':>11}{'ms/clip':>10}")
    rows = [("probe + 25 fps frame choice", t_probe), ("decode (chosen frames only)", t_decode),
            ("crop + resize", t_crop), ("write mp4 + wav + npy", t_write),
            ("non-model steps total", t_probe + t_decode + t_crop + t_write),
            ("whole prep (sidecar, whisper)", t_full)]
    for name, seconds in rows:
        print(f"{name:<34}{len(clips) / seconds:>10.2f}{n_frames / seconds:>11.1f}{1000 * seconds / len(clips):>10.1f}")


if __name__ == "__main__":
    main()
