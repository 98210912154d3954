"""EMO-AffectNet static ResNet-50, keyed like ``FER_static_ResNet50_AffectNet.pt``.

A Keras (VGGFace2) port: BatchNorm eps 1e-3, the stride on the first 1x1 conv of a bottleneck, and a
TF-'SAME' padded 7x7 stem (2 pixels before, 3 after at 224 px). Output: 7 logits in AffectNet order.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

CLASSES = ("Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger")
BGR_MEAN = (91.4953, 103.8827, 131.0912)  # VGGFace2 means, subtracted from BGR 0..255 pixels
INPUT_SIZE = 224
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.99  # as the port declares; only matters in train mode, which is never used here


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding, worked out from the input size (asymmetric when odd)."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            pads.append(max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0))
        pad_h, pad_w = pads
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class Bottleneck(nn.Module):
    """1x1 (stride s) -> 3x3 'same' -> 1x1 (x4), plus identity or 1x1 projection shortcut."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, stride=stride, bias=False)
        self.batch_norm1 = _bn(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.batch_norm2 = _bn(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.batch_norm3 = _bn(cout)
        self.i_downsample = None
        if stride != 1 or cin != cout:
            self.i_downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _bn(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.batch_norm1(self.conv1(x)))
        y = F.relu(self.batch_norm2(self.conv2(y)))
        y = self.batch_norm3(self.conv3(y))
        shortcut = x if self.i_downsample is None else self.i_downsample(x)
        return F.relu(y + shortcut)


class EmoAffectNetResNet50(nn.Module):
    """BGR, mean-subtracted faces (N, 3, 224, 224) -> 7 emotion logits (softmax left to the caller)."""

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.conv_layer_s2_same = Conv2dSame(3, 64, 7, stride=2, bias=False)
        self.batch_norm1 = _bn(64)
        cin = 64
        for i, (n_blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
            stride = 1 if i == 0 else 2
            layer = []
            for j in range(n_blocks):
                layer.append(Bottleneck(cin, width, stride if j == 0 else 1))
                cin = width * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.fc1 = nn.Linear(cin, 512)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.batch_norm1(self.conv_layer_s2_same(x)))
        x = F.max_pool2d(x, 3, stride=2)  # TF 'valid': no padding
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))
