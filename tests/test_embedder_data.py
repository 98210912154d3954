"""Store reader, contrastive pair dataset, key-aware batch sampler, evaluation windows, DataModule."""
import json
from collections import Counter

import numpy as np
import pytest
import torch
from store_fixtures import batches_by_epoch, fake_trainer, make_fake_store
from torch.utils.data import DataLoader

from dicetalk.constants import EMOTION_TO_ID
from dicetalk.data.embedder_data import (
    EmbedderDataModule,
    EvalWindowDataset,
    KeyAwareBatchSampler,
    PairDataset,
    positive_key,
    read_window,
    video_id,
)
from dicetalk.data.store import Store

WINDOW = 8


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    root = make_fake_store(tmp_path_factory.mktemp("fake") / "store", mead_ids=("M001", "M002", "W001"),
                           splits={"W001": "val"}, sentences=2, n_frames=20, hdtf_frames=20)
    return Store(root)


# -- store ------------------------------------------------------------------------------------------
def test_store_reads_manifest_and_arrays(store):
    assert len(store) == 3 * 22 * 2 + 3 * 2
    mead_train = store.select(["mead"], ["train"])
    assert {c.identity for c in mead_train} == {"M001", "M002"}
    assert {c.split for c in store.select(["mead"], ["val"])} == {"val"}
    clip = store.clip("M001_happy_2_001")
    assert (clip.emotion, clip.level, clip.n_frames) == ("happy", 2, 20)
    arr = store.array(clip, "whisper")
    assert isinstance(arr, np.memmap) and arr.shape == (40, 5, 384) and arr.dtype == np.float16
    assert store.array("M001_happy_2_001", "expression").shape == (20, 136)
    meta = json.loads((store.root / "clips" / clip.clip_id / "meta.json").read_text())
    assert "split" not in meta and meta["clip_id"] == clip.clip_id


def test_store_errors_name_the_file(tmp_path, store):
    with pytest.raises(FileNotFoundError, match="manifest.jsonl"):
        Store(tmp_path)
    (tmp_path / "manifest.jsonl").write_text('{"clip_id": "a"}\n{not json\n')
    with pytest.raises(ValueError, match=r"manifest.jsonl:1: missing keys"):
        Store(tmp_path)
    (tmp_path / "manifest.jsonl").write_text("\n{not json\n")
    with pytest.raises(ValueError, match=r"manifest.jsonl:2: invalid JSON"):
        Store(tmp_path)
    with pytest.raises(KeyError, match="nope"):
        store.clip("nope")
    with pytest.raises(FileNotFoundError, match="latents.npy"):
        store.array("M001_happy_2_001", "latents")


# -- keys and windows -------------------------------------------------------------------------------
def test_keys(store):
    assert video_id("WRA_AdamKinzinger0_003") == "WRA_AdamKinzinger0"
    assert video_id("Radio11_0") == "Radio11"
    a, b = store.clip("M001_angry_1_000"), store.clip("M001_angry_3_001")
    assert positive_key(a) == positive_key(b) != positive_key(store.clip("M002_angry_1_000"))
    assert positive_key(a, same_level=True) != positive_key(b, same_level=True)
    assert positive_key(store.clip("RD_Radio1_000")) == positive_key(store.clip("RD_Radio1_001"))


def test_read_window_pads_short_audio(tmp_path):
    root = make_fake_store(tmp_path / "s", mead_ids=("M001",), sentences=1, n_frames=10, hdtf_videos=())
    s = Store(root)
    clip = s.clip("M001_sad_1_000")
    path = s.path(clip, "whisper")
    np.save(path, np.ones((15, 5, 384), np.float16))  # audio shorter than the 20 expected frames
    expr, whisper = read_window(s, clip, 4, 6)
    assert expr.shape == (6, 136) and whisper.shape == (12, 5, 384)
    assert (whisper[:7] == 1).all() and (whisper[7:] == 0).all()
    with pytest.raises(ValueError, match="expression.npy"):
        read_window(s, clip, 6, 6)


