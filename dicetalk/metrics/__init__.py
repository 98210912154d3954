"""Evaluation metrics as torchmetrics: FID, FVD, Sync-C / Sync-D and Emo-Score, with their backbones.

Every metric keeps sums as states (``dist_reduce_fx="sum"``), so DDP sync and ``merge_state`` are exact.
This package depends on nothing else in dicetalk except :mod:`dicetalk.weights`.
"""

from dicetalk.metrics.emo import EmoScore
from dicetalk.metrics.fid import FID
from dicetalk.metrics.frechet import FrechetMetric, frechet_distance
from dicetalk.metrics.fvd import FVD
from dicetalk.metrics.mfcc import syncnet_mfcc
from dicetalk.metrics.sync import SyncScore, sync_offset_search

__all__ = ["FID", "FVD", "EmoScore", "FrechetMetric", "SyncScore", "frechet_distance", "sync_offset_search",
           "syncnet_mfcc"]
