"""Clip discovery in raw MEAD / HDTF folders, HDTF naming, sharding."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.layouts import discover, hdtf_names, shard


def _touch(root: Path, *paths: str) -> None:
    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).touch()


def test_mead_layout_including_w021_and_other_views(tmp_path):
    _touch(tmp_path,
           "M003/video/front/angry/level_3/001.mp4", "M003/audio/angry/level_3/001.m4a",
           "M003/video/left_30/angry/level_3/001.mp4",  # another view: ignored
           "W021/video/1/front/neutral/level_1/002.mp4",  # W021's extra folder level
           "M005/video/front/bored/level_1/001.mp4",  # not an emotion: skipped
           "notes/video/front/happy/level_1/001.mp4")  # not an actor folder: skipped
    clips = discover("mead", tmp_path)
    assert [c.clip_id for c in clips] == ["M003_angry_3_001", "W021_neutral_1_002"]
    m003, w021 = clips
    assert (m003.identity, m003.emotion, m003.level) == ("M003", "angry", 3)
    assert m003.audio == tmp_path / "M003/audio/angry/level_3/001.m4a"
    assert w021.video == tmp_path / "W021/video/1/front/neutral/level_1/002.mp4"
    assert w021.audio == tmp_path / "W021/audio/neutral/level_1/002.m4a"  # absent: the video track is tried
    assert [c.clip_id for c in discover("mead", tmp_path, view="left_30")] == ["M003_angry_3_001"]


@pytest.mark.parametrize("stem, video, identity", [
    ("WRA_AdamKinzinger0_000", "WRA_AdamKinzinger0", "AdamKinzinger"),
    ("WRA_AdamKinzinger1_012", "WRA_AdamKinzinger1", "AdamKinzinger"),
    ("WDA_BarackObama_001", "WDA_BarackObama", "BarackObama"),
    ("RD_Radio11_000", "RD_Radio11", "Radio11"),  # radio shows: the index is the speaker
    ("Radio11_0", "Radio11", "Radio11"),
    ("JoeBiden2_3", "JoeBiden2", "JoeBiden"),
    ("odd", "odd", "odd"),
])
def test_hdtf_names(stem, video, identity):
    assert hdtf_names(stem) == (video, identity)


def test_hdtf_flat_folder_only(tmp_path):
    _touch(tmp_path, "WRA_A0_001.mp4", "WRA_A0_000.mp4", "_videos_raw/WRA_A0.mp4", "WRA_A0_000.landmarks.npy")
    clips = discover("hdtf", tmp_path)
    assert [(c.clip_id, c.identity, c.emotion, c.level, c.audio) for c in clips] == [
        ("WRA_A0_000", "A", None, None, None), ("WRA_A0_001", "A", None, None, None)]


def test_shards_are_disjoint_and_cover_everything():
    items = list(range(11))
    parts = [shard(items, i, 3) for i in range(3)]
    assert sorted(sum(parts, [])) == items
    assert parts[1] == [1, 4, 7, 10]
    with pytest.raises(ValueError):
        shard(items, 3, 3)


def test_missing_raw_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="raw mead folder not found"):
        discover("mead", tmp_path / "nope")
