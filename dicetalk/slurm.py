"""Render the sbatch templates in ``configs/slurm/`` and submit them with ``sbatch``.

    python -m dicetalk.slurm embedder|talker --nodes 2 --gpus 8 [--config CONFIG] [--dry-run] [-- fit args]
    python -m dicetalk.slurm eval --gpus 1 [--config CONFIG] [--dry-run] [-- eval args]
    python -m dicetalk.slurm prep --dataset mead --raw RAW --store STORE --shards 32 [--dry-run] [-- prep args]

Every option also reads an environment variable of the same name in capitals (NODES, GPUS, CPUS, TIME,
PARTITION, ACCOUNT, MEM, JOB_NAME, CONFIG, DRY_RUN, DATASET, RAW, STORE, SHARDS), so that
``SLURM=1 make train-talker NODES=2 GPUS=8`` can pass make variables straight through; an option given on
the command line wins. ``--dry-run`` prints the rendered script (for prep followed by the index job's sbatch
command line, as a comment) instead of submitting. Training jobs run one srun task per GPU with
``--trainer.num_nodes`` / ``--trainer.devices`` matching ``--nodes`` / ``--ntasks-per-node``, which is what
Lightning's SLURM detection expects.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from dicetalk import preflight

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "configs" / "slurm"
KINDS = ("prep", "embedder", "talker", "eval")
TRAIN_KINDS = ("embedder", "talker")
DEFAULT_CONFIG = {"embedder": "configs/embedder.yaml", "talker": "configs/talker.yaml", "eval": "configs/eval.yaml"}
_FIELD = re.compile(r"\{\{([A-Z_]+)\}\}")
_EMPTY_SBATCH = re.compile(r"^#SBATCH --[a-z-]+=\s*$")


class SlurmError(RuntimeError):
    """Bad job settings, a bad template, or a failed ``sbatch``."""


@dataclass
class JobSpec:
    """Everything a template needs. ``gpus`` is per node; ``extra`` is appended to the job's command."""

    kind: str
    nodes: int = 1
    gpus: int = 1
    cpus: int = 8
    time: str = "24:00:00"
    partition: str = ""
    account: str = ""
    mem: str = ""  # default: 0 (all of each node's memory, as Lightning's SLURM docs suggest); prep 32G
    job_name: str = ""
    config: str = ""
    extra: list[str] = field(default_factory=list)
    dataset: str = "mead"  # prep only
    raw: str = ""  # prep only
    store: str = ""  # prep only
    shards: int = 1  # prep only
    python: str = sys.executable
    workdir: str = field(default_factory=os.getcwd)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SlurmError(f"unknown job kind {self.kind!r}; known: {', '.join(KINDS)}")
        self.job_name = self.job_name or f"dicetalk-{self.kind}"
        self.mem = self.mem or ("32G" if self.kind == "prep" else "0")
        if self.kind in DEFAULT_CONFIG:
            self.config = self.config or DEFAULT_CONFIG[self.kind]
        for name in ("nodes", "cpus", "shards"):
            if getattr(self, name) < 1:
                raise SlurmError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.gpus < (0 if self.kind == "prep" else 1):
            raise SlurmError(f"gpus (per node) must be at least {0 if self.kind == 'prep' else 1}, got {self.gpus}")
        if self.kind == "prep":
            if self.nodes != 1:
                raise SlurmError("prep runs one single-node task per shard: use --shards, not --nodes")
            missing = [f"--{n}" for n in ("raw", "store") if not getattr(self, n)]
            if missing:
                raise SlurmError(f"prep needs {' and '.join(missing)}")
        for name in ("time", "partition", "account", "mem", "job_name"):
            if re.search(r"\s", getattr(self, name)):
                raise SlurmError(f"{name} must not contain spaces: {getattr(self, name)!r}")

    def command(self) -> list[str]:
        """The command srun starts in every task."""
        if self.kind == "prep":
            return [self.python, "-m", "data_prep", self.dataset, "--raw", self.raw, "--out", self.store,
                    "--shard", "$SLURM_ARRAY_TASK_ID", "--num-shards", str(self.shards), "--no-progress", *self.extra]
        if self.kind == "eval":
            return [self.python, "-m", "dicetalk.cli", "eval", "--config", self.config, *self.extra]
        return [self.python, "-m", "dicetalk.cli", "fit", "--config", self.config,
                "--trainer.accelerator", "gpu", "--trainer.num_nodes", str(self.nodes),
                "--trainer.devices", str(self.gpus), *self.extra]

    def fields(self) -> dict[str, str]:
        """Template field values."""
        command = " ".join('"$SLURM_ARRAY_TASK_ID"' if a == "$SLURM_ARRAY_TASK_ID" else shlex.quote(a)
                           for a in self.command())
        return {"JOB_NAME": self.job_name, "NODES": str(self.nodes), "GPUS": str(self.gpus),
                "GRES": f"gpu:{self.gpus}" if self.gpus else "",
                "CPUS": str(self.cpus), "MEM": self.mem, "TIME": self.time, "PARTITION": self.partition,
                "ACCOUNT": self.account, "WORKDIR": shlex.quote(self.workdir), "COMMAND": command,
                "NUM_SHARDS": str(self.shards), "LAST_SHARD": str(self.shards - 1)}


