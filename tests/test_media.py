"""Round trips and failure modes of dicetalk.media (the only place that encodes or decodes media)."""

import hashlib

import numpy as np
import pytest

from dicetalk import media


def _frames(t=30, h=48, w=64):
    frames = np.zeros((t, h, w, 3), np.uint8)
    frames[..., 0] = (np.arange(t) * 8)[:, None, None]  # frame index readable from the red channel
    frames[:, :, : w // 2, 1] = 200
    return frames


def _click(seconds=2.0, at=0.5, sr=16000):
    audio = np.zeros(int(seconds * sr), np.float32)
    audio[int(at * sr) : int(at * sr) + 80] = 0.9
    return audio


def test_video_round_trip_with_audio(tmp_path):
    path = tmp_path / "clip.mp4"
    media.write_video(path, _frames(50), fps=25, audio=_click())
    info = media.probe_video(path)
    assert (info.n_frames, info.fps, info.width, info.height, info.has_audio) == (50, 25.0, 64, 48, True)
    assert info.duration == pytest.approx(2.0)
    frames = media.read_frames(path, [40, 3, 10])  # unsorted on purpose: output keeps the asked order
    assert np.allclose(frames[:, 20, 10, 0], [320 % 256, 24, 80], atol=6)
    assert np.allclose(media.frame_timestamps(path)[:3], [0.0, 0.04, 0.08])
    audio = media.read_audio(path)
    assert len(audio) == 32000  # AAC padding trimmed to the container's duration
    assert abs(int(np.argmax(np.abs(audio))) - 8000) < 160  # within 10 ms: lip sync survives the codec


@pytest.mark.parametrize("suffix", [".m4a", ".wav"])
def test_audio_round_trip(tmp_path, suffix):
    path = tmp_path / f"a{suffix}"
    media.write_audio(path, _click())
    audio = media.read_audio(path)
    assert len(audio) == 32000 and abs(int(np.argmax(np.abs(audio))) - 8000) < 160


def test_read_audio_resamples(tmp_path):
    path = tmp_path / "a.wav"
    media.write_audio(path, _click(sr=48000), sample_rate=48000)
    audio = media.read_audio(path, sample_rate=16000)
    assert len(audio) == 32000 and abs(int(np.argmax(np.abs(audio))) - 8000) < 160


def test_encoding_is_deterministic(tmp_path):
    # Textured frames and several encodes: PyAV's implicit RGB->YUV conversion differed about 1 run in 7.
    frames = np.random.default_rng(0).integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)
    digests = set()
    for name in ("a.mp4", "b.mp4", "c.mp4", "d.mp4", "e.mp4", "f.mp4"):
        media.write_video(tmp_path / name, frames, fps=30, audio=_click(0.5))
        digests.add(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert len(digests) == 1


def test_chunked_frames_give_the_same_file(tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, (20, 32, 48, 3), dtype=np.uint8)
    media.write_video(tmp_path / "whole.mp4", frames, fps=25, audio=_click(0.8))
    media.write_video(tmp_path / "chunks.mp4", (frames[i:i + 7] for i in range(0, 20, 7)), fps=25, audio=_click(0.8))
    assert (tmp_path / "whole.mp4").read_bytes() == (tmp_path / "chunks.mp4").read_bytes()
    with pytest.raises(ValueError, match="chunk of"):
        media.write_video(tmp_path / "mixed.mp4", iter([frames[:4], frames[:4, :16]]), fps=25)
    with pytest.raises(ValueError, match="no frames"):
        media.write_video(tmp_path / "empty.mp4", iter([]), fps=25)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunks.mp4", "whole.mp4"]


def test_errors_name_the_file(tmp_path):
    media.write_video(tmp_path / "silent.mp4", _frames(), fps=30)
    with pytest.raises(media.MediaError, match="silent.mp4: no audio track"):
        media.read_audio(tmp_path / "silent.mp4")
    (tmp_path / "corrupt.mp4").write_bytes(b"not a video" * 100)
    with pytest.raises(media.MediaError, match="corrupt.mp4"):
        media.probe_video(tmp_path / "corrupt.mp4")
    with pytest.raises(media.MediaError, match="missing.mp4: no such file"):
        media.read_frames(tmp_path / "missing.mp4")
    with pytest.raises(media.MediaError, match="out of range"):
        media.read_frames(tmp_path / "silent.mp4", [0, 99])
    with pytest.raises(ValueError, match="even width"):
        media.write_video(tmp_path / "odd.mp4", _frames(w=63), fps=25)


def test_failed_write_leaves_nothing(tmp_path):
    bad = _frames().astype(np.float32)
    with pytest.raises(ValueError):
        media.write_video(tmp_path / "x.mp4", bad, fps=25)
    with pytest.raises(RuntimeError):
        with media.atomic_path(tmp_path / "y.npy") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_save_npy(tmp_path):
    media.save_npy(tmp_path / "a.npy", np.arange(5))
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2, 3, 4]
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"]
