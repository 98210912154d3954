"""The ``dicetalk`` console entry.

Training goes through Lightning's own CLI (configs print with ``--print_config``, override with dotted
flags, and resume with ``--ckpt_path last``); the other commands are plain argparse sub-commands::

    dicetalk fit --config configs/tiny/embedder.yaml [--ckpt_path last]
    dicetalk weights list|download|verify
"""

from __future__ import annotations

import argparse
import sys

from dicetalk import __version__

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def run_lightning(argv: list[str]) -> None:
    """LightningCLI over any LightningModule / LightningDataModule named by ``class_path`` in the config."""
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=argv,
    )


def build_parser() -> argparse.ArgumentParser:
    from dicetalk.cli_weights import add_weights_parser

    parser = argparse.ArgumentParser(
        prog="dicetalk",
        description="DICE-Talk training framework. Training: `dicetalk fit --config CONFIG` (LightningCLI).",
    )
    parser.add_argument("--version", action="version", version=f"dicetalk {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in LIGHTNING_COMMANDS:
        commands.add_parser(name, help=f"Lightning `{name}` with a YAML config (see `dicetalk {name} --help`)")
    add_weights_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        run_lightning(argv)
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
