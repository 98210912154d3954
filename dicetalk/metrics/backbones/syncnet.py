"""SyncNet v2 (the audio-visual sync network of syncnet_python), keyed like ``syncnet_v2.model``.

The four indexed ``nn.Sequential`` stacks keep the published layer indices (``netcnnaud.0.weight``...),
so the file loads without renaming. Embeddings are 1024-d and not normalised.
"""

from __future__ import annotations

from torch import Tensor, nn

EMBED_DIM = 1024
AUDIO_WINDOW = (13, 20)  # 13 MFCC x 20 steps at 100 Hz = 0.2 s = 5 video frames
VIDEO_WINDOW = 5  # frames per lip window
FRAME_SIZE = 224


def _fc_head() -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, EMBED_DIM))


class SyncNet(nn.Module):
    """Audio branch on MFCC windows (N, 1, 13, 20); lip branch on BGR 0..255 windows (N, 3, 5, 224, 224)."""

    def __init__(self) -> None:
        super().__init__()
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d((1, 1), stride=(1, 1)),
            nn.Conv2d(64, 192, 3, padding=1), nn.BatchNorm2d(192), nn.ReLU(inplace=True),
            nn.MaxPool2d((3, 3), stride=(1, 2)),
            nn.Conv2d(192, 384, 3, padding=1), nn.BatchNorm2d(384), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.MaxPool2d((3, 3), stride=(2, 2)),
            nn.Conv2d(256, 512, (5, 4)), nn.BatchNorm2d(512), nn.ReLU(),
        )
        self.netfcaud = _fc_head()
        self.netfclip = _fc_head()  # registered before netcnnlip, as upstream (same key order)
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, (5, 7, 7), stride=(1, 2, 2)), nn.BatchNorm3d(96), nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(256, 512, (1, 6, 6)), nn.BatchNorm3d(512), nn.ReLU(inplace=True),
        )

    def forward_aud(self, x: Tensor) -> Tensor:
        """MFCC windows (N, 1, 13, 20) -> (N, 1024)."""
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def forward_lip(self, x: Tensor) -> Tensor:
        """BGR 0..255 face windows (N, 3, 5, 224, 224) -> (N, 1024)."""
        return self.netfclip(self.netcnnlip(x).flatten(1))
