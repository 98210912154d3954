"""Learning check (short CI version of the issue's 200-step run). The tiny talker overfits one batch
through ``Trainer(overfit_batches=1)``: its loss falls and its emotion classifier learns the batch's labels.

Generalisation to unseen clips needs more steps than CI can afford; `make demo` and the README show it on
the synthetic chain. (A 60-step run on the fixture store moved held-in accuracy by one or two samples either
way: too little signal for a test.)
"""
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
def test_tiny_talker_overfits_one_batch(tmp_path):
    torch.set_num_threads(1)
    store = make_talker_store(tmp_path / "store", mead_ids=("M001", "W001"))
    ckpt = make_embedder_ckpt(tmp_path / "embedder.ckpt")
    pl.seed_everything(0)
    module = TalkerModule(embedder_ckpt=str(ckpt), talker={"num_classes": NUM_CLASSES}, lambda_cls=1.0, lr=1e-3,
                          warmup_steps=5)
    dm = TalkerDataModule(**tiny_data_args(store, batch_size=4))
    dm.setup("fit")
    ce_before = classifier_ce(module, dm)
    module.train()
    record = Record()
    trainer = pl.Trainer(default_root_dir=tmp_path, max_steps=STEPS, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         overfit_batches=1, check_val_every_n_epoch=STEPS + 1, num_sanity_val_steps=0,
                         use_distributed_sampler=False, gradient_clip_val=1.0, callbacks=[record])
    trainer.fit(module, dm)
    losses = np.array(record.losses)
    ce_after = classifier_ce(module, dm)
    print(f"loss first 20 {losses[:20].mean():.4f} last 20 {losses[-20:].mean():.4f}; "
          f"classifier CE on the batch {ce_before:.4f} -> {ce_after:.4f} (chance {np.log(NUM_CLASSES):.4f})")
    assert len(losses) == STEPS and np.isfinite(losses).all()
    assert losses[-20:].mean() < 0.9 * losses[:20].mean()
    assert ce_before > 0.9 * np.log(NUM_CLASSES) and ce_after < 0.5 * ce_before


@torch.no_grad()
def classifier_ce(module: TalkerModule, dm: TalkerDataModule) -> float:
    """Cross-entropy of the classifier (eval mode, no condition dropout, fixed noise) on the labelled
    samples of the first training batch: the one ``overfit_batches=1`` trains on."""
    module.eval()
    batch = next(iter(dm.train_dataloader()))
    inputs = module.conditions(batch, train=False)
    clean, labels = inputs.pop("clean"), inputs["labels"]
    out = diffusion_step(module.talker, clean, weights=module.loss_weights, generator=torch.Generator().manual_seed(0),
                         **inputs).output
    module.talker.clear_context()
    labelled = labels >= 0
    return float(torch.nn.functional.cross_entropy(out.logits[labelled].float(), labels[labelled]))
