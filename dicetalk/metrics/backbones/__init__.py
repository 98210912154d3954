"""Metric backbone architectures (keyed like their published weight files) and their loaders."""

from dicetalk.metrics.backbones.emonet import EmoAffectNetResNet50
from dicetalk.metrics.backbones.inception import FIDInceptionV3
from dicetalk.metrics.backbones.loading import Frozen, injected, load_state_dict_into, load_torchscript
from dicetalk.metrics.backbones.syncnet import SyncNet

__all__ = ["EmoAffectNetResNet50", "FIDInceptionV3", "Frozen", "SyncNet", "injected",
           "load_state_dict_into", "load_torchscript"]