def render(spec: JobSpec, template_dir: Path = TEMPLATE_DIR) -> str:
    """The sbatch script for ``spec``: fields filled in, ``#SBATCH --opt=`` lines with an empty value dropped."""
    path = template_dir / f"{spec.kind}.sbatch"
    try:
        text = path.read_text()
    except OSError as exc:
        raise SlurmError(f"{path}: cannot read the template ({exc.strerror})") from None
    values = spec.fields()
    unknown = sorted(set(_FIELD.findall(text)) - set(values))
    if unknown:
        raise SlurmError(f"{path}: unknown template fields {', '.join(unknown)}")
    text = _FIELD.sub(lambda m: values[m.group(1)], text)
    return "".join(line for line in text.splitlines(keepends=True) if not _EMPTY_SBATCH.match(line))


def index_command(spec: JobSpec, after: str) -> list[str]:
    """The sbatch command line of the index job that runs once every prep shard succeeded."""
    options = [f"--job-name={spec.job_name}-index", f"--dependency=afterok:{after}", "--nodes=1", "--ntasks=1",
               f"--cpus-per-task={spec.cpus}", f"--time={spec.time}", "--output=slurm-%x-%j.out",
               f"--chdir={spec.workdir}"]
    options += [f"--partition={spec.partition}"] * bool(spec.partition)
    options += [f"--account={spec.account}"] * bool(spec.account)
    wrap = shlex.join([spec.python, "-m", "data_prep", "index", spec.store])
    return ["sbatch", "--parsable", *options, "--wrap", wrap]


def sbatch(script: str | None, argv: list[str]) -> str:
    """Run ``sbatch`` (script on stdin when given) and return the job id it prints with ``--parsable``."""
    try:
        result = subprocess.run(argv, input=script, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise SlurmError("sbatch not found: run this on a SLURM login node (or use --dry-run)") from None
    if result.returncode != 0:
        raise SlurmError(f"{shlex.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip().split(";")[0]


def submit(spec: JobSpec, dry_run: bool = False, out: TextIO | None = None) -> list[str]:
    """Render and submit ``spec`` (for prep also the dependent index job); returns the job ids.

    Training and eval configs go through :mod:`dicetalk.preflight` first (PreflightError lists what is missing).
    With ``dry_run`` print the script (for prep plus the index job's command line) to ``out`` instead, warn
    about missing inputs on stderr, and return [].
    """
    out = out or sys.stdout
    script = render(spec)
    if spec.kind in DEFAULT_CONFIG:
        if not Path(spec.workdir, spec.config).is_file():
            raise SlurmError(f"{spec.config}: no such config file (relative to {spec.workdir})")
        # before the job waits in the queue: the store, weights and checkpoints it names must exist
        config = preflight.load_config(Path(spec.workdir, spec.config), spec.extra)
        try:
            preflight.check_config(config, spec.config, root=spec.workdir)
        except preflight.PreflightError as exc:
            if not dry_run:
                raise
            print(f"warning: {exc}", file=sys.stderr)  # a dry run still shows the script
    if spec.kind == "prep" and not Path(spec.workdir, spec.raw).is_dir():
        raise SlurmError(f"{spec.raw}: no such raw dataset folder (relative to {spec.workdir})")
    if dry_run:
        out.write(script)
        if spec.kind == "prep":
            out.write(f"# followed by the index job:\n# {shlex.join(index_command(spec, '<prep job id>'))}\n")
        return []
    job_ids = [sbatch(script, ["sbatch", "--parsable"])]
    out.write(f"submitted {spec.job_name}: job {job_ids[0]}\n")
    if spec.kind == "prep":
        job_ids.append(sbatch(None, index_command(spec, job_ids[0])))
        out.write(f"submitted {spec.job_name}-index: job {job_ids[1]} (after job {job_ids[0]} succeeds)\n")
    return job_ids


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dicetalk.slurm", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--nodes", type=int, default=int(_env("NODES", "1")))
    parser.add_argument("--gpus", type=int, default=int(_env("GPUS", "1")), help="GPUs (= srun tasks) per node")
    parser.add_argument("--cpus", type=int, default=int(_env("CPUS", "8")), help="CPUs per task")
    parser.add_argument("--time", default=_env("TIME", "24:00:00"))
    parser.add_argument("--partition", default=_env("PARTITION", ""))
    parser.add_argument("--account", default=_env("ACCOUNT", ""))
    parser.add_argument("--mem", default=_env("MEM", ""),
                        help="memory per node (default 0 = all; prep: 32G per task)")
    parser.add_argument("--job-name", default=_env("JOB_NAME", ""))
    parser.add_argument("--config", default=_env("CONFIG", ""), help="YAML config (training and eval)")
    parser.add_argument("--dataset", choices=("mead", "hdtf"), default=_env("DATASET", "mead"), help="prep only")
    parser.add_argument("--raw", default=_env("RAW", ""), help="prep only: raw dataset folder")
    parser.add_argument("--store", default=_env("STORE", ""), help="prep only: store folder")
    parser.add_argument("--shards", type=int, default=int(_env("SHARDS", "1")), help="prep only: array size")
    parser.add_argument("--dry-run", action="store_true", default=_env("DRY_RUN", "0") not in ("0", ""),
                        help="print the rendered script instead of submitting (env DRY_RUN=1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    try:
        parser = build_parser()
    except ValueError as exc:  # an integer environment variable (NODES, GPUS, ...) that is not one
        print(f"error: environment: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("kind", "dry_run")}
    try:
        submit(JobSpec(args.kind, extra=extra, **options), dry_run=args.dry_run)
    except (SlurmError, preflight.PreflightError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
