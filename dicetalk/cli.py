"""The ``dicetalk`` console entry.

Training goes through Lightning's own CLI (configs print with ``--print_config``, override with dotted
flags, and resume with ``--ckpt_path last``); the other commands are plain argparse sub-commands::

    dicetalk fit --config configs/tiny/embedder.yaml [--ckpt_path auto]
    dicetalk generate --talker CKPT --image IMG --audio WAV --emotion happy --out out.mp4
    dicetalk eval --config configs/eval.yaml
    dicetalk import-official --dir checkpoints/DICE-Talk --out released.safetensors
    dicetalk weights list|download|verify

Before instantiating anything, ``fit`` checks every input path of the config and lists all that are missing
in one error; ``--ckpt_path auto`` resumes from the newest of Lightning's hpc checkpoint and ``last.ckpt``.
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

    from dicetalk.lightning.callbacks import CheckpointOnSignal, NonFiniteLossGuard
    from dicetalk.preflight import check_config
    from dicetalk.resume import resolve_ckpt_path

    class DicetalkCLI(LightningCLI):
        """LightningCLI + preflight checks, the training guards, and resume from the run's newest checkpoint."""

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_lightning_class_args(NonFiniteLossGuard, "nonfinite")  # --nonfinite.on_nonfinite skip
            parser.add_lightning_class_args(CheckpointOnSignal, "signal_checkpoint")

        def before_instantiate_classes(self) -> None:
            check_config(self.config[self.subcommand], f"dicetalk {self.subcommand}")

        def before_fit(self) -> None:
            kwargs = self.config_init[self.subcommand]
            kwargs["ckpt_path"] = resolve_ckpt_path(self.trainer, kwargs.get("ckpt_path"))

    DicetalkCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=None if argv == sys.argv[1:] else argv,  # None: LightningCLI reads sys.argv itself (no warning)
    )


def build_parser() -> argparse.ArgumentParser:
    from dicetalk.cli_infer import add_eval_parser, add_generate_parser, add_import_parser
    from dicetalk.cli_weights import add_weights_parser

    parser = argparse.ArgumentParser(
        prog="dicetalk",
        description="DICE-Talk training framework. Training: `dicetalk fit --config CONFIG` (LightningCLI).",
    )
    parser.add_argument("--version", action="version", version=f"dicetalk {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in LIGHTNING_COMMANDS:
        commands.add_parser(name, help=f"Lightning `{name}` with a YAML config (see `dicetalk {name} --help`)")
    add_generate_parser(commands)
    add_eval_parser(commands)
    add_import_parser(commands)
    add_weights_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from dicetalk.preflight import PreflightError

        try:
            run_lightning(argv)
        except PreflightError as exc:  # everything missing, in one message, before any heavy work
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
