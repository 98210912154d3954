"""The CLI as a subprocess: SIGKILL mid-run then resume, and two shards at once, both equal one clean run."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import prep_fixtures as fx
from data_prep.index import build_index
from data_prep.pipeline import PrepConfig
from data_prep.runner import run
from dicetalk.audio import make_tiny_whisper

pytestmark = pytest.mark.slow

CLIPS = tuple((identity, emotion, level, 1) for identity in ("M003", "M005", "W011")
              for emotion, level in (("angry", 3), ("sad", 1)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    ids = fx.make_mead(root / "raw", clips=CLIPS, seconds=1.6)
    (root / "raw/M005/video/front/fear/level_1").mkdir(parents=True)
    (root / "raw/M005/video/front/fear/level_1/001.mp4").write_bytes(b"not a video")  # one failure too
    whisper = make_tiny_whisper(root / "whisper")
    reference = root / "reference"  # one uninterrupted run, in process
    config = PrepConfig(size=32, landmarks="sidecar", whisper=str(whisper), device="cpu")
    assert run("mead", root / "raw", reference, config, progress=False).done == len(ids)
    build_index(reference)
    return root, ids, reference


def _prep(root: Path, store: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "data_prep", "mead", "--raw", str(root / "raw"), "--out", str(store),
               "--landmarks", "sidecar", "--whisper", str(root / "whisper"), "--size", "32", "--device", "cpu",
               "--no-progress", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _hashes(store: Path) -> dict[str, str]:
    """Every file of the store except the log, by relative path."""
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file() and p.name != "prep.log"}


def assert_same_store(store: Path, reference: Path) -> None:
    """Byte-identical stores (media.write_video encodes deterministically), the log aside."""
    assert _hashes(store) == _hashes(reference)


def test_sigkill_then_resume_redoes_only_unfinished_clips(setup, tmp_path):
    root, ids, reference = setup
    store = tmp_path / "store"
    first = _prep(root, store)
    deadline = time.time() + 240
    while time.time() < deadline and not any(p.is_dir() and not p.name.startswith(".")
                                             for p in (store / "clips").glob("*")):
        time.sleep(0.005)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    finished = {p.name: (p / "meta.json").stat().st_mtime_ns for p in (store / "clips").glob("[!.]*")}
    assert 0 < len(finished) < len(ids), "the kill must land mid-run"

    second = _prep(root, store)
    output = second.communicate(timeout=300)[0]
    assert second.returncode == 0, output
    redone = set(re.findall(rf"pid {second.pid} INFO done (\S+)", (store / "prep.log").read_text()))
    assert redone == set(ids) - set(finished)
    assert {name: (store / "clips" / name / "meta.json").stat().st_mtime_ns for name in finished} == finished
    assert not list((store / "clips").glob(".tmp-*"))
    build_index(store)
    assert_same_store(store, reference)


def test_two_shards_at_once_and_workers_equal_one_run(setup, tmp_path):
    root, _, reference = setup
    store = tmp_path / "store"
    # Shard 1 also exercises the worker pool (spawned processes, models loaded once per worker).
    shards = [_prep(root, store, "--shard", "0", "--num-shards", "2"),
              _prep(root, store, "--shard", "1", "--num-shards", "2", "--workers", "2")]
    for shard in shards:
        output = shard.communicate(timeout=300)[0]
        assert shard.returncode == 0, output
    log = (store / "prep.log").read_text()
    assert "shard 0/2" in log and "shard 1/2" in log
    build_index(store)
    assert_same_store(store, reference)
