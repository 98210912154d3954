"""A tiny deterministic LightningModule / DataModule for the guard and resume tests (CPU, a second a run).

Also a script: ``python tests/toy_training.py ROOT --max-steps N [--signal-at K --signal SIGTERM]`` trains in
ROOT (resuming from the newest checkpoint there, as ``dicetalk fit --ckpt_path auto`` does), sends itself
the signal when training step K starts, and saves the final weights to ROOT/final.pt. With ``--ddp`` it
trains in two gloo processes instead (see train_ddp).
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Sampler, TensorDataset

from dicetalk.lightning.callbacks import CheckpointOnSignal, NonFiniteLossGuard
from dicetalk.resume import batches_done_in_epoch, resolve_ckpt_path


class ToyModule(pl.LightningModule):
    """A 2-layer MLP regressor trained with AdamW (optimizer state matters for exact resume)."""

    def __init__(self, nan_at_batches: tuple[int, ...] = (), signal_at_step: int | None = None,
                 signal_name: str = "SIGTERM", nan_value: float = float("nan"), nan_rank: int | None = None,
                 signal_rank: int | None = None):
        """NaN loss at the given training_step calls and a signal at a global step (on one rank if given)."""
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.seen_steps: list[int] = []  # global step at each training_step call
        self.seen_x: list[float] = []  # a fingerprint of each batch

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.seen_steps.append(self.global_step)
        self.seen_x.append(round(float(x.sum()), 4))
        h = self.hparams
        if self.global_step == h.signal_at_step and h.signal_rank in (None, self.global_rank):
            os.kill(os.getpid(), signal.Signals[h.signal_name])
        loss = nn.functional.mse_loss(self.net(x), y)
        if len(self.seen_steps) - 1 in h.nan_at_batches and h.nan_rank in (None, self.global_rank):
            loss = loss * h.nan_value
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=0.05)


class EpochPermutation(Sampler[int]):
    """A permutation seeded by (seed, epoch); Lightning calls ``set_epoch`` at every epoch start."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        yield from torch.randperm(self.n, generator=generator).tolist()

    def __len__(self) -> int:
        return self.n


class SkippingBatchSampler(BatchSampler):
    """Batches of ``sampler``; the first pass skips ``skip`` batches (those a resumed run already trained on).

    ``__len__`` stays the full epoch: Lightning restores its batch counter at ``skip`` and ends the epoch
    where an uninterrupted run does.
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, skip: int = 0):
        super().__init__(sampler, batch_size, drop_last=False)
        self.skip = skip

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        yield from itertools.islice(super().__iter__(), skip, None)


class ToyData(pl.LightningDataModule):
    """40 fixed random (x, y) pairs, batches of 8 (5 batches an epoch)."""

    def __init__(self, n: int = 40, batch_size: int = 8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(1234)
        x = torch.randn(n, 4, generator=g)
        self.dataset = TensorDataset(x, x.sum(1, keepdim=True).sin())
        self.batch_size, self.seed = batch_size, seed

    def train_dataloader(self) -> DataLoader:
        sampler = EpochPermutation(len(self.dataset), self.seed)
        skip = batches_done_in_epoch(self.trainer)
        return DataLoader(self.dataset, batch_sampler=SkippingBatchSampler(sampler, self.batch_size, skip))


def make_trainer(root: Path, max_steps: int, guard: NonFiniteLossGuard | None = None,
                 every_n_steps: int | None = None) -> pl.Trainer:
    """A CPU trainer writing to ``root`` (last.ckpt in root/checkpoints every ``every_n_steps``)."""
    callbacks: list[pl.Callback] = [CheckpointOnSignal()]
    callbacks += [guard] if guard is not None else []
    callbacks += [pl.callbacks.ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, save_top_k=0,
                                               every_n_train_steps=every_n_steps)] if every_n_steps else []
    return pl.Trainer(default_root_dir=root, max_steps=max_steps, accelerator="cpu", devices=1,
                      deterministic=True, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=bool(every_n_steps), callbacks=callbacks, num_sanity_val_steps=0)


def train(root: Path, max_steps: int, signal_at: int | None = None, signal_name: str = "SIGTERM",
          every_n_steps: int | None = None) -> ToyModule:
    """Seeded toy run in ``root``, resumed from the newest checkpoint there if any."""
    pl.seed_everything(0, workers=True)
    model = ToyModule(signal_at_step=signal_at, signal_name=signal_name)
    trainer = make_trainer(root, max_steps, every_n_steps=every_n_steps)
    trainer.fit(model, ToyData(), ckpt_path=resolve_ckpt_path(trainer, "auto"))
    return model


class DumpRankState(pl.Callback):
    """Each rank writes its weights and the global steps it trained at to ROOT/rank<r>.pt when fit ends."""

    def _dump(self, trainer: pl.Trainer, module: ToyModule) -> None:
        torch.save({"state_dict": module.state_dict(), "seen_steps": module.seen_steps},
                   Path(trainer.default_root_dir) / f"rank{trainer.global_rank}.pt")

    def on_train_end(self, trainer: pl.Trainer, pl_module: ToyModule) -> None:
        self._dump(trainer, pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: ToyModule, exception: BaseException) -> None:
        self._dump(trainer, pl_module)


def train_ddp(root: Path, max_steps: int, nan_at: int, nan_rank: int, signal_at: int, signal_rank: int) -> None:
    """Two CPU processes (gloo): a NaN loss on one rank (skip mode) and SIGTERM to one rank."""
    pl.seed_everything(0, workers=True)
    model = ToyModule((nan_at,), signal_at, "SIGTERM", nan_rank=nan_rank, signal_rank=signal_rank)
    trainer = pl.Trainer(default_root_dir=root, max_steps=max_steps, accelerator="cpu", devices=2, strategy="ddp",
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, use_distributed_sampler=False,
                         callbacks=[NonFiniteLossGuard("skip"), CheckpointOnSignal(), DumpRankState()])
    trainer.fit(model, ToyData())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--signal-at", type=int)
    parser.add_argument("--signal", default="SIGTERM")
    parser.add_argument("--every-n-steps", type=int)
    parser.add_argument("--ddp", nargs=4, type=int, metavar=("NAN_AT", "NAN_RANK", "SIGNAL_AT", "SIGNAL_RANK"),
                        help="2-process DDP run with a NaN loss and SIGTERM on one rank each")
    args = parser.parse_args(argv)
    if args.ddp:
        train_ddp(args.root, args.max_steps, *args.ddp)
        return 0
    model = train(args.root, args.max_steps, args.signal_at, args.signal, args.every_n_steps)
    torch.save({"state_dict": model.state_dict(), "global_step": model.global_step}, args.root / "final.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
