"""Evaluation protocol (jobs, shards, resume) and a tiny end-to-end run producing Tables 1 and 2."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from dicetalk.data.store import Store
from dicetalk.evaluate import (EvalConfig, EvalError, build_jobs, evaluate, load_config, random_backbones,
                               shard_jobs)
from dicetalk.pipeline import DiceTalkPipeline, SamplingConfig
from store_fixtures import make_fake_store

EMOS = ["neutral", "happy", "angry", "surprised"]  # the four Emo-Score emotions


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval") / "store"
    return make_fake_store(root, mead_ids=("M003", "M005"), splits={"M003": "test", "WRA_AliceSmith0": "test"},
                           sentences=2, n_frames=20, hdtf_videos=("WRA_AliceSmith0",), hdtf_clips_per_video=2,
                           hdtf_frames=20, media=True)


def test_protocol_jobs_and_shards(store):
    cfg = EvalConfig(store=str(store), emotions=EMOS, levels=[1])
    jobs = build_jobs(Store(store), cfg, has_embedder=True)
    mead = [j for j in jobs if j.table == "mead"]
    assert {j.identity for j in mead} == {"M003"}  # test identities only
    assert len([j for j in mead if j.mode == "P"]) == 4 * 2 and len([j for j in mead if j.mode == "V"]) == 4 * 2
    for job in mead:
        assert job.reference_clip == "M003_neutral_1_000"  # a neutral reference frame of the same identity
        if job.mode == "V":  # another clip of the same identity and emotion
            assert job.emotion_clip != job.clip_id and job.emotion_clip.startswith(f"M003_{job.emotion}_")
        else:
            assert job.emotion_clip is None
    hdtf = [j for j in jobs if j.table == "hdtf"]
    assert [(j.reference_clip, j.emotion_clip) for j in hdtf] == [(j.clip_id, j.clip_id) for j in hdtf]
    assert not [j for j in build_jobs(Store(store), cfg, has_embedder=False) if j.mode == "V"]
    shards = [shard_jobs(jobs, i, 3) for i in range(3)]
    names = [j.name for s in shards for j in s]
    assert sorted(names) == sorted(j.name for j in jobs) and len(set(names)) == len(names)
    with pytest.raises(EvalError, match="shard 3 of 3"):
        shard_jobs(jobs, 3, 3)


def test_config_errors(tmp_path):
    (tmp_path / "c.yaml").write_text("store: x\nbogus: 1\n")
    with pytest.raises(EvalError, match=r"unknown keys \['bogus'\]"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(EvalError, match="unknown emotions"):
        EvalConfig.from_dict({"emotions": ["joy"]})
    cfg = load_config(None, {"store": "s", "sampling.steps": 3, "talker": None})
    assert cfg.sampling.steps == 3 and cfg.talker == ""


class FakePriors:
    has_embedder = True

    def clip(self, clip_id):
        return np.random.default_rng(sum(map(ord, clip_id))).normal(size=256).astype(np.float32)

    def label(self, emotion):
        return np.full(256, 0.1 * len(emotion), np.float32)


class Pool(nn.Module):  # FID: uint8 (N, 3, H, W) -> (N, 12)
    num_features = 12

    def forward(self, x):
        return nn.functional.adaptive_avg_pool2d(x.float(), 2).flatten(1)


class ClipStats(nn.Module):  # FVD: uint8 (N, 16, 3, H, W) -> (N, 6)
    num_features = 6

    def forward(self, x):
        return torch.cat([x.float().mean((1, 3, 4)), x.float().std((1, 3, 4))], 1)


class TinySync(nn.Module):
    def __init__(self):
        super().__init__()
        self.lip, self.aud = nn.Linear(3 * 5 * 16 * 16, 8), nn.Linear(13 * 20, 8)

    def forward_lip(self, x):
        return self.lip(x.flatten(1) / 255)

    def forward_aud(self, x):
        return self.aud(x.flatten(1))


class TinyEmo(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 7)

    def forward(self, x):
        return self.fc(x.mean((2, 3)))


def backbones():
    torch.manual_seed(0)
    return {"fid": Pool(), "fvd": ClipStats(), "sync": TinySync(), "emo": TinyEmo(), "sync_size": 16,
            "emo_size": 16}


def test_tiny_end_to_end_tables(store, tmp_path):
    from dicetalk.models.talker import build_talker

    torch.manual_seed(0)
    parts = build_talker("tiny")
    sampling = SamplingConfig(steps=1)
    pipe = DiceTalkPipeline(parts.talker, parts.vae, parts.image_encoder, parts.vae_scaling, sampling, progress=False)
    cfg = EvalConfig(store=str(store), talker="tiny-in-memory", out=str(tmp_path / "eval"), emotions=EMOS, levels=[1],
                     clips_per_group=1, max_frames=16, sampling=sampling, device="cpu")
    logs = []
    common = dict(pipeline=pipe, priors=FakePriors(), backbones=backbones(), progress=False, log=logs.append)
    # two shards, then the reduce step
    assert evaluate(cfg, "generate", 0, 2, **common) is None
    with pytest.raises(EvalError, match="videos not generated yet"):
        evaluate(cfg, "metrics", **common)
    assert evaluate(cfg, "generate", 1, 2, **common) is None
    videos = sorted((tmp_path / "eval" / "videos").rglob("*.mp4"))
    assert len(videos) == 4 * 2 + 2
    stamps = {p: p.stat().st_mtime_ns for p in videos}
    results = evaluate(cfg, "all", **common)  # resumes: nothing left to generate
    assert {p: p.stat().st_mtime_ns for p in videos} == stamps
    assert sum(line.startswith("generate:") for line in logs) == 2  # the third run generated nothing

    tables = {(t["table"], t["mode"]): t for t in results["tables"]}
    assert set(tables) == {("mead", "V"), ("mead", "P"), ("hdtf", "hdtf")}
    for key in ("fvd", "fid", "sync_c", "sync_d", "emo_score", "neutral", "non_neutral"):
        for mode in "VP":
            assert np.isfinite(tables[("mead", mode)][key]), (mode, key)
    for key in ("fvd", "fid", "sync_c", "sync_d"):
        assert np.isfinite(tables[("hdtf", "hdtf")][key]), key
    assert tables[("mead", "P")]["n_videos"] == 4 and tables[("mead", "P")]["n_frames"] == 64
    assert len(results["videos"]) == 10
    out = tmp_path / "eval"
    md = (out / "results.md").read_text()
    assert "Table 1: MEAD" in md and "Table 2: HDTF" in md and "| Ours-P | audio + prompt |" in md
    assert "injected:Pool" in md and '"max_frames": 16' in md and "M003_happy_1_000" in md
    csv_text = (out / "results.csv").read_text()
    assert "# backbone fid: injected:Pool" in csv_text and csv_text.count("\nvideo,") == 10
    assert json.loads((out / "results.json").read_text())["n_videos"] == 10
    assert (out / "results.png").stat().st_size > 1000
    # different settings in the same out folder are refused instead of mixing videos
    other = EvalConfig(**{**cfg.__dict__, "seed": 1})
    with pytest.raises(EvalError, match="generated with other settings"):
        evaluate(other, "generate", **common)


def test_random_backbones_are_the_real_architectures_and_labelled(store, tmp_path):
    from dicetalk.evaluate import build_metrics
    from dicetalk.metrics.backbones import EmoAffectNetResNet50, FIDInceptionV3, SyncNet

    bb = random_backbones()
    assert isinstance(bb["fid"].net, FIDInceptionV3) and isinstance(bb["sync"], SyncNet)
    assert isinstance(bb["emo"], EmoAffectNetResNet50)
    metrics = build_metrics(EvalConfig(), bb, torch.device("cpu"))
    weights = metrics.weights()
    assert all(info["status"] == "random" and info["name"].startswith("RANDOM WEIGHTS") for info in weights.values())


def test_table_numbers_never_round_a_tiny_value_to_zero():
    from dicetalk.evaluate import _fmt

    assert [_fmt(v) for v in (None, 0.0, 2.8e-13, 54.06824, 0.0448)] == ["n/a", "0.0000", "2.80e-13", "54.0682",
                                                                        "0.0448"]
