"""A callback for tests/test_ddp_training.py, named by class path in the configs it writes (``ddp_record.RecordRank``:
the test puts tests/ on PYTHONPATH of the ``dicetalk fit`` subprocess and of the ranks Lightning launches).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import torch


class RecordRank(pl.Callback):
    """Each rank records what its training batches hold and, when fit ends, its weights.

    ROOT/rank<r>.json: per training batch, the global step, the positive keys (``key``, stage 1) or the
    ids and datasets of the clips (``clip_index``, stage 2). ROOT/rank<r>.pt: the module's state_dict at the start
    and at the end of fit, its EMA if it keeps one (the talker), and the final global step.
    """

    def __init__(self, root: str):
        self.root = Path(root)
        self.batches: list[dict] = []
        self.initial: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initial = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: dict,
                             batch_idx: int) -> None:
        row: dict = {"step": trainer.global_step}
        if "key" in batch:
            row["keys"] = batch["key"].tolist()
        if "clip_index" in batch:
            clips = [trainer.datamodule.train_set.clips[i] for i in batch["clip_index"].tolist()]
            row["clips"] = [c.clip_id for c in clips]
            row["datasets"] = [c.dataset for c in clips]
        self.batches.append(row)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rank = trainer.global_rank
        (self.root / f"rank{rank}.json").write_text(json.dumps(self.batches))
        ema = getattr(pl_module, "ema", None)
        torch.save({"initial": self.initial, "final": pl_module.state_dict(), "global_step": trainer.global_step,
                    "ema": {k: v.clone() for k, v in ema.items()} if ema else None}, self.root / f"rank{rank}.pt")
