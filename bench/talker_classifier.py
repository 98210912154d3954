"""Emotion-classifier figures of talker checkpoints: cross-entropy and top-1 accuracy on labelled clips.

    python bench/talker_classifier.py --config configs/tiny/talker.yaml \
        demo/talker/checkpoints/step100.ckpt demo/talker/checkpoints/step200.ckpt [--split val test] [--batches 40]

The first row is the run's initial weights (the config's model built with its seed). Every row scores the
same samples with the same noise (eval mode, no condition dropout, the EMA weights when the checkpoint has
them), so the rows are directly comparable. Chance: accuracy 1 / classes, cross-entropy ln(classes).
"""

from __future__ import annotations

import argparse
import math

import lightning.pytorch as pl
import torch

from dicetalk.data.talker_data import TalkerDataModule
from dicetalk.lightning.talker_module import TalkerModule
from dicetalk.models.talker.step import diffusion_step
from dicetalk.preflight import read_yaml


@torch.no_grad()
def scores(module: TalkerModule, batches: list[dict]) -> tuple[float, float, int]:
    """(cross-entropy, accuracy, n) over the labelled samples of ``batches``."""
    module.eval()
    ce, hits, n = 0.0, 0, 0
    with module.ema_weights():
        for k, batch in enumerate(batches):
            inputs = module.conditions(batch, train=False)
            clean, labels = inputs.pop("clean"), inputs["labels"]
            out = diffusion_step(module.talker, clean, weights=module.loss_weights,
                                 generator=torch.Generator().manual_seed(k), **inputs).output
            module.talker.clear_context()
            keep = labels >= 0
            ce += float(torch.nn.functional.cross_entropy(out.logits[keep].float(), labels[keep], reduction="sum"))
            hits += int((out.logits[keep].argmax(-1) == labels[keep]).sum())
            n += int(keep.sum())
    return ce / n, hits / n, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the talker fit config (model and data sections)")
    parser.add_argument("ckpts", nargs="+", help="talker checkpoints to score")
    parser.add_argument("--split", nargs="+", default=["train"],
                        help="store splits to score (train: held-in clips; they need MEAD and HDTF clips)")
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    config = read_yaml(args.config)
    data_args = dict(config["data"]["init_args"], train_splits=args.split)
    dm = TalkerDataModule(**data_args)
    dm.setup("fit")
    batches = [b for _, b in zip(range(args.batches), dm.train_dataloader())]  # epoch 0's order: fixed
    pl.seed_everything(config.get("seed_everything", 0))
    rows = [("initial weights", TalkerModule(**config["model"]["init_args"]))]
    rows += [(path, TalkerModule.load_from_checkpoint(path, map_location="cpu")) for path in args.ckpts]
    classes = rows[0][1].talker.config.num_classes
    print(f"splits {' '.join(args.split)}; chance: accuracy {1 / classes:.3f}, cross-entropy {math.log(classes):.3f}")
    for name, module in rows:
        ce, acc, n = scores(module, batches)
        print(f"{name:<45} cross-entropy {ce:.3f}  accuracy {acc:.3f}  ({n} labelled samples)")


if __name__ == "__main__":
    main()
