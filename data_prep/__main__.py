"""``python -m data_prep {mead,hdtf,index}``: raw MEAD / HDTF -> training store.

    python -m data_prep mead --raw /data/MEAD --out /data/store [--shard i --num-shards N] [--workers K]
    python -m data_prep hdtf --raw /data/HDTF/clips --out /data/store
    python -m data_prep index /data/store

Shard i of N takes every clip whose position in the sorted clip list is i modulo N (one SLURM array task per
shard: ``--shard $SLURM_ARRAY_TASK_ID --num-shards $SLURM_ARRAY_TASK_COUNT``); run ``index`` once after all.
Exit status: 0 when at least one clip of the shard is in the store, 1 when none is, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys

from data_prep.index import SplitConfig, build_index
from data_prep.pipeline import PrepConfig
from data_prep.runner import run
from dicetalk.constants import HDTF_TEST_VIDEOS, MEAD_TEST_IDS
from dicetalk.audio import WhisperError
from dicetalk.face import CropConfig, FaceError


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _prep_parser(sub, name: str, help: str) -> None:
    p = sub.add_parser(name, help=help, description=help)
    p.add_argument("--raw", required=True, help="raw dataset folder")
    p.add_argument("--out", required=True, help="store folder (created; shared by all shards and datasets)")
    p.add_argument("--shard", type=int, default=0, help="this shard's index (0-based)")
    p.add_argument("--num-shards", type=int, default=1, help="number of shards (clip k goes to shard k %% N)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (each loads its own models)")
    p.add_argument("--limit", type=int, help="process only the first K clips of this shard")
    p.add_argument("--size", type=int, default=512, help="crop side in pixels (default 512)")
    p.add_argument("--min-seconds", type=float, default=1.0, help="shorter clips fail with too_short")
    p.add_argument("--max-missing-face", type=float, default=0.5,
                   help="fail a clip when more than this fraction of frames has no face")
    p.add_argument("--crop-scale", type=float, default=CropConfig.scale, help="crop side / landmark box side")
    p.add_argument("--crop-smooth", type=float, default=CropConfig.smooth,
                   help="Gaussian sigma (frames) of the crop centre track; 0 none, inf one box per clip")
    p.add_argument("--landmarks", choices=("face_alignment", "sidecar", "precomputed"), default="face_alignment",
                   help="landmark backend (sidecar: {stem}.landmarks.npy next to each video)")
    p.add_argument("--landmarks-dir", help="folder of {clip_id}.npy landmarks for --landmarks precomputed")
    p.add_argument("--expression-dir", help="folder of {clip_id}.npy expression / 3DMM features to store "
                                            "instead of the landmark features")
    p.add_argument("--whisper", default="openai/whisper-tiny", help="whisper folder or hub id (HF cache)")
    p.add_argument("--latents", metavar="VAE_DIR", help="also cache VAE latents (VAE folder or SVD folder)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--retry-failed", action="store_true", help="retry clips that failed in an earlier run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    if name == "mead":
        p.add_argument("--view", default="front", help="MEAD camera view (default front)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _prep_parser(sub, "mead", "prepare raw MEAD ({ID}/video/front/{emotion}/level_{k}/{NNN}.mp4 + audio/*.m4a)")
    _prep_parser(sub, "hdtf", "prepare raw HDTF clips (flat folder of {WRA|RD|WDA}_{Name}{k}_{clip}.mp4)")
    p = sub.add_parser("index", help="merge clip folders into manifest.jsonl / failures.jsonl, assign splits")
    p.add_argument("store")
    p.add_argument("--mead-test-ids", nargs="*", default=list(MEAD_TEST_IDS), help="MEAD test identities")
    p.add_argument("--hdtf-test-videos", type=int, default=HDTF_TEST_VIDEOS, help="HDTF test videos (at least)")
    p.add_argument("--val", type=float, default=1,
                   help="val identities per dataset: a count, or a fraction of the non-test ones when < 1")
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "index":
        try:
            rows, _, table = build_index(args.store, SplitConfig(tuple(args.mead_test_ids), args.hdtf_test_videos,
                                                                 args.val, args.seed))
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(table)
        return 0 if rows else 1

    config = PrepConfig(
        size=args.size, min_seconds=args.min_seconds, max_missing_face=args.max_missing_face,
        crop=CropConfig(scale=args.crop_scale, smooth=args.crop_smooth),
        landmarks=args.landmarks, landmarks_dir=args.landmarks_dir, expression_dir=args.expression_dir,
        whisper=args.whisper, latents=args.latents, device=args.device or _default_device(),
    )
    try:
        summary = run(args.command, args.raw, args.out, config, shard=args.shard, num_shards=args.num_shards,
                      workers=args.workers, limit=args.limit, retry_failed=args.retry_failed,
                      view=getattr(args, "view", "front"), progress=not args.no_progress)
    except (FileNotFoundError, ValueError, FaceError, WhisperError) as exc:  # missing folders / weights: one line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.render())
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
