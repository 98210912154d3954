"""``python -m data_prep.synthetic``: generate the synthetic MEAD / HDTF set (options: see the package docstring)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import data_prep.synthetic as synthetic
from data_prep.synthetic.dataset import SyntheticConfig, check_output_dir, generate


def _words(text: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in text.split(",") if w.strip())


def _levels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(w) for w in _words(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None


def _as_flags(message: str) -> str:
    """Name config fields in a validation message the way the command line spells them."""
    for name in SyntheticConfig.__dataclass_fields__:
        message = re.sub(rf"\b{name}\b", "--" + name.replace("_", "-"), message)
    return message


def build_parser() -> argparse.ArgumentParser:
    defaults = SyntheticConfig()
    p = argparse.ArgumentParser(
        prog="python -m data_prep.synthetic",
        description=synthetic.__doc__.split("\n\n")[0],
        epilog="Layouts, contents and the default set: see the docstring of data_prep/synthetic/__init__.py.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, default=argparse.SUPPRESS,
                   help="output folder (gets mead/ and hdtf/)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="changes every identity and clip")
    p.add_argument("--mead-identities", type=int, default=defaults.mead_identities, metavar="N",
                   help="MEAD actors (M003 W009 M005 W011 M007 W014 M030 ... in this order), 0 = none")
    p.add_argument("--hdtf-speakers", type=int, default=defaults.hdtf_speakers, metavar="N", help="0 = none")
    p.add_argument("--clips-per-level", type=int, default=defaults.clips_per_level, metavar="N",
                   help="MEAD clips per (identity, emotion, level)")
    p.add_argument("--hdtf-videos", type=int, default=defaults.hdtf_videos, metavar="N", help="videos per speaker")
    p.add_argument("--hdtf-clips", type=int, default=defaults.hdtf_clips, metavar="N", help="clips per HDTF video")
    p.add_argument("--seconds", type=float, default=defaults.seconds, metavar="X", help="clip duration")
    p.add_argument("--size", type=int, default=defaults.size, metavar="PX", help="frame side in pixels (even)")
    p.add_argument("--emotions", type=_words, default=",".join(defaults.emotions), metavar="LIST",
                   help="comma-separated subset of the 8 MEAD emotions")
    p.add_argument("--levels", type=_levels, default=",".join(map(str, defaults.levels)), metavar="LIST",
                   help="comma-separated subset of 1,2,3 (neutral needs 1)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), metavar="N",
                   help="processes (the output does not depend on it)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = SyntheticConfig(
        seed=args.seed, mead_identities=args.mead_identities, hdtf_speakers=args.hdtf_speakers,
        seconds=args.seconds, size=args.size, clips_per_level=args.clips_per_level, hdtf_videos=args.hdtf_videos,
        hdtf_clips=args.hdtf_clips, emotions=args.emotions, levels=args.levels, workers=args.workers,
    )
    try:
        cfg.validate()
        check_output_dir(args.out)
    except ValueError as exc:
        parser.error(_as_flags(str(exc)))
    print(generate(args.out, cfg).describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