# -- pairs ------------------------------------------------------------------------------------------
def test_pairs_are_positive_and_deterministic(store):
    ds = PairDataset(store, store.select(None, ["train"]), WINDOW)
    hdtf_groups = [i for i, g in enumerate(ds.groups) if g.clips[0].dataset == "hdtf"]
    assert len(hdtf_groups) == 3 and len(ds.groups) == 2 * 8 + 3
    for gi, group in enumerate(ds.groups):
        for seed in range(5):
            rng = np.random.default_rng(seed)
            (ca, sa), (cp, sp) = ds._draw(group, rng)
            assert positive_key(ca) == positive_key(cp) == group.key
            assert ca.clip_id != cp.clip_id  # every fake group has >= 2 clips
            for c, s in ((ca, sa), (cp, sp)):
                assert 0 <= s <= c.n_frames - WINDOW
    item = ds[(0, 123)]
    again = ds[(0, 123)]
    for k in item:
        assert torch.equal(item[k], again[k])
    assert item["anchor_expression"].shape == (WINDOW, 136)
    assert item["anchor_whisper"].shape == (2 * WINDOW, 5, 384)


def test_single_clip_group_gives_non_overlapping_windows(tmp_path):
    root = make_fake_store(tmp_path / "s", mead_ids=(), hdtf_videos=("WRA_Solo0",), hdtf_clips_per_video=1,
                           hdtf_frames=20)
    s = Store(root)
    ds = PairDataset(s, s.clips, WINDOW)
    starts = [ds._draw(ds.groups[0], np.random.default_rng(i)) for i in range(200)]
    for (_, a), (_, b) in starts:
        assert abs(a - b) >= WINDOW
    assert len({a for (_, a), _ in starts}) > 3  # windows really vary
    with pytest.raises(ValueError, match="no clip group"):
        PairDataset(s, s.clips, 11)  # 20 frames cannot hold two 11-frame windows


@pytest.mark.parametrize("same_level", [False, True])
def test_cross_identity_pairs(store, same_level):
    ds = PairDataset(store, store.select(["mead"], ["train"]), WINDOW, same_level=same_level, cross_identity=1.0)
    for group in ds.groups:
        for seed in range(4):
            (ca, _), (cp, _) = ds._draw(group, np.random.default_rng(seed))
            assert ca.identity != cp.identity and ca.emotion == cp.emotion
            assert positive_key(ca, same_level) == group.key
            if same_level:
                assert ca.level == cp.level
    # positives may now share an emotion across identities, so the mask key is the emotion
    for i, gi in enumerate(ds.groups):
        for j, gj in enumerate(ds.groups):
            assert (ds.mask_keys[i] == ds.mask_keys[j]) == (gi.clips[0].emotion == gj.clips[0].emotion)
    half = PairDataset(store, store.select(["mead"], ["train"]), WINDOW, cross_identity=0.5)
    crossed = [half._draw(half.groups[0], np.random.default_rng(s)) for s in range(400)]
    share = np.mean([a.identity != p.identity for (a, _), (p, _) in crossed])
    assert 0.4 < share < 0.6
    with pytest.raises(ValueError, match="probability"):
        PairDataset(store, store.clips, WINDOW, cross_identity=1.5)


def test_emotion_only_mask_keys(store):
    clips = store.select(["mead"], ["train"])
    plain = PairDataset(store, clips, WINDOW)
    assert len(set(plain.mask_keys)) == len(plain.groups)
    emo = PairDataset(store, clips, WINDOW, negatives="emotion_only")
    for i, gi in enumerate(emo.groups):
        for j, gj in enumerate(emo.groups):
            assert (emo.mask_keys[i] == emo.mask_keys[j]) == (gi.clips[0].emotion == gj.clips[0].emotion)


