"""Resize kernels and face crops against the libraries / formulas the references use."""

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from dicetalk.metrics.preprocess import (as_frames, crop_resize, fixed_boxes, landmark_boxes, medfilt,
                                         resize_bilinear_cv2, resize_bilinear_tf1, resize_nearest_pil,
                                         syncnet_boxes, to_uint8)


def tf1_bilinear_loop(img, out_h, out_w):
    """TF1 resize_bilinear (align_corners=False, half_pixel_centers=False), pixel by pixel."""
    in_h, in_w = img.shape[-2:]
    out = np.zeros(img.shape[:-2] + (out_h, out_w))
    for y in range(out_h):
        sy = y * in_h / out_h
        y0 = int(np.floor(sy))
        y1, fy = min(y0 + 1, in_h - 1), sy - y0
        for x in range(out_w):
            sx = x * in_w / out_w
            x0 = int(np.floor(sx))
            x1, fx = min(x0 + 1, in_w - 1), sx - x0
            top = img[..., y0, x0] + (img[..., y0, x1] - img[..., y0, x0]) * fx
            bottom = img[..., y1, x0] + (img[..., y1, x1] - img[..., y1, x0]) * fx
            out[..., y, x] = top + (bottom - top) * fy
    return out


@pytest.mark.parametrize("size", [(7, 5), (13, 17), (9, 11)])
def test_tf1_bilinear_matches_formula(size):
    img = np.random.default_rng(0).integers(0, 256, (2, 3, 9, 11)).astype(np.float64)
    ours = resize_bilinear_tf1(torch.from_numpy(img).float(), size).double().numpy()
    np.testing.assert_allclose(ours, tf1_bilinear_loop(img, *size), atol=1e-3)


def test_cv2_bilinear_and_pil_nearest_match_the_libraries():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    for size in [(24, 24), (80, 80)]:
        ours = resize_bilinear_cv2(x, size)[0].permute(1, 2, 0).numpy().astype(int)
        ref = cv2.resize(img, size[::-1], interpolation=cv2.INTER_LINEAR).astype(int)
        assert np.abs(ours - ref).max() <= 1  # cv2 interpolates uint8 in fixed point
        ours = resize_nearest_pil(x, size)[0].permute(1, 2, 0).numpy()
        ref = np.asarray(Image.fromarray(img).resize(size[::-1], Image.NEAREST))
        np.testing.assert_array_equal(ours, ref)


def test_uint8_conversion_and_layout():
    x = torch.tensor([0.0, 0.5, 1.0, 0.999]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    assert to_uint8(x)[0, 0].flatten().tolist() == [0, 128, 255, 255]  # rounded, not truncated
    assert as_frames(torch.zeros(2, 5, 3, 4, 4, dtype=torch.uint8)).shape == (10, 3, 4, 4)
    with pytest.raises(TypeError, match="uint8 or float"):
        to_uint8(torch.zeros(3, dtype=torch.int32))


def syncnet_crop_reference(frame, box, cs=0.4, pad_value=110):
    """run_pipeline's crop, as its formula reads: pad the frame, then slice around the box centre."""
    half = max(box[2] - box[0], box[3] - box[1]) / 2
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    pad = int(half * (1 + 2 * cs))
    padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), constant_values=pad_value)
    my, mx = cy + pad, cx + pad
    rows = slice(int(my - half), int(my + half * (1 + 2 * cs)))
    cols = slice(int(mx - half * (1 + cs)), int(mx + half * (1 + cs)))
    return padded[rows, cols]


def test_syncnet_crop_matches_reference_formula():
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, (60, 70, 3), dtype=np.uint8)
    # A constant track (the median filter keeps it) near the border so that padding shows.
    box = np.array([5.3, 30.2, 30.9, 58.6])
    boxes = syncnet_boxes(np.tile(box, (20, 1)))
    ref = syncnet_crop_reference(frame, box)
    x0, y0, x1, y1 = boxes[10].tolist()
    assert (y1 - y0, x1 - x0) == ref.shape[:2]
    crop = crop_resize(torch.from_numpy(frame).permute(2, 0, 1)[None], boxes[10:11], ref.shape[0],
                       lambda img, size: img, pad_value=110)
    np.testing.assert_array_equal(crop[0].permute(1, 2, 0).numpy(), ref)


def test_medfilt_equals_scipy():
    from scipy.signal import medfilt as scipy_medfilt

    x = np.random.default_rng(3).standard_normal(30)
    for kernel in (1, 5, 13):
        np.testing.assert_array_equal(medfilt(x, kernel), scipy_medfilt(x, kernel))


def test_syncnet_boxes_median_filter_over_time():
    boxes = np.tile([10.0, 10.0, 50.0, 50.0], (20, 1))
    boxes[7] = [100.0, 100.0, 300.0, 300.0]  # one wild detection is filtered out
    out = syncnet_boxes(boxes)
    assert torch.equal(out[7], out[8])
    short = syncnet_boxes(np.tile([10.0, 10.0, 50.0, 50.0], (4, 1)))  # shorter than the kernel
    assert (short[:, 2] - short[:, 0] > 0).all()


def test_crop_outside_the_frame_is_padding():
    frame = torch.arange(12, dtype=torch.uint8).view(1, 1, 3, 4).expand(1, 3, 3, 4)
    keep = lambda img, size: img  # noqa: E731
    for box in ([-2, -1, 2, 3], [3, 1, 7, 5], [6, 5, 9, 8]):  # corner overlap, edge overlap, fully outside
        crop = crop_resize(frame, torch.tensor([box]), 4, keep, pad_value=99)[0, 0]
        padded = np.full((20, 20), 99)
        padded[8:11, 8:12] = np.arange(12).reshape(3, 4)
        x0, y0, x1, y1 = box
        np.testing.assert_array_equal(crop.numpy(), padded[8 + y0:8 + y1, 8 + x0:8 + x1])


def test_landmark_and_fixed_boxes():
    marks = np.array([[[-3.0, 5.5], [20.2, 40.9], [10.0, 12.0]]])
    assert landmark_boxes(marks, height=32, width=16).tolist() == [[0, 5, 16, 32]]  # clipped to frame
    assert fixed_boxes(2, 512, 512, (0.25, 0.0, 0.75, 0.5)).tolist() == [[128, 0, 384, 256]] * 2
    with pytest.raises(ValueError, match="landmarks"):
        landmark_boxes(np.zeros((2, 68, 3)), 10, 10)
    with pytest.raises(ValueError, match="crop box"):
        fixed_boxes(1, 10, 10, (0.5, 0.0, 0.4, 1.0))
