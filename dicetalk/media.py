"""Video and audio files: decode with decord / PyAV, encode H.264 + AAC with PyAV.

Every writer is atomic: it encodes to a hidden temporary file in the destination folder and renames it into
place, so a file under its final name is always complete (a killed run leaves only ``.*.partial-*`` files,
which readers never look at).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from dicetalk.constants import SAMPLE_RATE

# AAC encoders consume fixed 1024-sample frames.
_AAC_FRAME = 1024


class MediaError(RuntimeError):
    """A media file is missing, unreadable or lacks the stream asked for. The message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    n_frames: int
    fps: float
    width: int
    height: int
    duration: float
    has_audio: bool


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (same suffix, so format detection works) and rename it on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` that never leaves a half-written file under the final name."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def _open(path: Path, mode: str = "r", **kwargs):
    import av

    try:
        return av.open(str(path), mode, **kwargs)
    except (av.error.FFmpegError, OSError) as exc:
        raise MediaError(f"{path}: cannot open ({exc})") from exc


def _add_audio_stream(container, sample_rate: int, bit_rate: int = 64_000):
    stream = container.add_stream("aac", rate=sample_rate)
    stream.layout = "mono"
    stream.bit_rate = bit_rate
    return stream


def _encode_audio(container, stream, audio: np.ndarray, sample_rate: int) -> None:
    import av

    samples = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
    for start in range(0, len(samples), _AAC_FRAME):
        chunk = samples[start : start + _AAC_FRAME]
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = SAMPLE_RATE,
    crf: int = 18,
) -> None:
    """Write ``frames`` (T, H, W, 3) uint8 RGB as H.264 yuv420p, with an optional mono AAC track.

    ``frames`` may also be an iterable of (t, H, W, 3) chunks, encoded as they come, so a long clip never
    has to be held in memory whole. Encoding is single-threaded so the same input always gives the same
    bytes, however it is chunked.
    """
    from fractions import Fraction

    import av
    from av.video.reformatter import VideoReformatter

    chunks = iter([frames] if isinstance(frames, np.ndarray) else frames)
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(path) as tmp, _open(tmp, "w") as container:
        stream = audio_stream = None
        # Convert to yuv420p ourselves: PyAV's implicit conversion inside encode() is not deterministic, and one
        # reused reformatter is ~10x faster than a fresh conversion context per frame.
        to_yuv = VideoReformatter()
        n = 0
        for chunk in chunks:
            chunk = np.asarray(chunk)
            if stream is None:
                _check_frames(path, chunk)
                stream = container.add_stream("libx264", rate=rate)
                stream.width, stream.height = chunk.shape[2], chunk.shape[1]
                stream.pix_fmt = "yuv420p"
                # Single-threaded and without macroblock-tree rate control: both make x264's output vary run
                # to run.
                stream.options = {"crf": str(crf), "preset": "medium", "threads": "1", "x264-params": "mbtree=0"}
                stream.thread_count = 1
                # Every stream must exist before the first packet is muxed (the header is written then).
                audio_stream = _add_audio_stream(container, sample_rate) if audio is not None else None
            elif chunk.shape[1:] != (stream.height, stream.width, 3) or chunk.dtype != np.uint8:
                raise ValueError(f"{path}: chunk of {chunk.shape} {chunk.dtype} after {stream.width}x"
                                 f"{stream.height} uint8 frames")
            for image in chunk:
                frame = to_yuv.reformat(av.VideoFrame.from_ndarray(image, format="rgb24"), format="yuv420p")
                frame.pts = n
                n += 1
                for packet in stream.encode(frame):
                    container.mux(packet)
        if stream is None:
            raise ValueError(f"{path}: no frames to write")
        for packet in stream.encode(None):
            container.mux(packet)
        if audio_stream is not None:
            _encode_audio(container, audio_stream, audio, sample_rate)


def _check_frames(path: str | os.PathLike, frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"{path}: H.264 yuv420p needs even width and height, got {frames.shape[2]}x{frames.shape[1]}")


def write_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono float audio in [-1, 1]: ``.wav`` as PCM16, ``.m4a`` / ``.mp4`` as AAC."""
    path = Path(path)
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if path.suffix.lower() == ".wav":
        import soundfile

        with atomic_path(path) as tmp:
            soundfile.write(str(tmp), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16")
    elif path.suffix.lower() in (".m4a", ".mp4", ".aac"):
        with atomic_path(path) as tmp, _open(tmp, "w", format="ipod" if path.suffix.lower() == ".m4a" else None) as c:
            _encode_audio(c, _add_audio_stream(c, sample_rate), audio, sample_rate)
    else:
        raise ValueError(f"{path}: unsupported audio extension (use .wav or .m4a)")


def _video_reader(path: Path):
    import decord

    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as exc:  # decord raises its own DECORDError / RuntimeError variants
        raise MediaError(f"{path}: cannot decode video ({str(exc).splitlines()[0]})") from exc


def has_audio(path: str | os.PathLike) -> bool:
    with _open(Path(path)) as container:
        return len(container.streams.audio) > 0


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Frame count, rate, size and duration as the decoder sees them, and whether an audio track exists."""
    path = Path(path)
    reader = _video_reader(path)
    n = len(reader)
    if n == 0:
        raise MediaError(f"{path}: video has no frames")
    height, width = reader[0].shape[:2]
    fps = float(reader.get_avg_fps())
    return VideoInfo(n, fps, int(width), int(height), n / fps, has_audio(path))


def frame_timestamps(path: str | os.PathLike) -> np.ndarray:
    """Presentation time (seconds) of every frame, shape (T,)."""
    reader = _video_reader(Path(path))
    return np.asarray(reader.get_frame_timestamp(range(len(reader)))[:, 0], dtype=np.float64)


def read_frames(path: str | os.PathLike, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Decode frames (N, H, W, 3) uint8 RGB. Indices are decoded in sorted order (decord seeks otherwise)."""
    path = Path(path)
    reader = _video_reader(path)
    if indices is None:
        indices = np.arange(len(reader))
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= len(reader)):
        raise MediaError(f"{path}: frame index out of range 0..{len(reader) - 1}")
    order = np.argsort(indices, kind="stable")
    try:
        batch = reader.get_batch(indices[order].tolist()).asnumpy()
    except Exception as exc:
        raise MediaError(f"{path}: decoding failed ({str(exc).splitlines()[0]})") from exc
    out = np.empty_like(batch)
    out[order] = batch
    return out


def read_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio track of any container to mono float32 at ``sample_rate``."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    if path.suffix.lower() == ".wav":
        import soundfile

        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        return resample(data.mean(axis=1), rate, sample_rate)
    import av

    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(f"{path}: no audio track")
        stream = container.streams.audio[0]
        chunks, rate = [], stream.codec_context.sample_rate
        # AAC pads its last frame; the container's duration says how many samples are real.
        n_real = int(round(stream.duration * stream.time_base * rate)) if stream.duration else None
        try:
            for frame in container.decode(stream):
                data = frame.to_ndarray()
                if not frame.format.is_planar:  # interleaved: (1, samples * channels)
                    data = data.reshape(-1, len(frame.layout.channels)).T
                chunks.append(data.astype(np.float32).mean(axis=0))
        except av.error.FFmpegError as exc:
            raise MediaError(f"{path}: audio decoding failed ({exc})") from exc
    if not chunks:
        raise MediaError(f"{path}: audio track is empty")
    return resample(np.concatenate(chunks)[:n_real], rate, sample_rate)


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling with torchaudio (identity when the rates match)."""
    audio = np.asarray(audio, dtype=np.float32)
    if rate == target:
        return audio
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(audio), rate, target).numpy()
