"""Base class for batch samplers whose order changes with the epoch."""

from __future__ import annotations

from typing import Any, TypeVar

from torch.utils.data import Sampler

from dicetalk.resume import batches_done_in_epoch

T = TypeVar("T")


class EpochBatchSampler(Sampler[T]):
    """A batch sampler that Lightning tells the epoch.

    At every epoch start Lightning calls ``set_epoch`` on ``dataloader.sampler`` and on
    ``dataloader.batch_sampler.sampler``, never on the batch sampler itself. Without the ``sampler``
    attribute below, every epoch would replay epoch 0's order (and a resumed run would too).
    ``replay`` keeps epoch 0's order on purpose: ``overfit_batches`` needs the same batches every epoch, and
    Lightning only un-shuffles plain samplers. ``skip`` batches are left out of the next pass only: a run
    resumed mid-epoch continues with the batches it had not seen (subclasses honour it via
    :meth:`take_skip`, and their order must depend on the seed and epoch alone).
    """

    epoch: int = 0
    replay: bool = False
    skip: int = 0

    @property
    def sampler(self) -> EpochBatchSampler[T]:
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = 0 if self.replay else epoch

    def take_skip(self) -> int:
        """The batches to skip on this pass (then 0 for later passes)."""
        skip, self.skip = self.skip, 0
        return skip

    def follow(self, trainer: Any) -> EpochBatchSampler[T]:
        """Follow ``trainer`` (None outside fit): skip the batches of the current epoch it already trained,
        and replay epoch 0 when it overfits a few batches. Returns self."""
        self.replay = bool(getattr(trainer, "overfit_batches", 0))
        self.skip = batches_done_in_epoch(trainer)
        return self
