"""End to end: raw MEAD + HDTF fixtures -> store -> index, failure modes, resume, latents, precomputed inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import prep_fixtures as fx
from data_prep.__main__ import main
from data_prep.index import SplitConfig, assign_splits
from data_prep.pipeline import PrepConfig, nearest_frames
from data_prep.runner import run
from dicetalk import media
from dicetalk.audio import make_tiny_whisper

SIZE = 32


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Raw fixtures prepared once through the CLI entry point (in process)."""
    root = tmp_path_factory.mktemp("prep")
    good_mead = fx.make_mead(root / "mead")
    bad = fx.make_bad_mead(root / "mead")
    good_hdtf = fx.make_hdtf(root / "hdtf")
    whisper = make_tiny_whisper(root / "whisper")
    store = root / "store"
    common = ["--out", str(store), "--landmarks", "sidecar", "--whisper", str(whisper), "--size", str(SIZE),
              "--no-progress", "--device", "cpu"]
    codes = [main(["mead", "--raw", str(root / "mead"), *common]), main(["hdtf", "--raw", str(root / "hdtf"), *common])]
    assert codes == [0, 0]
    assert main(["index", str(store)]) == 0
    return dict(root=root, store=store, whisper=whisper, good=good_mead + good_hdtf, bad=bad, common=common)


def _manifest(store: Path) -> dict[str, dict]:
    return {row["clip_id"]: row for row in map(json.loads, (store / "manifest.jsonl").read_text().splitlines())}


def test_nearest_frames_matches_a_direct_search():
    rng = np.random.default_rng(0)
    for fps in (30.0, 29.97, 24.0, 25.0, 60.0):
        stamps = np.arange(int(fps * 3)) / fps + 0.011 + rng.uniform(-0.002, 0.002, int(fps * 3))
        n = int(3 * 25) - 1
        expected = [int(np.argmin(np.abs(stamps - (stamps[0] + k / 25)))) for k in range(n)]
        np.testing.assert_array_equal(nearest_frames(stamps, n), expected)
    np.testing.assert_array_equal(nearest_frames(np.arange(6) / 30, 5)[:5], [0, 1, 2, 4, 5])


def test_good_clips_have_every_file_with_the_right_shape(prepared):
    store, manifest = prepared["store"], _manifest(prepared["store"])
    assert sorted(manifest) == sorted(prepared["good"])
    for clip_id, row in manifest.items():
        meta = json.loads((store / "clips" / clip_id / "meta.json").read_text())
        assert meta == {k: v for k, v in row.items() if k != "split"}
        n = row["n_frames"]
        assert row["fps"] == 25 and n == 35  # 1.4 s at 25 fps, from 30 fps (MEAD) and 25 fps (HDTF)
        files = {k: store / v for k, v in row["files"].items()}
        assert set(files) == {"frames", "audio", "whisper", "landmarks", "expression", "face_box"}
        info = media.probe_video(files["frames"])
        assert (info.n_frames, info.fps, info.width, info.height) == (n, 25, SIZE, SIZE)
        assert media.read_audio(files["audio"]).shape == (n * 640,)
        for key, shape, dtype in (("whisper", (2 * n, 5, 384), np.float16), ("landmarks", (n, 68, 2), np.float32),
                                  ("expression", (n, 136), np.float32), ("face_box", (n, 4), np.float32)):
            array = np.load(files[key])
            assert array.shape == shape and array.dtype == dtype, key
            assert np.isfinite(array.astype(np.float32)).all(), key
        box = np.load(files["face_box"])
        assert (box[:, :2] < box[:, 2:]).all() and box.min() >= 0 and box.max() <= 1


def test_crop_follows_the_face(prepared):
    """The crop-space landmarks sit on the drawn face: the mouth blob is dark, the cheeks are skin."""
    store = prepared["store"]
    clip = store / "clips" / "M005_happy_1_001"
    frames = media.read_frames(clip / "frames.mp4")
    landmarks = np.load(clip / "landmarks.npy")
    mouth = np.round(landmarks[:, 48:60].mean(1)).astype(int)
    cheek = np.round(landmarks[:, 2] * 0.6 + landmarks[:, 30] * 0.4).astype(int)
    t = np.arange(len(frames))
    assert frames[t, mouth[:, 1], mouth[:, 0]].mean() < 110
    assert frames[t, cheek[:, 1], cheek[:, 0], 0].mean() > 170
    raw = np.load(prepared["root"] / "mead/M005/video/front/happy/level_1/001.landmarks.npy")
    sources = nearest_frames(np.arange(len(raw)) / 30, len(frames))
    # Crop coordinates are an affine map of the source landmarks with one scale per clip.
    scale = np.ptp(landmarks, axis=1) / np.ptp(raw[sources], axis=1)
    np.testing.assert_allclose(scale, scale[0, 0], rtol=1e-4)


