"""Pick the checkpoint a (re)started ``fit`` resumes from.

Two kinds of checkpoint can hold the latest state of a run:

* ``hpc_ckpt_<N>.ckpt`` in ``trainer.default_root_dir``: written by Lightning's SLURM requeue handler
  (SIGUSR1) and by :class:`dicetalk.lightning.callbacks.CheckpointOnSignal` (SIGTERM / SIGUSR1);
* ``last.ckpt`` (or ``last-v<k>.ckpt``) in a ModelCheckpoint's ``dirpath``: written every N steps.

Lightning itself only looks at hpc checkpoints when ``fit(ckpt_path=None)`` runs under SLURM, and only
at ``last.ckpt`` for ``ckpt_path="last"``; :func:`resolve_ckpt_path` takes the newest of both.
Stage 2 starts from stage-1 *weights* through a model init argument in its config, never through
``ckpt_path``: ``ckpt_path`` restores a whole training state (optimizer, step, loops) of the same run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_info

AUTO = ("auto", "last")  # ckpt_path values that mean "newest checkpoint of this run, if any"
_HPC = re.compile(r"hpc_ckpt_(\d+)\.ckpt$")
_LAST = re.compile(r"last(-v\d+)?\.ckpt$")


def hpc_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Lightning's ``hpc_ckpt_<N>.ckpt`` files directly in ``root``, by increasing N."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _HPC.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def next_hpc_checkpoint(root: str | os.PathLike) -> Path:
    """The path of the next hpc checkpoint in ``root`` (``hpc_ckpt_<max N + 1>.ckpt``, as Lightning numbers them)."""
    existing = hpc_checkpoints(root)
    n = int(_HPC.fullmatch(existing[-1].name).group(1)) + 1 if existing else 1
    return Path(root) / f"hpc_ckpt_{n}.ckpt"


def prune_hpc_checkpoints(newest: str | os.PathLike, keep: int = 1) -> list[Path]:
    """Delete the hpc checkpoints numbered below ``newest`` (a complete one) in its folder, keeping
    ``keep`` in all (``newest`` included). Returns the deleted paths.

    Each SLURM requeue adds one hpc checkpoint (a full-size talker's is several GB), so without this a long
    run fills its disk quota with states it will never resume from.
    """
    newest = Path(newest)
    match = _HPC.fullmatch(newest.name)
    if match is None or keep < 1:
        return []
    older = [p for p in hpc_checkpoints(newest.parent) if int(_HPC.fullmatch(p.name).group(1)) < int(match.group(1))]
    doomed = older[: max(0, len(older) - (keep - 1))]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def last_checkpoints(dirs: Iterable[str | os.PathLike]) -> list[Path]:
    """``last.ckpt`` / ``last-v<k>.ckpt`` files directly in any of ``dirs``."""
    return [p for d in map(Path, dirs) if d.is_dir() for p in d.iterdir() if _LAST.fullmatch(p.name)]


def newest_checkpoint(candidates: Iterable[Path]) -> Path | None:
    """The most recently modified file of ``candidates`` (None when there is none).

    Ties (same mtime on coarse file systems) go to the hpc checkpoint with the highest number, then to
    the later name, so that every rank of a job picks the same file.
    """
    def key(p: Path) -> tuple[int, int, str]:
        m = _HPC.fullmatch(p.name)
        return p.stat().st_mtime_ns, int(m.group(1)) if m else -1, str(p)

    existing = [p for p in candidates if p.is_file()]
    return max(existing, key=key) if existing else None


def checkpoint_dir(trainer: pl.Trainer) -> Path:
    """Where the trainer's checkpoints go: the first ModelCheckpoint's dirpath, else ``default_root_dir``."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            return Path(cb.dirpath)
    return Path(trainer.default_root_dir)


def run_checkpoints(trainer: pl.Trainer) -> list[Path]:
    """Every hpc and last checkpoint of this run.

    ModelCheckpoints without an explicit ``dirpath`` save under ``<default_root_dir>/.../checkpoints`` (a
    logger version folder that changes with every start), so then those folders are searched too.
    """
    root = Path(trainer.default_root_dir)
    dirs = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    if len(dirs) < len(trainer.checkpoint_callbacks) and root.is_dir():
        dirs += [p for p in root.glob("**/checkpoints") if p.is_dir()]
    return hpc_checkpoints(root) + last_checkpoints(dirs)


def batches_done_in_epoch(trainer: pl.Trainer | None) -> int:
    """How many batches of the current epoch were trained, when a DataModule builds its training loader.

    Lightning restores its loop counters before it asks for the training loader, but a plain DataLoader
    restarts the epoch from its first batch, so a run resumed mid-epoch would see other data than an
    uninterrupted one (Lightning warns "your dataloader is not resumable"). A batch sampler whose order
    depends only on the epoch (``set_epoch``) and that skips this many batches on its first pass, while
    reporting the full epoch length, continues exactly where the interrupted run stopped. 0 on a fresh start.
    """
    if trainer is None:
        return 0
    progress = trainer.fit_loop.epoch_loop.batch_progress
    # saved after the epoch's last batch: the resumed run starts the next epoch from its beginning
    return 0 if progress.is_last_batch else progress.current.processed


def _under_slurm(env: Mapping[str, str]) -> bool:
    """A SLURM batch job (interactive shells named bash/interactive are not, as for Lightning)."""
    return "SLURM_JOB_ID" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def _requeued(env: Mapping[str, str]) -> bool:
    """True for a SLURM job that was requeued (preempted, timed out with SIGUSR1, or requeued by hand)."""
    return int(env.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def resolve_ckpt_path(trainer: pl.Trainer, ckpt_path: str | os.PathLike | None,
                      env: Mapping[str, str] | None = None) -> str | None:
    """The ``ckpt_path`` to hand to ``trainer.fit``.

    * ``"auto"`` or ``"last"``: the newest hpc / last checkpoint of this run, or None (fresh start).
    * None: the same under SLURM (a requeued job restarts with the command line it was submitted with),
      else None (a fresh start).
    * a path: that path, except in a requeued SLURM job where a checkpoint of this run exists: the path
      was meant for the first start, and reloading it would throw the progress since then away.
    * ``"hpc"`` or ``"best"``: unchanged (Lightning resolves them).
    """
    env = os.environ if env is None else env
    value = None if ckpt_path is None else str(ckpt_path)
    if value in AUTO or (value is None and _under_slurm(env)):
        fallback = None
    elif value not in ("hpc", "best") and _requeued(env):
        fallback = value
    else:
        return value
    newest = newest_checkpoint(run_checkpoints(trainer))
    chosen = str(newest) if newest is not None else fallback
    if chosen is None:
        rank_zero_info(f"resume: no checkpoint of this run under {trainer.default_root_dir}: starting from scratch")
    elif chosen != value:
        rank_zero_info(f"resume: ckpt_path={value!r} -> {chosen}")
    return chosen


__all__ = ["AUTO", "batches_done_in_epoch", "checkpoint_dir", "hpc_checkpoints", "last_checkpoints",
           "newest_checkpoint", "next_hpc_checkpoint", "resolve_ckpt_path", "run_checkpoints"]
