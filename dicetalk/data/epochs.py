"""Base class for batch samplers whose order changes with the epoch."""

from __future__ import annotations

from typing import Any, TypeVar

from torch.utils.data import Sampler

T = TypeVar("T")


class EpochBatchSampler(Sampler[T]):
    """A batch sampler that Lightning tells the epoch.

    At every epoch start Lightning calls ``set_epoch`` on ``dataloader.sampler`` and on
    ``dataloader.batch_sampler.sampler``, never on the batch sampler itself. Without the ``sampler``
    attribute below, every epoch would replay epoch 0's order (and a resumed run would too).
    ``replay`` keeps epoch 0's order on purpose: ``overfit_batches`` needs the same batches every epoch, and
    Lightning only un-shuffles plain samplers.
    """

    epoch: int = 0
    replay: bool = False

    @property
    def sampler(self) -> EpochBatchSampler[T]:
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = 0 if self.replay else epoch

    def follow(self, trainer: Any) -> EpochBatchSampler[T]:
        """Replay epoch 0 when ``trainer`` (None outside fit) overfits a few batches; returns self."""
        self.replay = bool(getattr(trainer, "overfit_batches", 0))
        return self
