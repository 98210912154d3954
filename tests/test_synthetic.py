"""The synthetic MEAD / HDTF generator: real decodable files, real layouts, faithful landmarks, emotion and
identity that measurably change pixels and audio, lip sync, determinism, and CLI errors."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import decord
import numpy as np
import pytest

from data_prep.synthetic import (
    EMOTION_PROSODY,
    MEAD_IDS,
    SyntheticConfig,
    draw_clip,
    emotion_expression,
    emotion_prosody,
    frame_rms,
    generate,
    landmarks_path,
    mead_identity,
)
from data_prep.synthetic.__main__ import main
from dicetalk.constants import EMOTIONS, MEAD_TEST_IDS
from dicetalk.media import read_audio, read_frames

CFG = SyntheticConfig(
    seed=7, mead_identities=2, hdtf_speakers=1, emotions=("angry", "happy", "neutral", "sad"), clips_per_level=2,
    hdtf_videos=1, hdtf_clips=2, seconds=1.0, size=64,
)
MEAD_VIDEO = re.compile(r"(?P<id>[MW]\d{3})/video/front/(?P<emotion>[a-z]+)/level_(?P<level>[123])/(?P<idx>\d{3})\.mp4")
MEAD_AUDIO = re.compile(r"(?P<id>[MW]\d{3})/audio/(?P<emotion>[a-z]+)/level_(?P<level>[123])/(?P<idx>\d{3})\.m4a")
HDTF_VIDEO = re.compile(r"(?P<subset>WRA|RD|WDA)_(?P<name>[A-Za-z]+)(?P<video>\d+)_(?P<clip>\d{3})\.mp4")


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    summary = generate(out, CFG)
    assert (summary.mead_clips, summary.hdtf_clips) == (2 * (3 * 3 + 1) * 2, 2)
    return out


def _mead(raw: Path, mead_id: str, emotion: str, level: int, idx: int = 1) -> Path:
    return raw / "mead" / mead_id / "video" / "front" / emotion / f"level_{level}" / f"{idx:03d}.mp4"


def _m4a(video: Path) -> Path:
    rel = video.relative_to(video.parents[2])  # {emotion}/level_k/NNN.mp4 under {ID}/video/front
    return video.parents[4] / "audio" / rel.with_suffix(".m4a")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _normalised(lm: np.ndarray) -> np.ndarray:
    """Landmarks (T, 68, 2) centred between the eyes, de-rotated and divided by the inter-ocular distance."""
    left, right = lm[:, 36:42].mean(1), lm[:, 42:48].mean(1)
    d = right - left
    iod = np.linalg.norm(d, axis=-1)
    a = -np.arctan2(d[:, 1], d[:, 0])[:, None]
    x = lm - ((left + right) / 2)[:, None]
    rot = np.stack([np.cos(a) * x[..., 0] - np.sin(a) * x[..., 1], np.sin(a) * x[..., 0] + np.cos(a) * x[..., 1]], -1)
    return rot / iod[:, None, None]


def _f0(audio: np.ndarray, sr: int = 16000) -> float:
    """Median pitch of the loud 40 ms frames by autocorrelation (60-500 Hz)."""
    n = int(0.04 * sr)
    frames = np.lib.stride_tricks.sliding_window_view(audio, n)[:: n // 2]
    rms = np.sqrt((frames**2).mean(1))
    pitches = []
    for f in frames[rms > 0.5 * rms.max()]:
        f = f - f.mean()
        ac = np.correlate(f, f, "full")[n - 1 :]
        lo, hi = sr // 500, sr // 60
        pitches.append(sr / (lo + np.argmax(ac[lo:hi])))
    return float(np.median(pitches))


# ---------------------------------------------------------------- files and layouts


def test_layouts_parse_and_every_video_has_its_companions(raw):
    mead_root, hdtf_root = raw / "mead", raw / "hdtf"
    videos = sorted(p.relative_to(mead_root).as_posix() for p in mead_root.rglob("*.mp4"))
    audios = sorted(p.relative_to(mead_root).as_posix() for p in mead_root.rglob("*.m4a"))
    parsed = [MEAD_VIDEO.fullmatch(v) for v in videos]
    assert all(parsed) and all(MEAD_AUDIO.fullmatch(a) for a in audios)
    keys = {(m["id"], m["emotion"], int(m["level"]), int(m["idx"])) for m in parsed}
    expected = {(i, e, k, j) for i in MEAD_IDS[:2] for e in CFG.emotions
                for k in ((1,) if e == "neutral" else (1, 2, 3)) for j in (1, 2)}
    assert keys == expected
    assert [a.replace("/audio/", "/video/front/").replace(".m4a", ".mp4") for a in audios] == videos
    hdtf = sorted(p.name for p in hdtf_root.glob("*.mp4"))
    assert len(hdtf) == 2 and all(HDTF_VIDEO.fullmatch(h) for h in hdtf)
    assert len({HDTF_VIDEO.fullmatch(h)["name"] for h in hdtf}) == 1  # two clips of one speaker
    for video in [*mead_root.rglob("*.mp4"), *hdtf_root.glob("*.mp4")]:
        assert landmarks_path(video).is_file()
    assert not [p for p in raw.rglob(".*")], "temporary files left behind"


def test_default_identities_include_test_and_train_ids():
    default = MEAD_IDS[: SyntheticConfig().mead_identities]
    assert len(set(default) & set(MEAD_TEST_IDS)) >= 2 and len(set(default) - set(MEAD_TEST_IDS)) >= 3
    assert len(set(MEAD_IDS)) == len(MEAD_IDS) and all(re.fullmatch(r"[MW]\d{3}", i) for i in MEAD_IDS)


def test_mead_video_and_audio_decode_with_expected_rates(raw):
    video = _mead(raw, "M003", "happy", 2)
    vr = decord.VideoReader(str(video))
    assert len(vr) == 30 and vr.get_avg_fps() == pytest.approx(30.0)
    assert vr[0].shape == (64, 64, 3)
    ar = decord.AudioReader(str(_m4a(video)), sample_rate=16000, mono=True)
    assert ar.duration() == pytest.approx(1.0, abs=0.01)
    assert 16000 <= ar.shape[1] <= 16000 + 1024  # AAC pads the last 1024-sample frame
    with pytest.raises(Exception):  # MEAD videos carry no audio track (like real MEAD front videos)
        decord.AudioReader(str(video), sample_rate=16000)


def test_hdtf_video_has_25fps_frames_and_a_16k_track(raw):
    video = sorted((raw / "hdtf").glob("*.mp4"))[0]
    vr = decord.VideoReader(str(video))
    assert len(vr) == 25 and vr.get_avg_fps() == pytest.approx(25.0)
    ar = decord.AudioReader(str(video), sample_rate=16000, mono=True)
    assert ar.duration() == pytest.approx(1.0, abs=0.01)
    assert read_audio(video).shape == (16000,)


def test_sidecars_are_float32_pixels_inside_the_frame(raw):
    for video in [*raw.rglob("*.mp4")]:
        lm = np.load(landmarks_path(video))
        assert lm.dtype == np.float32 and lm.shape == (len(decord.VideoReader(str(video))), 68, 2)
        assert np.isfinite(lm).all() and lm.min() > 0 and lm.max() < CFG.size - 1


# ---------------------------------------------------------------- landmarks match the pixels


def test_landmarks_lie_on_the_drawn_face(raw):
    video = _mead(raw, "W009", "neutral", 1)
    frames, lm = read_frames(video).astype(float), np.load(landmarks_path(video))
    t = np.arange(len(lm))

    def colour(points):  # (T, 2) -> (T, 3) decoded colour at the nearest pixel
        x, y = np.round(points).astype(int).T
        return frames[t, y, x]

    cheek = colour(0.5 * lm[:, 3] + 0.5 * lm[:, 31])
    forehead = colour(2 * lm[:, 27] - lm[:, 28])  # just above the nose bridge, between the brows
    lips = colour(0.5 * lm[:, 50] + 0.5 * lm[:, 61])  # middle of the upper lip
    pupil = colour(lm[:, 36:42].mean(1))
    background = frames[:, 1, 1]
    dist = lambda a, b: np.abs(a - b).sum(-1).mean()  # noqa: E731
    assert dist(cheek, forehead) < 25  # both skin
    assert dist(lips, cheek) > 45 and dist(pupil, cheek) > 100 and dist(background, cheek) > 30


def test_mouth_pixels_and_landmarks_open_together():
    clip = draw_clip(mead_identity(0, "M005"), emotion_expression("neutral", 1), emotion_prosody("neutral", 1),
                     seed=3, n_frames=60, fps=30.0, size=128)
    gap = np.linalg.norm(clip.landmarks[:, 66] - clip.landmarks[:, 62], axis=-1)
    # dark mouth-interior pixels inside the lips' bounding box
    dark = []
    for frame, lm in zip(clip.frames.astype(float), clip.landmarks):
        (x0, y0), (x1, y1) = np.floor(lm[48:60].min(0)).astype(int), np.ceil(lm[48:60].max(0)).astype(int)
        box = frame[y0 : y1 + 1, x0 : x1 + 1]
        dark.append((np.abs(box - (70, 20, 28)).sum(-1) < 60).sum())
    assert gap.max() - gap.min() > 4  # pixels at 128 px
    assert np.corrcoef(gap, dark)[0, 1] > 0.9


def test_lip_gap_follows_the_decoded_audio_envelope(raw):
    for emotion, level in (("neutral", 1), ("angry", 3), ("sad", 3)):
        video = _mead(raw, "M003", emotion, level)
        lm = np.load(landmarks_path(video))
        envelope = frame_rms(read_audio(_m4a(video)), 16000, 30.0, len(lm))
        gap = np.linalg.norm(lm[:, 66] - lm[:, 62], axis=-1)
        assert np.corrcoef(gap, envelope)[0, 1] > 0.8, (emotion, level)


def test_face_visible_hides_the_face_and_nans_its_landmarks():
    visible = np.array([True, False, True, False])
    clip = draw_clip(mead_identity(0, "M003"), emotion_expression("happy", 3), EMOTION_PROSODY["happy"], seed=1,
                     n_frames=4, fps=25.0, size=64, face_visible=visible)
    assert clip.frames.shape == (4, 64, 64, 3) and clip.audio.shape == (4 * 640,)
    assert np.isnan(clip.landmarks[~visible]).all() and np.isfinite(clip.landmarks[visible]).all()
    hidden = clip.frames[~visible].reshape(2, -1, 3)
    assert (hidden == hidden[:, :1]).all()  # background only: one colour
    assert len(np.unique(clip.frames[0].reshape(-1, 3), axis=0)) > 20


# ---------------------------------------------------------------- emotion and identity are measurable


def _mean_shape(raw: Path, mead_id: str, emotion: str, level: int) -> np.ndarray:
    return np.mean([_normalised(np.load(landmarks_path(_mead(raw, mead_id, emotion, level, j)))).mean(0)
                    for j in (1, 2)], 0)


def test_expression_displacement_grows_with_level(raw):
    for mead_id in MEAD_IDS[:2]:
        neutral = _mean_shape(raw, mead_id, "neutral", 1)
        for emotion in ("happy", "angry", "sad"):
            # mean displacement (in inter-ocular distances) of the 10 landmarks the expression moves most
            shift = [np.sort(np.linalg.norm(_mean_shape(raw, mead_id, emotion, k) - neutral, axis=-1))[-10:].mean()
                     for k in (1, 2, 3)]
            assert shift[0] < shift[1] < shift[2] and shift[2] > 0.06, (mead_id, emotion, shift)
        corners = lambda s: s[[48, 54], 1].mean() - s[[51, 57], 1].mean()  # noqa: E731 (y grows downward)
        assert corners(_mean_shape(raw, mead_id, "happy", 3)) < corners(neutral) - 0.03
        assert corners(_mean_shape(raw, mead_id, "sad", 3)) > corners(neutral) + 0.03


def _prosody_features(audio: np.ndarray, sr: int = 16000) -> np.ndarray:
    """log loudness of the voiced 40 ms frames, log pitch, voiced share, log spectral centroid."""
    frames = audio[: len(audio) // 640 * 640].reshape(-1, 640)
    rms = np.sqrt((frames**2).mean(1))
    voiced = rms > 0.3 * rms.max()
    spectrum = np.abs(np.fft.rfft(audio))
    centroid = (spectrum * np.arange(len(spectrum))).sum() / spectrum.sum()
    return np.array([np.log(rms[voiced].mean()), np.log(_f0(audio, sr)), voiced.mean(), np.log(centroid)])


def _leave_one_identity_out(feats: dict, ids: list[str], n_clips: int) -> float:
    """Nearest-centroid accuracy on features relative to each identity's neutral mean, standardised."""
    rel = {k: v - np.mean([feats[k[0], "neutral", j] for j in range(n_clips)], 0) for k, v in feats.items()}
    scale = np.std(np.array(list(rel.values())), 0) + 1e-9
    correct = 0
    for test in ids:
        centroids = {e: np.mean([rel[m, e, j] / scale for m in ids if m != test for j in range(n_clips)], 0)
                     for e in EMOTIONS}
        for e in EMOTIONS:
            for j in range(n_clips):
                guess = min(EMOTIONS, key=lambda c: np.sum((rel[test, e, j] / scale - centroids[c]) ** 2))
                correct += guess == e
    return correct / (len(ids) * len(EMOTIONS) * n_clips)


