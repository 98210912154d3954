"""Landmark backends, crop boxes and expression features (dicetalk.face)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import procrustes

from dicetalk import face
from prep_fixtures import template


def _similarity(points: np.ndarray, angle: float, scale: float, shift) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return scale * points @ np.array([[c, s], [-s, c]]) + np.asarray(shift)


def test_align_to_matches_scipy_procrustes():
    rng = np.random.default_rng(0)
    reference = template().astype(np.float64)
    shapes = np.stack([_similarity(reference, rng.uniform(-1, 1), rng.uniform(0.5, 3), rng.normal(0, 5, 2))
                       + rng.normal(0, 0.01, reference.shape) for _ in range(5)])
    ours = face.align_to(face._normalise(shapes), face._normalise(reference))
    for shape, aligned in zip(shapes, ours):
        _, expected, _ = procrustes(reference, shape)  # standardises both, then rotates + scales the second
        np.testing.assert_allclose(aligned, expected, atol=1e-10)


def test_align_to_never_reflects():
    reference = face._normalise(template().astype(np.float64))
    mirrored = reference * np.array([-1.0, 1.0])
    aligned = face.align_to(mirrored[None], reference)[0]
    transform, *_ = np.linalg.lstsq(mirrored, aligned, rcond=None)
    assert np.linalg.det(transform) > 0


def test_expression_features_remove_pose_and_keep_expression():
    rng = np.random.default_rng(1)
    neutral = template()
    talking = neutral.copy()
    talking[48:, 1] += (talking[48:, 1] - 0.76) * 2.0  # open mouth
    poses = [(rng.uniform(-0.4, 0.4), rng.uniform(20, 200), rng.uniform(0, 500, 2)) for _ in range(6)]
    landmarks = np.stack([_similarity(shape, *pose) for shape in (neutral, talking) for pose in poses])
    features = face.expression_features(landmarks.astype(np.float32))
    assert features.shape == (12, 136) and features.dtype == np.float32
    np.testing.assert_allclose(features[:6], np.broadcast_to(features[0], (6, 136)), atol=1e-5)
    np.testing.assert_allclose(features[6:], np.broadcast_to(features[6], (6, 136)), atol=1e-5)
    assert np.abs(features[0] - features[6]).max() > 0.01
    points = features[0].reshape(68, 2)
    np.testing.assert_allclose(points.mean(0), 0, atol=1e-6)
    eye_line = points[42:48].mean(0) - points[36:42].mean(0)
    assert abs(eye_line[1]) < 1e-6 and eye_line[0] > 0  # canonical pose: eyes horizontal, left to right


def test_fill_missing_interpolates_linearly_and_holds_edges():
    lm = np.zeros((5, 68, 2), np.float32)
    lm[1], lm[3] = 2.0, 6.0
    lm[[0, 2, 4]] = np.nan
    filled = face.fill_missing(lm)
    np.testing.assert_allclose(filled[:, 0, 0], [2, 2, 4, 6, 6])
    np.testing.assert_array_equal(face.missing_frames(lm), [True, False, True, False, True])
    with pytest.raises(face.FaceError):
        face.fill_missing(np.full((3, 68, 2), np.nan, np.float32))


def test_crop_boxes_square_constant_and_inside_the_frame():
    rng = np.random.default_rng(2)
    lm = np.broadcast_to(template() * 40 + [100, 60], (30, 68, 2)).copy()
    lm += rng.normal(0, 3, (30, 1, 2))  # head jitter
    config = face.CropConfig(scale=1.5, shift_up=0.1, smooth=5, size_quantile=0.9)
    boxes = face.crop_boxes(lm, 320, 240, config)
    sides = boxes[:, 2] - boxes[:, 0]
    np.testing.assert_allclose(sides, boxes[:, 3] - boxes[:, 1], rtol=1e-6)
    np.testing.assert_allclose(sides, sides[0], rtol=1e-6)
    landmark_sides = np.ptp(lm, axis=1).max(axis=1)
    assert sides[0] == pytest.approx(np.quantile(landmark_sides, 0.9) * 1.5, rel=1e-5)
    raw_centres = (lm.min(1) + lm.max(1)) / 2
    assert np.diff((boxes[:, 0] + boxes[:, 2]) / 2).std() < np.diff(raw_centres[:, 0]).std() / 2  # smoothed
    fixed = face.crop_boxes(lm, 320, 240, face.CropConfig(smooth=np.inf))
    np.testing.assert_allclose(fixed, np.broadcast_to(fixed[0], fixed.shape))

    # A face at the corner slides the box back in; a face bigger than the frame shrinks it to fit.
    corner = face.crop_boxes(template()[None] * 40 + [-5, 210], 320, 240, config)[0]
    assert corner[0] == 0 and corner[3] == pytest.approx(240)
    huge = face.crop_boxes(template()[None] * 400, 320, 240, config)[0]
    np.testing.assert_allclose(huge, [80, 0, 320, 240], atol=1e-4)  # centre x 200 is the right-most fit


def test_crop_and_resize_and_crop_coordinates():
    frames = np.zeros((2, 60, 80, 3), np.uint8)
    frames[:, 30, 50] = 255  # one bright pixel at x=50, y=30
    boxes = np.array([[40, 20, 60, 40], [35.4, 10.6, 55.4, 30.6]], np.float32)
    crops, used = face.crop_and_resize(frames, boxes, 20)  # no resize: crops are plain slices
    np.testing.assert_array_equal(used, [[40, 20, 60, 40], [35, 11, 55, 31]])
    assert crops[0, 10, 10].max() == 255 and crops[1, 19, 15].max() == 255
    assert crops.sum() == 2 * 3 * 255
    point = np.array([[[50.0, 30.0]]] * 2, np.float32).repeat(68, axis=1)
    crop_points = face.to_crop_coords(point, used, 20)
    np.testing.assert_allclose(crop_points[0, 0], [10, 10])
    big, used_big = face.crop_and_resize(frames, boxes, 40)
    assert big.shape == (2, 40, 40, 3)
    np.testing.assert_allclose(face.to_crop_coords(point, used_big, 40)[0, 0], [20, 20])


def test_face_mask_boxes_from_landmarks():
    lm = np.zeros((1, 68, 2), np.float32)
    lm[0, :, 0] = np.linspace(10, 30, 68)  # x 10..30
    lm[0, :, 1] = np.linspace(20, 40, 68)  # y 20..40
    box = face.face_mask_boxes(lm, size=50, forehead=0.3, margin=0.1)[0]
    np.testing.assert_allclose(box, np.array([10 - 2, 20 - 2 - 6, 30 + 2, 40 + 2]) / 50, rtol=1e-6)
    assert face.face_mask_boxes(lm * 3, size=50).max() == 1.0  # clipped to the crop


def _clip(video, n_source=30, sources=None):
    sources = np.arange(0, n_source, 2) if sources is None else sources
    return face.ClipFrames("M003_angry_3_001", video, sources, n_source, read=None)


def test_sidecar_backend_picks_source_rows(tmp_path):
    video = tmp_path / "001.mp4"
    rows = np.random.default_rng(0).normal(size=(30, 68, 2)).astype(np.float32)
    np.save(tmp_path / "001.landmarks.npy", rows)
    clip = _clip(video)
    np.testing.assert_array_equal(face.SidecarLandmarks()(clip), rows[::2])
    np.save(tmp_path / "001.landmarks.npy", rows[:7])
    with pytest.raises(face.FaceError, match="001.landmarks.npy: 7 rows"):
        face.SidecarLandmarks()(clip)
    with pytest.raises(face.FaceError, match="not found"):
        face.SidecarLandmarks()(_clip(tmp_path / "002.mp4"))


def test_precomputed_backend_accepts_source_or_output_rate_and_3d(tmp_path):
    rows = np.random.default_rng(0).normal(size=(15, 68, 3)).astype(np.float32)
    np.save(tmp_path / "M003_angry_3_001.npy", rows)  # already at the output rate, with depth
    np.testing.assert_array_equal(face.PrecomputedLandmarks(tmp_path)(_clip(tmp_path / "x.mp4")), rows[..., :2])
    with pytest.raises(face.FaceError, match="not found"):
        face.PrecomputedLandmarks(tmp_path / "missing")


def test_face_alignment_offline_without_weights_names_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("DICETALK_OFFLINE", "1")
    with pytest.raises(face.FaceError) as info:
        face.FaceAlignmentLandmarks(device="cpu")
    message = str(info.value)
    for name in face.FACE_ALIGNMENT_FILES:
        assert name in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "\n" not in message


class _FakeFaceAlignment:
    """Stands in for face_alignment.FaceAlignment: two faces in frame 0, none in frame 1, one in frame 2."""

    def __init__(self):
        self.shapes = []

    def get_landmarks_from_batch(self, batch, return_bboxes=False):
        self.shapes.append(tuple(batch.shape))
        small, large = np.full((68, 2), 1.0), np.full((68, 2), 7.0)
        landmarks = [np.concatenate([small, large]), [], large]
        boxes = [[np.array([0, 0, 2, 2, 0.9]), np.array([0, 0, 5, 5, 0.9])], [], [np.array([0, 0, 5, 5, 0.9])]]
        return landmarks[: len(batch)], None, boxes[: len(batch)]


def test_face_alignment_backend_keeps_largest_face_and_rescales():
    fake = _FakeFaceAlignment()
    backend = face.FaceAlignmentLandmarks(batch_size=3, max_side=40, model=fake)
    frames = np.zeros((3, 60, 80, 3), np.uint8)
    clip = face.ClipFrames("c", None, np.arange(3), 3, read=lambda positions: frames[positions])
    out = backend(clip)
    assert fake.shapes == [(3, 3, 30, 40)]  # shrunk to max_side before detection, RGB channels first
    np.testing.assert_allclose(out[0], 7.0 * 2)  # the larger face, back in source pixels
    assert np.isnan(out[1]).all()
    np.testing.assert_allclose(out[2], 14.0)