def test_every_failure_mode_is_recorded_and_the_run_goes_on(prepared):
    store = prepared["store"]
    failures = {f["clip_id"]: f for f in map(json.loads, (store / "failures.jsonl").read_text().splitlines())}
    assert {k: f["reason"] for k, f in failures.items()} == prepared["bad"]
    for clip_id, record in failures.items():
        assert set(record) >= {"clip_id", "source", "reason", "stage"}
        assert not (store / "clips" / clip_id).exists()
        assert json.loads((store / "failures" / f"{clip_id}.json").read_text()) == record
    assert "audio_too_short" in (store / "prep.log").read_text()


def test_index_splits_and_summary(prepared, capsys):
    manifest = _manifest(prepared["store"])
    assert manifest["M003_angry_3_001"]["split"] == "test"
    splits = {}
    for row in manifest.values():
        splits.setdefault((row["dataset"], row["identity"]), set()).add(row["split"])
    assert all(len(s) == 1 for s in splits.values())  # identity-disjoint
    assert main(["index", str(prepared["store"]), "--hdtf-test-videos", "1", "--seed", "3"]) == 0
    table = capsys.readouterr().out
    for word in ("by dataset and split", "happy", "level", "failures by reason", "unreadable", "no_face"):
        assert word in table


def test_split_rules():
    rows = [{"clip_id": f"{i}_{e}_1_001", "dataset": "mead", "identity": i} for i in
            ("M003", "M005", "M007", "W009", "W011") for e in ("angry", "sad")]
    rows += [{"clip_id": f"WRA_{name}{k}_{c:03d}", "dataset": "hdtf", "identity": name}
             for name, videos in (("Ann", 3), ("Bob", 2), ("Cy", 1), ("Di", 4)) for k in range(videos) for c in range(2)]
    split = assign_splits(rows, SplitConfig(hdtf_test_videos=4, val=1, seed=0))
    by_identity = {}
    for row in rows:
        by_identity.setdefault((row["dataset"], row["identity"]), set()).add(split[row["clip_id"]])
    assert all(len(v) == 1 for v in by_identity.values())
    mead = {i: s.pop() for (d, i), s in by_identity.items() if d == "mead"}
    assert mead["M003"] == mead["W009"] == "test"
    assert sorted(mead.values()).count("val") == 1 and sorted(mead.values()).count("train") == 2
    hdtf = {i: s.pop() for (d, i), s in by_identity.items() if d == "hdtf"}
    test_videos = sum({"Ann": 3, "Bob": 2, "Cy": 1, "Di": 4}[i] for i, s in hdtf.items() if s == "test")
    assert 4 <= test_videos and "train" in hdtf.values()
    assert assign_splits(rows, SplitConfig(hdtf_test_videos=4, seed=0)) == split  # seeded
    few = assign_splits(rows[:2], SplitConfig(mead_test_ids=()))
    assert set(few.values()) == {"train"}  # a lone identity always trains


def test_rerun_skips_finished_and_failed_clips(prepared):
    store = prepared["store"]
    before = {p: p.stat().st_mtime_ns for p in (store / "clips").rglob("*")}
    summary = run("mead", prepared["root"] / "mead", store,
                  PrepConfig(size=SIZE, landmarks="sidecar", whisper=str(prepared["whisper"])), progress=False)
    assert (summary.skipped, summary.done, summary.failed) == (summary.total, 0, 0) and summary.ok
    assert before == {p: p.stat().st_mtime_ns for p in (store / "clips").rglob("*")}


def test_nothing_succeeded_exits_nonzero(prepared, tmp_path):
    raw = tmp_path / "raw"
    fx.make_bad_mead(raw)
    code = main(["mead", "--raw", str(raw), "--out", str(tmp_path / "store"), "--no-progress", "--landmarks",
                 "sidecar", "--whisper", str(prepared["whisper"]), "--size", str(SIZE), "--device", "cpu"])
    assert code == 1
    assert len(list((tmp_path / "store" / "failures").glob("*.json"))) == 7