def test_all_eight_emotions_separate_across_identities_face_better_than_voice():
    """Trained on 3 identities, tested on a 4th (level 3): landmarks separate all 8 emotions, prosody
    features separate them well above chance (1/8) but worse, as in the paper's audio-vs-visual finding."""
    ids = ["M003", "W009", "M005", "W011"]
    face, voice = {}, {}
    for m in ids:
        for e in EMOTIONS:
            level = 1 if e == "neutral" else 3
            for j in range(2):
                clip = draw_clip(mead_identity(0, m), emotion_expression(e, level), emotion_prosody(e, level),
                                 seed=100 * j + EMOTIONS.index(e), n_frames=45, fps=30.0, size=32)
                face[m, e, j] = _normalised(clip.landmarks).mean(0).ravel()
                voice[m, e, j] = _prosody_features(clip.audio)
    face_acc, voice_acc = _leave_one_identity_out(face, ids, 2), _leave_one_identity_out(voice, ids, 2)
    assert face_acc > 0.9
    assert 0.35 < voice_acc < face_acc - 0.1


def test_audio_prosody_differs_between_angry_and_sad(raw):
    for mead_id in MEAD_IDS[:2]:
        angry = [read_audio(_m4a(_mead(raw, mead_id, "angry", 3, j))) for j in (1, 2)]
        sad = [read_audio(_m4a(_mead(raw, mead_id, "sad", 3, j))) for j in (1, 2)]
        rms = lambda xs: np.mean([np.sqrt((x**2).mean()) for x in xs])  # noqa: E731
        pitch = lambda xs: np.mean([_f0(x) for x in xs])  # noqa: E731
        assert rms(angry) > 2 * rms(sad)
        assert pitch(angry) > 1.2 * pitch(sad)
        # intensity matters too: level 1 is closer to neutral than level 3
        assert rms([read_audio(_m4a(_mead(raw, mead_id, "angry", 1, j))) for j in (1, 2)]) < rms(angry)


