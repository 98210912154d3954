"""Two gloo processes, each updating half the data, give the same values as one process."""

import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dicetalk.metrics import FID, FVD, EmoScore, SyncScore
from test_metrics_frechet import ClipMean, Flatten
from test_metrics_sync import Oracle, synthetic_av

WORLD = 2


def make_data():
    rng = np.random.default_rng(7)
    frames = torch.from_numpy(rng.integers(0, 256, (2, 40, 3, 4, 4), dtype=np.uint8))  # real, fake
    videos = torch.from_numpy(rng.integers(0, 256, (2, 4, 32, 3, 4, 4), dtype=np.uint8))
    av = [synthetic_av(20, d, seed=d) for d in (0, 1, 2, 3)]
    preds = torch.from_numpy(rng.integers(0, 7, (8, 10)))
    emotions = ["neutral", "happy", "surprised", "angry", "contempt", "sad", "happy", "neutral"]
    return frames, videos, av, preds, emotions


def run_metrics(rank, world):
    """Every metric on this rank's share of the data; compute() syncs across ranks when distributed."""
    frames, videos, av, preds, emotions = make_data()
    share = slice(rank, None, world)
    fid, fvd = FID(feature_extractor=Flatten(48)), FVD(feature_extractor=ClipMean())
    sync, emo = SyncScore(backbone=Oracle(), image_size=16), EmoScore(backbone=torch.nn.Identity())
    fid.update(frames[0][share], real=True)
    fid.update(frames[1][share], real=False)
    fvd.update(videos[0][share], real=True)
    fvd.update(videos[1][share], real=False)
    sync.update([v for v, _ in av[share]], [a for _, a in av[share]])
    emo.update_predictions(preds[share], emotions[share])
    out = {"fid": fid.compute(), "fvd": fvd.compute()}
    out.update(fid_real_n=fid.counts["real"], fvd_fake_n=fvd.counts["fake"])
    out.update({f"sync_{k}": v for k, v in sync.compute().items()})
    out.update({f"emo_{k}": v for k, v in emo.compute().items()})
    return {k: float(v) for k, v in out.items()}


def _worker(rank, port, path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        result = run_metrics(rank, WORLD)
        if rank == 0:
            torch.save(result, path)
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_two_gloo_processes_equal_one_process(tmp_path):
    path = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(free_port(), str(path)), nprocs=WORLD, join=True)
    distributed = torch.load(path)
    single = run_metrics(0, 1)
    assert distributed.keys() == single.keys()
    assert distributed["fid_real_n"] == 40 and distributed["fvd_fake_n"] == 8
    assert distributed["emo_unscored_frames"] == 10
    for key, value in single.items():
        assert distributed[key] == pytest.approx(value, rel=1e-9, nan_ok=True), key
