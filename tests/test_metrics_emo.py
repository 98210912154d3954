"""Emo-Score: the paper's arithmetic, class mapping, contempt handling and the frame pipeline."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from dicetalk.metrics import EmoScore
from dicetalk.metrics.backbones.emonet import BGR_MEAN

NEUTRAL, HAPPINESS, SADNESS, SURPRISE, FEAR, DISGUST, ANGER = range(7)


def preds(n_frames, n_hits, target, miss):
    return torch.tensor([target] * n_hits + [miss] * (n_frames - n_hits))


def test_paper_arithmetic():
    """Per-emotion 0.7447 neutral and 0.0448 for the others give Emo-Score 0.2198 (DICE-Talk tables)."""
    metric = EmoScore(backbone=nn.Identity())
    metric.update_predictions(preds(10000, 7447, NEUTRAL, SADNESS)[None], ["neutral"])
    for emotion, cls in [("happy", HAPPINESS), ("surprised", SURPRISE), ("angry", ANGER)]:
        metric.update_predictions(preds(10000, 448, cls, NEUTRAL)[None], [emotion])
    out = metric.compute()
    assert float(out["neutral"]) == pytest.approx(0.7447)
    assert float(out["happy"]) == float(out["surprised"]) == float(out["angry"]) == pytest.approx(0.0448)
    assert float(out["non_neutral"]) == pytest.approx(0.0448)
    assert round(float(out["emo_score"]), 4) == 0.2198
    assert math.isnan(float(out["sad"]))  # never seen: NaN, not 0


def test_class_mapping_and_contempt_counted_nowhere():
    metric = EmoScore(backbone=nn.Identity())
    mapping = {"angry": ANGER, "disgusted": DISGUST, "fear": FEAR, "happy": HAPPINESS, "neutral": NEUTRAL,
               "sad": SADNESS, "surprised": SURPRISE}
    for emotion, cls in mapping.items():
        metric.update_predictions([torch.tensor([cls, cls, (cls + 1) % 7, cls])], [emotion])
    first = metric.compute()
    metric.update_predictions([torch.tensor([0, 1, 2, 3, 4, 5])], ["contempt"])
    out = metric.compute()  # recomputed, not torchmetrics' cached value
    assert int(first["unscored_frames"]) == 0
    for emotion in mapping:
        assert float(out[emotion]) == 0.75, emotion
    assert "contempt" not in out
    assert int(out["unscored_frames"]) == 6 and int(out["frames"]) == 28
    assert float(out["video_emo_score"]) == 1.0  # every video's majority is its target
    with pytest.raises(ValueError, match="unknown emotions"):
        metric.update_predictions([torch.tensor([0])], ["Angry"])
    with pytest.raises(ValueError, match="class ids"):
        metric.update_predictions([torch.tensor([7])], ["angry"])


def test_video_level_majority_vote():
    metric = EmoScore(backbone=nn.Identity())
    metric.update_predictions(torch.tensor([[1, 1, 0], [0, 0, 1]]), ["happy", "happy"])
    out = metric.compute()
    assert float(out["happy"]) == pytest.approx(0.5)
    # Frame level 3/6, video level 1/2; Emo-Score needs all four emotions, so it is NaN here.
    assert math.isnan(float(out["video_emo_score"]))
    assert metric.video_hits.tolist()[3] == 1 and metric.videos.tolist()[3] == 2


class ColourOracle(nn.Module):
    """Logits from the input's mean BGR, to check channel order and mean subtraction end to end."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        blue_minus_red = x[:, 0].mean((1, 2)) - x[:, 2].mean((1, 2))
        logits = torch.zeros(len(x), 7)
        logits[:, HAPPINESS] = blue_minus_red  # bluish faces are "happy", reddish ones "anger"
        logits[:, ANGER] = -blue_minus_red
        return logits


def test_frame_pipeline_bgr_means_and_crop():
    video = torch.zeros(2, 6, 3, 32, 32, dtype=torch.uint8)
    video[0, :, 2] = 200  # RGB blue -> BGR channel 0
    video[1, :, 0] = 200  # RGB red
    oracle = ColourOracle()
    metric = EmoScore(backbone=oracle, image_size=8, batch_size=4)
    metric.update(video, ["happy", "angry"])
    out = metric.compute()
    assert float(out["happy"]) == 1.0 and float(out["angry"]) == 1.0
    first = oracle.seen[0]
    assert first.shape == (4, 3, 8, 8)
    expected = torch.tensor([200.0, 0.0, 0.0]) - torch.tensor(BGR_MEAN)
    torch.testing.assert_close(first[0, :, 0, 0], expected)
    # A landmark crop selects the blue quarter of a half-blue frame.
    half = torch.zeros(1, 3, 3, 32, 32, dtype=torch.uint8)
    half[..., 2, :16, :16] = 200
    marks = [np.tile(np.array([[2.0, 2.0], [14.0, 14.0]]), (3, 1, 1))]
    metric.reset()
    metric.update(half, ["happy"], landmarks=marks)
    assert float(metric.compute()["happy"]) == 1.0


def test_contempt_videos_skip_the_classifier():
    oracle = ColourOracle()
    metric = EmoScore(backbone=oracle, image_size=8)
    metric.update(torch.zeros(1, 5, 3, 16, 16, dtype=torch.uint8), ["contempt"])
    assert oracle.seen == [] and int(metric.unscored_frames) == 5
