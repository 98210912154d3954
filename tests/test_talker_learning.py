"""Learning check (short CI version of the issue's 200-step run): the tiny talker trained on a synthetic
store lowers its loss, and its emotion classifier beats chance on the training clips."""
from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from dicetalk.data.talker_data import TalkerDataModule
from dicetalk.lightning.talker_module import TalkerModule
from dicetalk.models.talker.step import diffusion_step
from talker_fixtures import make_embedder_ckpt, make_talker_store, tiny_data_args

STEPS = 60
NUM_CLASSES = 8


class Record(pl.Callback):
    """The loss of every step."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


@pytest.mark.slow
def test_tiny_talker_learns(tmp_path):
    torch.set_num_threads(1)
    store = make_talker_store(tmp_path / "store", mead_ids=("M001", "W001"))
    ckpt = make_embedder_ckpt(tmp_path / "embedder.ckpt")
    pl.seed_everything(0)
    module = TalkerModule(embedder_ckpt=str(ckpt), talker={"num_classes": NUM_CLASSES}, lambda_cls=1.0, lr=1e-3,
                          warmup_steps=5)
    record = Record()
    dm = TalkerDataModule(**tiny_data_args(store, batch_size=4))
    trainer = pl.Trainer(default_root_dir=tmp_path, max_steps=STEPS, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False,
                         gradient_clip_val=1.0, callbacks=[record], log_every_n_steps=1)
    trainer.fit(module, dm)
    losses = np.array(record.losses)
    accuracy = classifier_accuracy(module, dm)
    print(f"loss first 20 {losses[:20].mean():.4f} last 20 {losses[-20:].mean():.4f}; accuracy {accuracy:.3f}")
    assert len(losses) == STEPS and np.isfinite(losses).all()
    assert losses[-20:].mean() < losses[:20].mean()
    assert accuracy > 1 / NUM_CLASSES


@torch.no_grad()
def classifier_accuracy(module: TalkerModule, dm: TalkerDataModule, batches: int = 12) -> float:
    """Top-1 accuracy of the classifier (eval mode, no condition dropout) on labelled training samples."""
    module.eval()
    hits, total = 0, 0
    for n, batch in zip(range(batches), dm.train_dataloader()):
        inputs = module.conditions(batch, train=False)
        clean, labels = inputs.pop("clean"), inputs["labels"]
        generator = torch.Generator().manual_seed(n)
        out = diffusion_step(module.talker, clean, weights=module.loss_weights, generator=generator, **inputs).output
        module.talker.clear_context()
        labelled = labels >= 0
        hits += int((out.logits[labelled].argmax(-1) == labels[labelled]).sum())
        total += int(labelled.sum())
    return hits / total