def test_identities_differ_in_face_colours_and_voice(raw):
    a, b = (_mean_shape(raw, m, "neutral", 1) for m in MEAD_IDS[:2])
    same = [_normalised(np.load(landmarks_path(_mead(raw, MEAD_IDS[0], "neutral", 1, j)))).mean(0) for j in (1, 2)]
    within = np.linalg.norm(same[0] - same[1], axis=-1).mean()
    assert np.linalg.norm(a - b, axis=-1).mean() > 3 * within
    frames = [read_frames(_mead(raw, m, "neutral", 1), [0])[0].astype(float) for m in MEAD_IDS[:2]]
    assert np.abs(frames[0] - frames[1]).mean() > 20
    # M003 is a man, W009 a woman: the voices are an octave-ish apart
    f0 = [_f0(read_audio(_m4a(_mead(raw, m, "neutral", 1)))) for m in MEAD_IDS[:2]]
    assert f0[1] > 1.4 * f0[0]


# ---------------------------------------------------------------- determinism


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): _sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_subset_reproduces_clips_other_seed_differs(raw, tmp_path):
    subset = SyntheticConfig(seed=CFG.seed, mead_identities=1, hdtf_speakers=1, emotions=("happy",), levels=(3,),
                             clips_per_level=1, hdtf_clips=1, seconds=CFG.seconds, size=CFG.size, workers=2)
    generate(tmp_path / "a", subset)
    a = _hashes(tmp_path / "a")
    full = _hashes(raw)
    assert a.pop("synthetic.json") and len(a) == 5
    assert [k for k, v in a.items() if full[k] != v] == [], "a subset must reproduce the same bytes"
    generate(tmp_path / "b", SyntheticConfig(**{**subset.__dict__, "seed": CFG.seed + 1}))
    b = _hashes(tmp_path / "b")
    assert set(b) == set(a) | {"synthetic.json"} and [k for k, v in a.items() if b[k] == v] == []