# -- batch sampler ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n_groups,batch,repeats,world", [(10, 4, 3, 1), (19, 5, 4, 1), (12, 3, 5, 2), (7, 7, 2, 1)])
def test_batch_sampler_keys_unique_and_ranks_consistent(n_groups, batch, repeats, world):
    per_rank = [list(KeyAwareBatchSampler(n_groups, batch, repeats, seed=1, num_replicas=world, rank=r))
                for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1  # same number of batches on every rank
    counts = Counter()
    for step in zip(*per_rank):
        global_batch = [g for rank_batch in step for g, _ in rank_batch]
        assert all(len(rank_batch) == batch for rank_batch in step)
        assert len(set(global_batch)) == len(global_batch)  # unique across all ranks
        counts.update(global_batch)
    assert max(counts.values()) <= repeats
    assert sum(counts.values()) >= n_groups * repeats - batch * world * 2  # at most ~one global batch lost
    assert len(KeyAwareBatchSampler(n_groups, batch, repeats, seed=1, num_replicas=world)) == len(per_rank[0])


def test_batch_sampler_epochs_and_errors():
    s = KeyAwareBatchSampler(20, 4, 2, seed=0)
    e0 = list(s)
    assert list(s) == e0
    s.set_epoch(1)
    assert list(s) != e0
    with pytest.raises(ValueError, match="distinct positive keys"):
        KeyAwareBatchSampler(5, 4, num_replicas=2)


def test_loader_with_workers_matches_single_process(store):
    ds = PairDataset(store, store.select(None, ["train"]), WINDOW)
    sampler = KeyAwareBatchSampler(len(ds), 4, 1, seed=0)
    ref = list(DataLoader(ds, batch_sampler=sampler))
    got = list(DataLoader(ds, batch_sampler=sampler, num_workers=2))
    assert len(ref) == len(got) > 0
    for a, b in zip(ref, got):
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert len(set(a["key"].tolist())) == 4


# -- evaluation windows and the DataModule -----------------------------------------------------------
def test_eval_windows(store):
    ds = EvalWindowDataset(store, store.select(None, ["val"]), WINDOW, windows_per_clip=3)
    assert len(ds) == 22 * 2 * 3  # HDTF clips (no emotion) are left out
    item = ds[5]
    clip = ds.clips[int(item["clip"])]
    assert int(item["emotion"]) == EMOTION_TO_ID[clip.emotion]
    assert ds.identities[int(item["identity"])] == clip.identity == "W001"
    start = ds.items[5][1]
    np.testing.assert_array_equal(item["expression"].numpy(), store.array(clip, "expression")[start:start + WINDOW])


def test_datamodule(store):
    dm = EmbedderDataModule(str(store.root), window=WINDOW, batch_size=4, num_workers=0, repeats=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["anchor_expression"].shape == (4, WINDOW, 136)
    assert batch["positive_whisper"].shape == (4, 2 * WINDOW, 5, 384)
    assert next(iter(dm.val_dataloader()))["expression"].shape[1:] == (WINDOW, 136)
    mean, std = dm.expression_stats()
    frames = np.concatenate([np.asarray(store.array(c, "expression"), np.float64)
                             for c in store.select(None, ["train"])])
    np.testing.assert_allclose(mean.numpy(), frames.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std.numpy(), frames.std(0), rtol=1e-5)
    with pytest.raises(ValueError, match="no labelled MEAD clips"):
        EmbedderDataModule(str(store.root), window=WINDOW, val_splits=["test"]).setup("validate")


def test_key_aware_sampler_resumes_mid_epoch():
    """A run resumed after k batches of an epoch gets the rest of that epoch (same groups, same seeds)."""
    full = KeyAwareBatchSampler(30, 4, 2, seed=3)
    full.set_epoch(2)
    expected = list(full)
    resumed = KeyAwareBatchSampler(30, 4, 2, seed=3).follow(fake_trainer(batches_done=5))
    resumed.set_epoch(2)
    assert list(resumed) == expected[5:]
    assert list(resumed) == expected and len(resumed) == len(expected)  # only the first pass skips


def test_each_epoch_gets_a_new_order_through_lightnings_set_epoch_hook(store):
    dm = EmbedderDataModule(str(store.root), window=WINDOW, batch_size=4, num_workers=0, repeats=2)
    dm.setup("fit")
    first, second, first_again = batches_by_epoch(dm.train_dataloader(), (0, 1, 0))
    assert first != second and first == first_again