def test_latents_precomputed_landmarks_and_expression(prepared, tmp_path):
    """--latents with a tiny SVD-style folder, --landmarks precomputed and --expression-dir on one clip."""
    from diffusers import AutoencoderKLTemporalDecoder

    vae = AutoencoderKLTemporalDecoder(block_out_channels=[32] * 4, down_block_types=["DownEncoderBlock2D"] * 4,
                                       latent_channels=4)
    vae.save_pretrained(tmp_path / "svd" / "vae")
    raw = prepared["root"] / "mead"
    clip_id = "M003_angry_3_001"
    (tmp_path / "lm").mkdir()
    shutil.copy(raw / "M003/video/front/angry/level_3/001.landmarks.npy", tmp_path / "lm" / f"{clip_id}.npy")
    (tmp_path / "expr").mkdir()
    expression = np.random.default_rng(0).normal(size=(42, 64)).astype(np.float32)  # per source frame (30 fps)
    np.save(tmp_path / "expr" / f"{clip_id}.npy", expression)
    store = tmp_path / "store"
    config = PrepConfig(size=SIZE, landmarks="precomputed", landmarks_dir=str(tmp_path / "lm"),
                        expression_dir=str(tmp_path / "expr"), whisper=str(prepared["whisper"]),
                        latents=str(tmp_path / "svd"))
    summary = run("mead", raw, store, config, limit=1, progress=False)
    assert summary.done == 1
    row = json.loads((store / "clips" / clip_id / "meta.json").read_text())
    latents = np.load(store / row["files"]["latents"])
    assert latents.shape == (35, 4, SIZE // 8, SIZE // 8) and latents.dtype == np.float16
    sources = nearest_frames(np.arange(42) / 30, 35)
    np.testing.assert_array_equal(np.load(store / row["files"]["expression"]), expression[sources])
    same = json.loads((prepared["store"] / "clips" / clip_id / "meta.json").read_text())
    np.testing.assert_array_equal(np.load(store / row["files"]["landmarks"]),
                                  np.load(prepared["store"] / same["files"]["landmarks"]))


def test_synthetic_generator_output_prepares_cleanly(prepared, tmp_path):
    """The embedded synthetic raw set (data_prep.synthetic) goes through prep and index without failures."""
    from data_prep.synthetic import SyntheticConfig, generate

    generate(tmp_path / "raw", SyntheticConfig(mead_identities=2, hdtf_speakers=2, clips_per_level=1, hdtf_clips=2,
                                               emotions=("angry", "neutral"), levels=(1,), seconds=1.2, size=64))
    store = tmp_path / "store"
    config = PrepConfig(size=SIZE, landmarks="sidecar", whisper=str(prepared["whisper"]))
    summaries = [run(d, tmp_path / "raw" / d, store, config, progress=False) for d in ("mead", "hdtf")]
    assert [(s.total, s.done, s.failed) for s in summaries] == [(4, 4, 0), (4, 4, 0)]
    assert main(["index", str(store), "--mead-test-ids", "M003"]) == 0
    rows = _manifest(store)
    assert {r["split"] for r in rows.values() if r["identity"] == "M003"} == {"test"}
    assert {r["n_frames"] for r in rows.values()} == {30}, rows


def test_long_clip_is_streamed_in_chunks(prepared, tmp_path, monkeypatch):
    """Frames and latents are encoded chunk by chunk: same files as one whole-clip chunk, bounded memory."""
    import tracemalloc

    from diffusers import AutoencoderKLTemporalDecoder

    from data_prep import pipeline
    from data_prep.layouts import ClipSpec

    video, audio = fx.mead_paths(tmp_path / "raw", "M003", "angry", 3, 1)
    fx.write_clip(video, 6.0, 30, 0, audio=audio)  # 150 frames at 25 fps
    spec = ClipSpec("M003_angry_3_001", "mead", "M003", "angry", 3, video, audio)
    vae = AutoencoderKLTemporalDecoder(block_out_channels=[32] * 4, down_block_types=["DownEncoderBlock2D"] * 4,
                                       latent_channels=4)
    vae.save_pretrained(tmp_path / "vae")
    monkeypatch.setattr(pipeline, "_FRAME_CACHE_BYTES", 0)  # decode per chunk: only the output side is measured

    def prepare(chunk: int, config: PrepConfig) -> tuple[dict[str, bytes], int]:
        monkeypatch.setattr(pipeline, "_CHUNK", chunk)
        store = tmp_path / f"store-{chunk}-{config.size}"
        models = pipeline.Models(config)
        _ = models.whisper, models.vae  # loaded outside the measurement
        tracemalloc.start()
        assert pipeline.process_clip(spec, store, config, models)["status"] == "done"
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert not list((store / "clips").glob(".tmp-*"))
        return {p.name: p.read_bytes() for p in (store / "clips" / spec.clip_id).iterdir()}, peak

    with_latents = PrepConfig(size=32, landmarks="sidecar", whisper=str(prepared["whisper"]),
                              latents=str(tmp_path / "vae"))
    files = prepare(16, with_latents)[0]
    assert "latents.npy" in files and files == prepare(1000, with_latents)[0]
    large = PrepConfig(size=256, landmarks="sidecar", whisper=str(prepared["whisper"]))
    (chunked, peak_chunked), (whole, peak_whole) = prepare(16, large), prepare(1000, large)
    assert chunked == whole
    clip_bytes = 150 * 256 * 256 * 3
    assert peak_chunked < clip_bytes / 2 and peak_whole - peak_chunked > clip_bytes, (peak_chunked, peak_whole)
