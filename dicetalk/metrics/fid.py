"""FID on frames: FID-Inception pool3 features (2048-d) with the TF graph's resize and scaling."""

from __future__ import annotations

import os
from typing import Any

from torch import Tensor, nn

from dicetalk.metrics.backbones import FIDInceptionV3, Frozen, injected, load_state_dict_into
from dicetalk.metrics.backbones.inception import INPUT_SIZE, POOL3_DIM
from dicetalk.metrics.frechet import FrechetMetric
from dicetalk.metrics.preprocess import as_frames, resize_bilinear_tf1


class InceptionPool3(nn.Module):
    """uint8 RGB frames (N, 3, H, W) -> (N, 2048), preprocessed as torch-fidelity / the TF graph.

    TF1 bilinear resize to 299 (no antialias; torchmetrics >= 1.8 antialiases by default, which moves
    FID for non-299 inputs), then (x - 128) / 128.
    """

    num_features = POOL3_DIM

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, frames: Tensor) -> Tensor:
        x = resize_bilinear_tf1(frames, (INPUT_SIZE, INPUT_SIZE))
        return self.net((x - 128) / 128)


def fid_inception(path: str | os.PathLike | None = None, download: bool = False) -> Frozen:
    """The default FID extractor with the registry's ``fid-inception`` weights (checksum-verified)."""
    net = FIDInceptionV3()
    info = load_state_dict_into(net, "fid-inception", path, download)
    return Frozen(InceptionPool3(net), info)


def feature_count(extractor: nn.Module, num_features: int | None) -> int:
    """Feature size of an injected extractor: ``num_features`` or its ``num_features`` attribute."""
    count = num_features if num_features is not None else getattr(extractor, "num_features", None)
    if count is None:
        raise ValueError(f"pass num_features= for the feature extractor {type(extractor).__name__}")
    return int(count)


class FID(FrechetMetric):
    """Frechet Inception Distance between real and generated frames.

    ``update(x, real)`` takes RGB frames (N, 3, H, W) or videos (B, T, 3, H, W), uint8 or float in
    [0, 1] (rounded to uint8). ``feature_extractor`` (any module: uint8 (N, 3, H, W) -> (N, d)) replaces
    FID-Inception, which otherwise loads from ``weights_path`` or the registry. FID falls with the number
    of frames N, so always report ``real_n`` / ``fake_n`` with it.
    """

    def __init__(self, feature_extractor: nn.Module | None = None, num_features: int | None = None,
                 weights_path: str | os.PathLike | None = None, download: bool = False,
                 batch_size: int = 64, **kwargs: Any) -> None:
        if feature_extractor is None:
            extractor = fid_inception(weights_path, download)
        else:
            extractor = injected(feature_extractor)
        super().__init__(feature_count(extractor.net, num_features), **kwargs)
        self.extractor = extractor
        self.batch_size = batch_size

    @property
    def weights_info(self) -> dict[str, Any]:
        """Which backbone weights produced the features (record it with the result)."""
        return self.extractor.info

    def update(self, x: Tensor, real: bool) -> None:
        """Add frames or videos to the real (``real=True``) or generated statistics."""
        frames = as_frames(x, "FID input")
        for chunk in frames.split(self.batch_size):
            self._add_features(self.extractor(chunk.to(self.device)).flatten(1), real)
