"""FVD on 16-frame clips: I3D Kinetics-400 logits (400-d) of the StyleGAN-V TorchScript port."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dicetalk.metrics.backbones import Frozen, injected, load_torchscript
from dicetalk.metrics.fid import feature_count
from dicetalk.metrics.frechet import FrechetMetric
from dicetalk.metrics.preprocess import as_videos, resize_bilinear_tf1

I3D_SIZE = 224
I3D_DIM = 400


class I3DLogits(nn.Module):
    """uint8 RGB clips (N, T, 3, H, W) -> (N, 400) pre-softmax logits averaged over time and space.

    Preprocessing as the original TF FVD: each frame resized straight to 224x224 with TF1 bilinear (no
    aspect-preserving crop, no antialias), then 2 x / 255 - 1; the TorchScript's own rescale/resize
    are switched off.
    """

    num_features = I3D_DIM

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, clips: Tensor) -> Tensor:
        n, t = clips.shape[:2]
        x = resize_bilinear_tf1(clips.flatten(0, 1), (I3D_SIZE, I3D_SIZE)) * (2 / 255) - 1
        x = x.view(n, t, 3, I3D_SIZE, I3D_SIZE).transpose(1, 2).contiguous()  # (N, 3, T, H, W)
        return self.net(x, rescale=False, resize=False, return_features=True)


def i3d(path: str | os.PathLike | None = None, download: bool = False) -> Frozen:
    """The default FVD extractor: registry ``i3d-torchscript`` (checksum-verified) with preprocessing."""
    net, info = load_torchscript("i3d-torchscript", path, download)
    return Frozen(I3DLogits(net), info)


class FVD(FrechetMetric):
    """Frechet Video Distance between real and generated videos, on consecutive 16-frame clips.

    ``update(videos, real)`` takes RGB videos (B, T, 3, H, W) or a sequence of (T, 3, H, W), uint8 or
    float in [0, 1]. Each video gives floor(T / clip_len) non-overlapping clips from its first frame;
    a video shorter than ``clip_len`` is an error. ``feature_extractor`` (uint8 (N, clip_len, 3, H, W)
    -> (N, d)) replaces I3D. Report the clip counts ``real_n`` / ``fake_n`` with the value.
    """

    def __init__(self, feature_extractor: nn.Module | None = None, num_features: int | None = None,
                 clip_len: int = 16, weights_path: str | os.PathLike | None = None, download: bool = False,
                 batch_size: int = 8, **kwargs: Any) -> None:
        extractor = i3d(weights_path, download) if feature_extractor is None else injected(feature_extractor)
        super().__init__(feature_count(extractor.net, num_features), **kwargs)
        self.extractor = extractor
        self.clip_len = clip_len
        self.batch_size = batch_size

    @property
    def weights_info(self) -> dict[str, Any]:
        """Which backbone weights produced the features (record it with the result)."""
        return self.extractor.info

    def update(self, videos: Tensor | Sequence[Tensor], real: bool) -> None:
        """Add every full clip of each video to the real or generated statistics."""
        clips = []
        for i, video in enumerate(as_videos(videos, "FVD input")):
            n_clips = video.shape[0] // self.clip_len
            if n_clips == 0:
                raise ValueError(f"FVD input[{i}]: {video.shape[0]} frames, need at least {self.clip_len}")
            clips.append(video[: n_clips * self.clip_len].unflatten(0, (n_clips, self.clip_len)))
        for chunk in torch.cat(clips).split(self.batch_size):
            self._add_features(self.extractor(chunk.to(self.device)).flatten(1), real)
