"""Pose guider: face-box mask -> a residual added to the output of the UNet's conv_in."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class PoseGuider(nn.Module):
    """Small conv net from the mask image to the UNet's first feature width, zero-initialised at the end.

    ``channels = (c0, c1, ..., cn)``: conv_in mask -> c0, then for each step a 3x3 conv c_i -> c_i and a
    stride-2 conv c_i -> c_{i+1}, then conv_out c_n -> out_channels. n stride-2 steps divide the size by 2^n,
    which must match the VAE's downsampling. conv_out starts at zero so training begins from the
    unmodified UNet. Names (conv_in, blocks.i, conv_out) follow the released ``pose_guider.pth``.
    """

    def __init__(self, out_channels: int = 320, channels: tuple[int, ...] = (16, 32, 96, 256), in_channels: int = 3):
        super().__init__()
        self.in_channels = in_channels
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        blocks = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            blocks.append(nn.Conv2d(c_in, c_in, 3, padding=1))
            blocks.append(nn.Conv2d(c_in, c_out, 3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(channels[-1], out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def downsample_factor(self) -> int:
        """How much smaller the output is than the mask."""
        return 2 ** (len(self.blocks) // 2)

    def forward(self, mask: Tensor) -> Tensor:
        """mask (B, 1 or in_channels, H, W) in [0, 1] -> (B, out_channels, H / f, W / f)."""
        if mask.shape[1] == 1 and self.in_channels != 1:
            mask = mask.expand(-1, self.in_channels, -1, -1)
        x = F.silu(self.conv_in(mask))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)