# ---------------------------------------------------------------- command line


def test_cli_generates_and_reports(tmp_path, capsys):
    out = tmp_path / "raw"
    assert main(["--out", str(out), "--mead-identities", "1", "--hdtf-speakers", "1", "--emotions", "neutral",
                 "--clips-per-level", "1", "--hdtf-clips", "1", "--seconds", "0.2", "--size", "32",
                 "--workers", "1"]) == 0
    said = capsys.readouterr().out
    assert "1 MEAD clips" in said and "1 HDTF clips" in said and str(out) in said
    assert len(list(out.rglob("*.mp4"))) == 2 and len(list(out.rglob("*.m4a"))) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--emotions", "happy,joyful"], "unknown emotion 'joyful'"),
        (["--mead-identities", "-1"], "--mead-identities"),
        (["--mead-identities", "0", "--hdtf-speakers", "0"], "nothing to generate"),
        (["--clips-per-level", "0"], "--clips-per-level must be >= 1"),
        (["--hdtf-clips", "0"], "--hdtf-clips must be >= 1"),
        (["--seconds", "0"], "--seconds must be in"),
        (["--size", "65"], "--size must be an even number"),
        (["--size", "16"], "--size must be an even number"),
        (["--levels", "2,4"], "--levels must be"),
        (["--seed", "-1"], "--seed must be >= 0"),
    ],
)
def test_cli_rejects_bad_arguments_in_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "raw"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and message in err[-1]
    assert not (tmp_path / "raw").exists()


def test_cli_rejects_an_output_path_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("x")
    for out in (target, target / "below"):
        with pytest.raises(SystemExit):
            main(["--out", str(out)])
        assert "not a folder" in capsys.readouterr().err
