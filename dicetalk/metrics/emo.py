"""Emo-Score: share of frames that EMO-AffectNet classifies as the target MEAD emotion."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from dicetalk.metrics.backbones import EmoAffectNetResNet50, Frozen, injected, load_state_dict_into
from dicetalk.metrics.backbones.emonet import BGR_MEAN, CLASSES, INPUT_SIZE
from dicetalk.metrics.preprocess import (as_videos, crop_resize, fixed_boxes, landmark_boxes,
                                         resize_nearest_pil)

# MEAD emotion -> EMO-AffectNet class id (0 Neutral, 1 Happiness, 2 Sadness, 3 Surprise, 4 Fear,
# 5 Disgust, 6 Anger). The classifier has no contempt class, so contempt frames cannot be scored.
MEAD_TO_CLASS: dict[str, int | None] = {
    "angry": 6, "contempt": None, "disgusted": 5, "fear": 4, "happy": 1, "neutral": 0, "sad": 2,
    "surprised": 3,
}
SCORED = tuple(name for name, cls in MEAD_TO_CLASS.items() if cls is not None)
_TARGET = torch.tensor([MEAD_TO_CLASS[name] for name in SCORED])
EMO_SCORE_SET = ("neutral", "happy", "surprised", "angry")  # the paper's Emo-Score columns
NON_NEUTRAL = ("happy", "surprised", "angry")


def emonet(path: str | os.PathLike | None = None, download: bool = False) -> Frozen:
    """EMO-AffectNet ResNet-50 from the registry's ``emo-affectnet`` weights (checksum-verified)."""
    net = EmoAffectNetResNet50()
    return Frozen(net, load_state_dict_into(net, "emo-affectnet", path, download))


def emonet_input(faces: Tensor) -> Tensor:
    """uint8 RGB faces (N, 3, 224, 224) -> float BGR minus the VGGFace2 means (no /255, no std)."""
    mean = torch.tensor(BGR_MEAN, device=faces.device).view(1, 3, 1, 1)
    return faces.flip(1).float() - mean


def _mean(values: list[Tensor]) -> Tensor:
    return torch.stack(values).mean()  # NaN if any member is NaN: no silent averaging over fewer emotions


