"""Training guards: stop or skip on a non-finite loss, and checkpoint-then-stop on SIGTERM / SIGUSR1.

:class:`NonFiniteLossGuard` needs nothing from the LightningModule beyond Lightning's usual contract
(automatic optimization, ``training_step`` returns the loss or a dict with ``"loss"``). It sees the loss in
``on_before_backward``, before the backward pass and the optimizer step:

* ``on_nonfinite="stop"``: save ``nonfinite-step=<K>.ckpt`` (still the weights from before this step) next to
  the other checkpoints and raise :class:`NonFiniteLossError`, so that the job fails; a requeue would only
  reach the same NaN again.
* ``on_nonfinite="skip"``: let the backward pass run, then drop every gradient in
  ``on_before_optimizer_step``. ``optimizer.step`` skips parameters without a gradient, so weights and optimizer
  state stay as they were; the step still counts in ``global_step``. Returning ``None`` from ``training_step``
  would be simpler, but Lightning refuses that under DDP. After ``max_consecutive_skips`` skipped steps in a
  row the guard stops as in ``stop`` mode. Skipping assumes plain gradients on the parameters (single
  device, DDP); with DeepSpeed or FSDP use ``stop``.

Both decisions are reduced over ranks (a one-element all-reduce per step): when any rank sees a non-finite
loss, all ranks skip, or all save and stop, at the same step.
"""

from __future__ import annotations

import math
import signal
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor

from dicetalk.resume import checkpoint_dir, next_hpc_checkpoint, prune_hpc_checkpoints

NonFiniteAction = Literal["stop", "skip"]


class NonFiniteLossError(RuntimeError):
    """Training met a non-finite loss and stopped (the message names the step and the checkpoint)."""


class NonFiniteLossGuard(Callback):
    """Stop (with a checkpoint) or skip the step when the training loss is NaN or infinite.

    Args:
        on_nonfinite: ``"stop"`` or ``"skip"``.
        max_consecutive_skips: in skip mode, stop after this many skipped steps in a row.
    """

    def __init__(self, on_nonfinite: NonFiniteAction = "stop", max_consecutive_skips: int = 20):
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.max_consecutive_skips = max_consecutive_skips
        self.consecutive_skips = 0
        self.total_skips = 0
        self._loss: str | None = None  # what went wrong, while the current step is to be skipped

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        if not trainer.strategy.reduce_boolean_decision(not _is_finite(loss), all=False):
            return
        what = f"non-finite loss ({_describe(loss)})" if not _is_finite(loss) else "non-finite loss on another rank"
        if self.on_nonfinite == "stop":
            self._stop(trainer, what)
        self._loss = what  # skip: the gradients of this step are dropped before the optimizer step

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self._loss is None:
            self.consecutive_skips = 0
            return
        what, self._loss = self._loss, None
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None
        self.consecutive_skips += 1
        self.total_skips += 1
        if self.consecutive_skips > self.max_consecutive_skips:
            self._stop(trainer, f"{self.consecutive_skips} non-finite losses in a row")
        rank_zero_warn(f"{what} at global step {trainer.global_step}: step skipped "
                       f"({self.total_skips} skipped so far)")

    def _stop(self, trainer: pl.Trainer, why: str) -> None:
        path = checkpoint_dir(trainer) / f"nonfinite-step={trainer.global_step}.ckpt"
        trainer.save_checkpoint(path)  # collective: every rank gets here, rank 0 writes
        raise NonFiniteLossError(
            f"{why} at global step {trainer.global_step} (epoch {trainer.current_epoch}); stopped training. "
            f"The weights before this step are in {path}. Lower the learning rate, enable gradient clipping "
            f"or check the batch; resume from it explicitly with --ckpt_path {path}")

    def state_dict(self) -> dict[str, Any]:
        return {"total_skips": self.total_skips}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.total_skips = int(state_dict.get("total_skips", 0))


class CheckpointOnSignal(Callback):
    """On SIGTERM or SIGUSR1, finish the current batch, save a checkpoint, and stop with exit code 128+signal.

    The checkpoint is ``hpc_ckpt_<N+1>.ckpt`` in ``trainer.default_root_dir``: the name Lightning's SLURM
    requeue uses, so both Lightning's own SLURM resume and :func:`dicetalk.resume.resolve_ckpt_path` find it.
    Saving at a batch boundary (where ModelCheckpoint's step checkpoints are taken) and stopping by an
    exception (so that no end-of-epoch hook writes a newer checkpoint claiming the epoch finished) makes
    the resumed run continue exactly where this one stopped.

    Under SLURM with Lightning's auto-requeue, Lightning already owns the requeue signal (SIGUSR1 by default:
    it saves an hpc checkpoint and runs ``scontrol requeue``), so this callback leaves that signal alone
    and handles SIGTERM, which SLURM sends on requeue, preemption and ``scancel``.

    Older hpc checkpoints are deleted once a newer one is known to be good (``keep_hpc`` are kept): when a
    run has resumed from one, and after this callback saved one.
    """

    def __init__(self, signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1"), keep_hpc: int = 1):
        self.signals = tuple(signal.Signals[name] if isinstance(name, str) else signal.Signals(name)
                             for name in signals)
        self.keep_hpc = keep_hpc
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        # Only record: saving here would happen mid-step and outside the ranks' common schedule.
        self.received = signal.Signals(signum)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning installs its handlers just before training starts; ours go on top and are removed
        # again before Lightning restores the original ones.
        env = trainer._accelerator_connector.cluster_environment
        lightning_owned = env.requeue_signal if isinstance(env, SLURMEnvironment) and env.auto_requeue else None
        for signum in self.signals:
            if signum != lightning_owned:
                self._previous[signum] = signal.signal(signum, self._handler)
        if trainer.ckpt_path:  # restored without error by now
            self._prune(trainer, trainer.ckpt_path)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        path = next_hpc_checkpoint(trainer.default_root_dir)
        trainer.save_checkpoint(path)
        self._prune(trainer, path)
        name = self.received.name if self.received is not None else "a signal on another rank"
        rank_zero_info(f"{name}: saved {path} at global step {trainer.global_step}; stopping")
        code = 128 + (self.received or signal.SIGTERM)
        self._restore()
        raise SystemExit(code)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def _prune(self, trainer: pl.Trainer, newest: str | Path) -> None:
        if trainer.is_global_zero:
            for path in prune_hpc_checkpoints(newest, self.keep_hpc):
                rank_zero_info(f"deleted {path}, superseded by {newest}")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def _is_finite(loss: Tensor | float) -> bool:
    if isinstance(loss, Tensor):
        return bool(torch.isfinite(loss.detach()).all())
    return math.isfinite(loss)


def _describe(loss: Tensor | float) -> str:
    value = loss.detach().float().mean().item() if isinstance(loss, Tensor) else float(loss)
    return str(value)


__all__ = ["CheckpointOnSignal", "NonFiniteLossError", "NonFiniteLossGuard"]
