"""Stage-2 data: whisper windows, span/reference choice, the 1:1 batch sampler (also sharded), the dataset."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from dicetalk.data.store import Store
from dicetalk.data.talker_data import (
    BalancedBatchSampler,
    TalkerDataModule,
    TalkerDataset,
    choose_span_and_reference,
    prior_window_start,
    span_length,
    whisper_windows,
)
from store_fixtures import batches_by_epoch, fake_trainer
from talker_fixtures import make_talker_store, tiny_data_args


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    torch.set_num_threads(1)
    return make_talker_store(tmp_path_factory.mktemp("talker_store"))


def test_whisper_windows_match_a_direct_loop():
    rng = np.random.default_rng(0)
    whisper = rng.normal(size=(37, 2, 3)).astype(np.float16)  # 37 whisper frames (audio a bit short)
    frames = np.array([0, 1, 2, 8, 15, 17, 18, 19, 25])  # includes windows running off both ends
    got = whisper_windows(whisper, frames)
    expected = np.zeros((len(frames), 10, 2, 3), np.float32)
    for i, f in enumerate(frames):
        for k, w in enumerate(range(2 * f - 4, 2 * f + 6)):
            if 0 <= w < len(whisper):
                expected[i, k] = whisper[w]
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.float32


def test_reference_is_far_enough_and_span_fits():
    rng = np.random.default_rng(1)
    span, gap = span_length(25, 2), 30
    assert span == 49
    for n in (79, 100, 200):
        for _ in range(300):
            start, ref = choose_span_and_reference(n, span, gap, rng)
            assert 0 <= start and start + span <= n
            assert ref <= start - gap or ref >= start + span - 1 + gap
    # both sides reachable on a long clip
    sides = {choose_span_and_reference(200, span, gap, rng)[1] < 100 for _ in range(200)}
    assert sides == {True, False}


def test_short_clip_falls_back_to_the_farthest_frame():
    rng = np.random.default_rng(2)
    for _ in range(100):
        start, ref = choose_span_and_reference(60, 49, 30, rng)  # no start leaves 30 frames on a side
        far = 0 if start >= 60 - (start + 49) else 59
        assert ref == far
    with pytest.raises(ValueError, match="shorter"):
        choose_span_and_reference(40, 49, 30, rng)


def test_prior_window_is_centred_and_inside():
    assert prior_window_start(100, 20, 49, 50) == 19
    assert prior_window_start(100, 0, 49, 60) == 0
    assert prior_window_start(100, 51, 49, 60) == 40


def _sets_of(batch, emotion_ids):
    return ["e" if i in emotion_ids else "r" for i, _ in batch]


def test_balanced_sampler_is_one_to_one_and_covers_the_larger_set():
    emotion, regular = list(range(0, 50)), list(range(50, 57))
    sampler = BalancedBatchSampler(emotion, regular, batch_size=4, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 25
    for b in batches:
        assert _sets_of(b, set(emotion)) == ["e", "e", "r", "r"]
    assert Counter(i for b in batches for i, _ in b if i < 50) == Counter(emotion)  # each emotion clip once
    sampler.set_epoch(1)
    assert [i for b in sampler for i, _ in b] != [i for b in batches for i, _ in b]


def test_balanced_sampler_shards_by_rank():
    emotion, regular = list(range(40)), list(range(40, 52))
    single = list(BalancedBatchSampler(emotion, regular, batch_size=4, seed=5, num_replicas=1))
    ranks = [list(BalancedBatchSampler(emotion, regular, batch_size=4, seed=5, num_replicas=2, rank=r))
             for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 10
    for b0, b1 in zip(*ranks):
        for b in (b0, b1):
            assert _sets_of(b, set(emotion)) == ["e", "e", "r", "r"]
        assert not {i for i, _ in b0 if i < 40} & {i for i, _ in b1 if i < 40}  # ranks never share a clip
    seen = [i for b0, b1 in zip(*ranks) for i, _ in b0 + b1 if i < 40]
    assert sorted(seen) == emotion  # the two ranks together cover the emotion set once
    assert len(single) == 20
    with pytest.raises(ValueError, match="even"):
        BalancedBatchSampler(emotion, regular, batch_size=3)
    with pytest.raises(ValueError, match="both sets"):
        BalancedBatchSampler(emotion, [], batch_size=2)


def test_sampler_skip_resumes_mid_epoch():
    emotion, regular = list(range(20)), list(range(20, 26))
    full = list(BalancedBatchSampler(emotion, regular, 4, seed=7))
    resumed = BalancedBatchSampler(emotion, regular, 4, seed=7).follow(fake_trainer(batches_done=3))
    assert list(resumed) == full[3:]
    assert list(resumed) == full  # only the first pass skips
    assert len(resumed) == len(full)


def test_dataset_sample(store_root):
    store = Store(store_root)
    clips = store.select(None, ["train"])
    dataset = TalkerDataset(store, clips, num_frames=4, stride=2, min_ref_gap=10, prior_window=8, frame_size=32)
    index = next(i for i, c in enumerate(dataset.clips) if c.clip_id == "M001_happy_3_000")
    a, b = dataset[(index, 11)], dataset[(index, 11)]
    for k in a:
        torch.testing.assert_close(a[k], b[k])  # the seed decides everything
    assert a["pixels"].shape == (4, 3, 32, 32) and a["ref_pixels"].shape == (3, 32, 32)
    assert -1 <= a["pixels"].min() and a["pixels"].max() <= 1
    assert a["whisper"].shape == (4, 10, 5, 384)
    assert a["prior_expression"].shape == (8, 136) and a["prior_whisper"].shape == (16, 5, 384)
    assert a["face_mask"].shape == (1, 32, 32) and 0 < a["face_mask"].mean() <= 1
    assert int(a["emotion"]) == 4 and int(a["level"]) == 3  # happy = EMOTIONS index 4
    hdtf = next(i for i, c in enumerate(dataset.clips) if c.dataset == "hdtf")
    assert int(dataset[(hdtf, 0)]["emotion"]) == -1


def test_dataset_frames_whisper_and_reference_follow_the_chosen_span(store_root):
    from dicetalk.media import read_frames

    store = Store(store_root)
    clip = store.clip("M001_angry_1_000")
    dataset = TalkerDataset(store, [clip], num_frames=4, stride=2, min_ref_gap=10, prior_window=8)
    sample = dataset[(0, 4)]
    start, ref = choose_span_and_reference(clip.n_frames, 7, 10, np.random.default_rng(4))
    frames = start + 2 * np.arange(4)
    video = read_frames(store.path(clip, "frames"))
    expected = torch.from_numpy(video[frames]).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(sample["pixels"], expected)
    torch.testing.assert_close(sample["ref_pixels"], torch.from_numpy(video[ref]).permute(2, 0, 1).float() / 127.5 - 1)
    whisper = np.asarray(store.array(clip, "whisper"), np.float32)
    np.testing.assert_array_equal(sample["whisper"][1, 4].numpy(), whisper[2 * frames[1]])


def test_cached_latents_are_used_when_every_clip_has_them(tmp_path):
    root = make_talker_store(tmp_path / "store", mead_ids=("M001", "W001"))
    store = Store(root)
    for clip in store.clips:
        rng = np.random.default_rng(len(clip.clip_id))
        np.save(store.path(clip, "latents"), rng.normal(size=(clip.n_frames, 4, 16, 16)).astype(np.float16))
    dm = TalkerDataModule(**tiny_data_args(root))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["latents"].shape == (2, 4, 4, 16, 16) and batch["ref_latents"].shape == (2, 4, 16, 16)
    assert "pixels" not in batch and batch["ref_pixels"].shape == (2, 3, 32, 32)  # CLIP still needs the pixels
    store.path(store.clips[0], "latents").unlink()
    dm = TalkerDataModule(**tiny_data_args(root))
    dm.setup("fit")
    assert "pixels" in dm.train_set[(0, 0)]
    dm = TalkerDataModule(**tiny_data_args(root, latents="always"))
    with pytest.raises(FileNotFoundError, match="latents"):
        dm.setup("fit")


def test_datamodule_batches_are_balanced(store_root):
    dm = TalkerDataModule(**tiny_data_args(store_root, batch_size=4))
    dm.setup("fit")
    loader = dm.train_dataloader()
    for n, batch in enumerate(loader):
        labelled = (batch["emotion"] >= 0).tolist()
        assert labelled == [True, True, False, False]  # MEAD (labelled) then HDTF
        if n == 3:
            break
    val = next(iter(dm.val_dataloader()))
    assert val["pixels"].shape[0] == 2


def test_each_epoch_gets_a_new_order_through_lightnings_set_epoch_hook(store_root):
    dm = TalkerDataModule(**tiny_data_args(store_root, batch_size=4))
    dm.setup("fit")
    loader = dm.train_dataloader()
    first, second, first_again = batches_by_epoch(loader, (0, 1, 0))
    assert first != second and first == first_again
    # under Trainer(overfit_batches=...) every epoch replays epoch 0
    loader.batch_sampler.follow(fake_trainer(overfit_batches=1))
    assert batches_by_epoch(loader, (1,)) == [first]