class EmoScore(Metric):
    """Per-emotion frame accuracy of EMO-AffectNet against the target emotion, and the paper's summaries.

    ``update(videos, emotions, landmarks=None)``: RGB videos uint8 (B, T, 3, H, W) (or float in [0, 1],
    or a sequence of (T, 3, H, W)) and one MEAD emotion name per video. Faces are cropped with the
    fixed ``box`` (whole frame by default, for our aligned outputs) or, given landmarks (T, K, 2) in
    pixels, the landmark min/max box clipped to the frame (as the MediaPipe crop of the reference);
    then PIL-nearest resized to 224, BGR, minus the VGGFace2 means. ``update_predictions`` takes class
    ids (B, T) directly. Contempt frames are counted nowhere and reported as ``unscored_frames``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, backbone: nn.Module | None = None, weights_path: str | os.PathLike | None = None,
                 download: bool = False, box: Sequence[float] = (0.0, 0.0, 1.0, 1.0),
                 image_size: int = INPUT_SIZE, batch_size: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone = emonet(weights_path, download) if backbone is None else injected(backbone)
        self.box = tuple(box)
        self.image_size = image_size
        self.batch_size = batch_size
        n_scored, n_classes = len(SCORED), len(CLASSES)
        # confusion[e, c]: frames of target emotion SCORED[e] classified as c
        self.add_state("confusion", torch.zeros(n_scored, n_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("video_hits", torch.zeros(n_scored, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("videos", torch.zeros(n_scored, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("unscored_frames", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    @property
    def weights_info(self) -> dict[str, Any]:
        """Which backbone weights produced the predictions (record it with the result)."""
        return self.backbone.info

    @staticmethod
    def _check_emotions(emotions: Sequence[str], n: int) -> None:
        if isinstance(emotions, str) or len(emotions) != n:
            raise ValueError(f"EmoScore: need one emotion name per video ({n}), got {emotions!r}")
        unknown = [e for e in emotions if e not in MEAD_TO_CLASS]
        if unknown:
            raise ValueError(f"EmoScore: unknown emotions {unknown}; known: {', '.join(MEAD_TO_CLASS)}")

    def predict(self, video: Tensor, landmarks: np.ndarray | Tensor | None = None) -> Tensor:
        """Class id per frame (T,) of one uint8 RGB video (T, 3, H, W)."""
        t, _, height, width = video.shape
        boxes = fixed_boxes(t, height, width, self.box) if landmarks is None else landmark_boxes(
            landmarks, height, width)
        if boxes.shape[0] != t:
            raise ValueError(f"EmoScore: {boxes.shape[0]} landmark frames for a video of {t} frames")
        faces = crop_resize(video, boxes, self.image_size, resize_nearest_pil)
        chunks = faces.split(self.batch_size)
        logits = [self.backbone(emonet_input(chunk.to(self.device))) for chunk in chunks]
        return torch.cat(logits).argmax(1)

    def update(self, videos: Tensor | Sequence[Tensor] | None, emotions: Sequence[str],
               landmarks: Sequence[np.ndarray | Tensor | None] | None = None,
               predictions: Tensor | Sequence[Tensor] | None = None) -> None:
        """Classify every frame of each video and count it against the video's target emotion.

        With ``predictions`` (class ids per frame) instead of ``videos``, count those directly; this
        path goes through ``update`` so torchmetrics' caching and sync bookkeeping see it.
        """
        if (videos is None) == (predictions is None):
            raise ValueError("EmoScore.update: pass either videos or predictions")
        if predictions is None:
            videos = as_videos(videos, "EmoScore videos")
            self._check_emotions(emotions, len(videos))
            landmarks = [None] * len(videos) if landmarks is None else list(landmarks)
            if len(landmarks) != len(videos):
                raise ValueError(f"EmoScore: {len(landmarks)} landmark arrays for {len(videos)} videos")
            # Unscorable videos skip the classifier: their frames are only counted as unscored.
            predictions = [self.predict(video, marks) if MEAD_TO_CLASS[emotion] is not None
                           else torch.zeros(video.shape[0], dtype=torch.long)
                           for video, emotion, marks in zip(videos, emotions, landmarks)]
        self._count(predictions, emotions)

    def update_predictions(self, preds: Tensor | Sequence[Tensor], emotions: Sequence[str]) -> None:
        """Count class ids (B, T) (or a sequence of (T,)) in EMO-AffectNet order against ``emotions``."""
        self.update(None, emotions, predictions=preds)

    def _count(self, preds: Tensor | Sequence[Tensor], emotions: Sequence[str]) -> None:
        rows = list(preds.unbind(0)) if isinstance(preds, Tensor) and preds.ndim == 2 else list(preds)
        self._check_emotions(emotions, len(rows))
        for row, emotion in zip(rows, emotions):
            row = torch.as_tensor(row, device=self.confusion.device).long().flatten()
            if row.numel() and (row.min() < 0 or row.max() >= len(CLASSES)):
                raise ValueError(f"EmoScore: class ids must be in [0, {len(CLASSES)}), "
                                 f"got {row.tolist()[:10]}")
            if MEAD_TO_CLASS[emotion] is None:
                self.unscored_frames += row.numel()
                continue
            if row.numel() == 0:
                continue
            e = SCORED.index(emotion)
            counts = torch.bincount(row, minlength=len(CLASSES))
            self.confusion[e] += counts
            # Video-level variant: majority vote (ties go to the lower class id).
            self.video_hits[e] += int(counts.argmax() == MEAD_TO_CLASS[emotion])
            self.videos[e] += 1

    def compute(self) -> dict[str, Tensor]:
        """Per-emotion scores (NaN without frames), ``emo_score``, ``non_neutral``, the video-level
        ``video_emo_score``, and the frame counts ``frames`` / ``unscored_frames``."""
        totals = self.confusion.sum(1).double()
        hits = self.confusion.gather(1, _TARGET.to(self.confusion.device)[:, None]).squeeze(1).double()
        per_emotion = hits / totals  # 0/0 -> NaN for emotions never seen
        video_acc = self.video_hits.double() / self.videos.double()
        out = {name: per_emotion[i] for i, name in enumerate(SCORED)}
        out["emo_score"] = _mean([out[name] for name in EMO_SCORE_SET])
        out["non_neutral"] = _mean([out[name] for name in NON_NEUTRAL])
        out["video_emo_score"] = _mean([video_acc[SCORED.index(name)] for name in EMO_SCORE_SET])
        out["frames"] = self.confusion.sum()
        out["unscored_frames"] = self.unscored_frames.clone()
        return out
