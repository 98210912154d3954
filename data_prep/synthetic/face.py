"""Procedural cartoon faces whose 68 landmarks (iBUG / face-alignment order) are known exactly.

Geometry lives in *face units*: origin between the eyes' row and the nose, x to the image right, y down, one
unit = half the face width. A face is a neutral shape (identity traits) plus linear displacement fields, one
per expression parameter, plus two per-frame fields (mouth opening, blink); a similarity transform per frame
(head pose) maps it to pixels. The drawing is built *from* the landmarks, so the sidecar matches the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from PIL import Image, ImageDraw

# Index groups of the 68-point convention (image-left = the subject's right side).
JAW = np.arange(0, 17)
BROW_L, BROW_R = np.arange(17, 22), np.arange(22, 27)  # both run image-left -> image-right
NOSE_BRIDGE, NOSE_BASE = np.arange(27, 31), np.arange(31, 36)
EYE_L, EYE_R = np.arange(36, 42), np.arange(42, 48)  # outer/inner corner, 2 upper lid, corner, 2 lower lid
MOUTH_OUTER, MOUTH_INNER = np.arange(48, 60), np.arange(60, 68)
UPPER_LID = np.array([37, 38, 43, 44])
LOWER_LID = np.array([40, 41, 46, 47])

_BROW_TAPER = np.array([0.55, 0.9, 1.0, 1.0, 0.9])  # image-left brow, outer -> inner end
SUPERSAMPLE = 2  # draw at 2x and box-filter down: sub-pixel motion shows up as grey levels


@dataclass(frozen=True)
class FaceTraits:
    """Identity-specific shape, colours and mannerisms (all lengths in face units unless noted)."""

    unit: float  # face half-width as a fraction of the image size
    jaw_top: float  # y of jaw points 0 and 16
    face_len: float  # chin depth below jaw_top
    chin_round: float  # exponent of the jaw curve: < 1 squarer, > 1 more pointed
    forehead: float  # forehead height above jaw_top
    eye_y: float
    eye_sep: float  # half distance between eye centres
    eye_w: float
    eye_h: float  # half height of the open eye
    brow_gap: float  # brow centre height above the eye centre
    brow_thick: float
    nose_tip: float  # y of point 30
    nose_w: float
    mouth_y: float
    mouth_w: float  # half width of the mouth
    lip: float  # lip thickness
    hairline: float  # y of the hairline at the midline
    long_hair: bool
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    iris: tuple[int, int, int]
    lips: tuple[int, int, int]
    shirt: tuple[int, int, int]
    background: tuple[int, int, int]
    bob_amp: float  # head bob amplitude, fraction of the image size
    bob_hz: float
    blink_period: float  # seconds between blinks


def _rgb(c: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.round(c), 0, 255))


def random_traits(rng: np.random.Generator, female: bool) -> FaceTraits:
    """Draw an identity. ``female`` only changes the hair length prior (voices differ in speech.py)."""
    u = rng.uniform
    tone = u(0, 1)
    skin = np.array([245, 210, 185]) * (1 - tone) + np.array([115, 75, 50]) * tone + rng.normal(0, 6, 3)
    hair = np.array([[25, 20, 18], [85, 55, 35], [150, 110, 60], [205, 170, 110], [120, 50, 25], [150, 150, 150]])
    hair = hair[rng.integers(len(hair))] + rng.normal(0, 8, 3)
    iris = np.array([[90, 60, 30], [60, 100, 150], [70, 110, 70], [50, 40, 30]])[rng.integers(4)]
    return FaceTraits(
        unit=u(0.22, 0.26),
        jaw_top=u(-0.22, -0.1),
        face_len=u(0.95, 1.25),
        chin_round=u(0.75, 1.35),
        forehead=u(0.85, 1.05),
        eye_y=u(-0.36, -0.28),
        eye_sep=u(0.33, 0.44),
        eye_w=u(0.24, 0.32),
        eye_h=u(0.06, 0.085),
        brow_gap=u(0.18, 0.27),
        brow_thick=u(0.045, 0.075),
        nose_tip=u(0.1, 0.22),
        nose_w=u(0.12, 0.2),
        mouth_y=u(0.45, 0.58),
        mouth_w=u(0.26, 0.36),
        lip=u(0.08, 0.12),
        hairline=u(-0.98, -0.82),
        long_hair=bool(rng.random() < (0.8 if female else 0.15)),
        skin=_rgb(skin),
        hair=_rgb(hair),
        iris=_rgb(iris),
        lips=_rgb(skin * np.array([0.85, 0.55, 0.55]) + np.array([25, 0, 5])),
        shirt=_rgb(rng.uniform(30, 220, 3)),
        background=_rgb(rng.uniform(70, 200, 3)),
        bob_amp=u(0.003, 0.02),
        bob_hz=u(0.5, 1.8),
        blink_period=u(2.0, 5.0),
    )


@dataclass(frozen=True)
class Expression:
    """Expression parameters: additive offsets from the neutral face, 0 = neutral, ~1 = a strong expression."""

    brow_raise: float = 0.0  # both brows up (negative: down)
    brow_inner: float = 0.0  # inner brow ends up (sad, fear); negative pulls them down (angry)
    brow_squeeze: float = 0.0  # inner brow ends toward the midline
    eye_wide: float = 0.0  # upper lids up (negative: narrowed eyes)
    cheek_raise: float = 0.0  # lower lids pushed up by the cheeks
    mouth_corner: float = 0.0  # both corners up (negative: down)
    mouth_asym: float = 0.0  # image-right corner only: up and out (contempt)
    mouth_width: float = 0.0  # relative stretch of the mouth
    upper_lip: float = 0.0  # upper lip raised off the lower one (disgust)
    lip_press: float = 0.0  # thinner, pressed lips
    jaw_open: float = 0.0  # baseline mouth opening in face units, added to the speech-driven one
    blush: float = 0.0  # cheek colour (drawing only)

    def scaled(self, k: float) -> "Expression":
        return Expression(**{f.name: getattr(self, f.name) * k for f in fields(self)})

    def plus(self, other: "Expression") -> "Expression":
        return Expression(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def as_array(self) -> np.ndarray:
        return np.array([getattr(self, f.name) for f in fields(self)])


# Full-intensity (level 3) expressions. Each emotion has a signature the others lack, so landmarks alone
# separate all eight: contempt is the only asymmetric one, disgust the only raised upper lip, fear raises the
# inner brows *and* widens the eyes, surprise raises whole brows and opens the jaw, and so on.
EMOTION_EXPRESSIONS: dict[str, Expression] = {
    "angry": Expression(brow_raise=-0.35, brow_inner=-0.9, brow_squeeze=1.0, eye_wide=-0.45, mouth_corner=-0.3,
                        lip_press=1.0, mouth_width=-0.08),
    "contempt": Expression(mouth_asym=1.0, eye_wide=-0.15, brow_raise=0.1),
    "disgusted": Expression(upper_lip=1.0, brow_raise=-0.45, brow_squeeze=0.4, eye_wide=-0.3, cheek_raise=0.4,
                            mouth_corner=-0.35),
    "fear": Expression(brow_raise=0.55, brow_inner=0.8, brow_squeeze=0.5, eye_wide=0.7, mouth_width=0.22,
                       mouth_corner=-0.25, jaw_open=0.06),
    "happy": Expression(mouth_corner=1.0, mouth_width=0.18, cheek_raise=0.7, brow_raise=0.1, blush=1.0),
    "neutral": Expression(),
    "sad": Expression(brow_inner=0.9, brow_raise=-0.15, eye_wide=-0.25, mouth_corner=-0.9, lip_press=0.35),
    "surprised": Expression(brow_raise=1.0, eye_wide=0.8, jaw_open=0.2, mouth_width=-0.2),
}
LEVEL_SCALE = {1: 0.35, 2: 0.65, 3: 1.0}


def emotion_expression(emotion: str, level: int) -> Expression:
    """The expression of a MEAD emotion at intensity level 1-3 (magnitude grows with the level)."""
    return EMOTION_EXPRESSIONS[emotion].scaled(LEVEL_SCALE[level])


def neutral_shape(t: FaceTraits) -> np.ndarray:
    """(68, 2) landmarks of the neutral face with a closed mouth, in face units."""
    p = np.zeros((68, 2))
    a = np.linspace(0, np.pi, 17)  # jaw: image-left temple -> chin -> image-right temple
    p[JAW, 0] = -np.sign(np.cos(a)) * np.abs(np.cos(a)) ** (1 / t.chin_round) * (1 - 0.12 * np.sin(a) ** 2)
    p[JAW, 1] = t.jaw_top + t.face_len * np.sin(a) ** t.chin_round
    brow_y = t.eye_y - t.brow_gap
    bx = t.eye_sep + np.linspace(-0.2, 0.2, 5) * (t.eye_w / 0.28)  # outer -> inner after the flip below
    arch = 0.06 * np.sin(np.linspace(0.2, np.pi - 0.2, 5))
    p[BROW_L] = np.stack([-bx[::-1], brow_y - arch], 1)
    p[BROW_R] = np.stack([bx, brow_y - arch[::-1]], 1)
    p[NOSE_BRIDGE] = np.stack([np.zeros(4), np.linspace(t.eye_y + 0.04, t.nose_tip, 4)], 1)
    nb = t.nose_tip + 0.07
    p[NOSE_BASE] = np.stack([np.linspace(-t.nose_w, t.nose_w, 5), nb + np.array([-0.03, 0.0, 0.015, 0.0, -0.03])], 1)
    for eye, cx in ((EYE_L, -t.eye_sep), (EYE_R, t.eye_sep)):
        ex = np.array([-0.5, -1 / 6, 1 / 6, 0.5, 1 / 6, -1 / 6]) * t.eye_w
        ey = np.array([0, -1, -1, 0, 1, 1]) * t.eye_h
        ey[[4, 5]] *= 0.8  # lower lid flatter than the upper one
        p[eye] = np.stack([cx + ex, t.eye_y + ey], 1)
    m, h = t.mouth_w, t.lip
    ox = np.array([-1, -0.6, -0.25, 0, 0.25, 0.6, 1, 0.6, 0.25, 0, -0.25, -0.6]) * m
    oy = np.array([0, -0.75, -1.0, -0.8, -1.0, -0.75, 0, 0.9, 1.15, 1.2, 1.15, 0.9]) * h
    p[MOUTH_OUTER] = np.stack([ox, t.mouth_y + oy], 1)
    ix = np.array([-0.85, -0.35, 0, 0.35, 0.85, 0.35, 0, -0.35]) * m
    iy = np.array([0, -0.1, -0.1, -0.1, 0, 0.1, 0.1, 0.1]) * 0.1 * h
    p[MOUTH_INNER] = np.stack([ix, t.mouth_y + iy], 1)
    return p


def _field(pairs: dict[int, tuple[float, float]]) -> np.ndarray:
    f = np.zeros((68, 2))
    for i, d in pairs.items():
        f[i] = d
    return f


def _mirror(left: dict[int, tuple[float, float]], right_of: dict[int, int]) -> dict[int, tuple[float, float]]:
    """Add the mirror image (x negated) of each displacement under the mirrored landmark index."""
    out = dict(left)
    for i, d in left.items():
        out[right_of[i]] = (-d[0], d[1])
    return out


_BROW_MIRROR = {17: 26, 18: 25, 19: 24, 20: 23, 21: 22}
_MOUTH_MIRROR = {48: 54, 49: 53, 50: 52, 59: 55, 58: 56, 60: 64, 61: 63, 67: 65}


def open_field() -> np.ndarray:
    """Displacement of one face unit of mouth opening: the jaw and lower lip drop, the corners draw in."""
    return _field({66: (0, 1.0), 65: (0, 0.85), 67: (0, 0.85), 57: (0, 1.0), 56: (0, 0.85), 58: (0, 0.85), 55: (0, 0.5),
         59: (0, 0.5), 62: (0, -0.15), 61: (0, -0.12), 63: (0, -0.12), 51: (0, -0.12), 50: (0, -0.1),
         52: (0, -0.1), 49: (0, -0.05), 53: (0, -0.05), 48: (0.12, 0.4), 54: (-0.12, 0.4), 60: (0.12, 0.4),
         64: (-0.12, 0.4), 8: (0, 0.9), 7: (0, 0.8), 9: (0, 0.8), 6: (0, 0.6), 10: (0, 0.6), 5: (0, 0.35),
         11: (0, 0.35), 4: (0, 0.15), 12: (0, 0.15)})


def expression_fields(t: FaceTraits, base: np.ndarray) -> np.ndarray:
    """(n_params, 68, 2) displacement per unit of each Expression parameter (``blush`` moves nothing)."""
    inner = {17: 0.0, 18: 0.1, 19: 0.3, 20: 0.6, 21: 1.0}
    eh = t.eye_h
    width = np.zeros((68, 2))
    mouth = np.r_[MOUTH_OUTER, MOUTH_INNER]
    width[mouth, 0] = base[mouth, 0]  # stretch about the midline
    by_name = {
        "brow_raise": _field({**{i: (0, -0.12) for i in np.r_[BROW_L, BROW_R]}, **{i: (0, -0.012) for i in UPPER_LID}}),
        "brow_inner": _field(_mirror({i: (0, -0.14 * w) for i, w in inner.items()}, _BROW_MIRROR)),
        "brow_squeeze": _field(_mirror({i: (0.08 * w, 0.03 * w) for i, w in inner.items()}, _BROW_MIRROR)),
        "eye_wide": _field({**{i: (0, -0.9 * eh) for i in UPPER_LID}, **{i: (0, 0.3 * eh) for i in LOWER_LID}}),
        "cheek_raise": _field({i: (0, -0.55 * eh) for i in LOWER_LID}),
        "mouth_corner": _field(_mirror({48: (-0.03, -0.11), 60: (-0.03, -0.1), 49: (0, -0.04), 59: (0, -0.05),
                                        61: (0, -0.03), 67: (0, -0.03)}, _MOUTH_MIRROR)),
        "mouth_asym": _field({54: (0.05, -0.12), 64: (0.05, -0.11), 53: (0.02, -0.05), 55: (0.02, -0.05),
                              63: (0.02, -0.04), 65: (0.02, -0.04)}),
        "mouth_width": width,
        "upper_lip": _field({50: (0, -0.09), 51: (0, -0.08), 52: (0, -0.09), 49: (0, -0.06), 53: (0, -0.06),
                             61: (0, -0.08), 62: (0, -0.09), 63: (0, -0.08), 31: (0, -0.02), 32: (0, -0.03),
                             33: (0, -0.035), 34: (0, -0.03), 35: (0, -0.02)}),
        "lip_press": _field({**{i: (0, 0.035) for i in range(49, 54)}, **{i: (0, -0.035) for i in range(55, 60)}}),
        "jaw_open": open_field(),
        "blush": np.zeros((68, 2)),
    }
    return np.stack([by_name[f.name] for f in fields(Expression)])


def blink_curve(n_frames: int, fps: float, period: float, phase: float, duration: float = 0.16) -> np.ndarray:
    """Eye closure in [0, 1] per frame: a triangular blink every ``period`` seconds, starting at ``phase``."""
    t = np.arange(n_frames) / fps
    since = np.mod(t - phase, period)
    dist = np.minimum(since, period - since)  # time to the nearest blink centre
    return np.clip(1 - dist / (duration / 2), 0, 1)


@dataclass(frozen=True)
class Pose:
    """Per-frame head pose: centre (pixels), pixels per face unit, roll (radians). All arrays of shape (T,)."""

    cx: np.ndarray
    cy: np.ndarray
    scale: np.ndarray
    roll: np.ndarray

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Face units (T, K, 2) or (K, 2) -> pixel coordinates (T, K, 2)."""
        c, s = np.cos(self.roll)[:, None], np.sin(self.roll)[:, None]
        x, y = points[..., 0], points[..., 1]
        k = self.scale[:, None]
        return np.stack([self.cx[:, None] + k * (c * x - s * y), self.cy[:, None] + k * (s * x + c * y)], -1)


def random_pose(rng: np.random.Generator, t: FaceTraits, n_frames: int, fps: float, size: int) -> Pose:
    """A mild per-clip pose (offset, scale, roll) with slow drift and the identity's head bob."""
    time = np.arange(n_frames) / fps
    drift = lambda hz, amp: amp * np.sin(2 * np.pi * hz * time + rng.uniform(0, 2 * np.pi))  # noqa: E731
    bob = t.bob_amp * size * np.sin(2 * np.pi * t.bob_hz * time + rng.uniform(0, 2 * np.pi))
    return Pose(
        cx=size * (0.5 + rng.normal(0, 0.012)) + drift(rng.uniform(0.1, 0.4), 0.006 * size),
        cy=size * (0.46 + rng.normal(0, 0.012)) + bob,
        scale=t.unit * size * (1 + rng.normal(0, 0.03)) * (1 + drift(rng.uniform(0.1, 0.3), 0.01)),
        roll=np.deg2rad(rng.normal(0, 2.0) + drift(rng.uniform(0.1, 0.4), 1.5)),
    )


def face_landmarks(t: FaceTraits, expr: Expression, mouth_open: np.ndarray, blink: np.ndarray) -> np.ndarray:
    """(T, 68, 2) landmarks in face units for per-frame mouth opening (face units) and eye closure in [0, 1]."""
    base = neutral_shape(t)
    shaped = base + np.tensordot(expr.as_array(), expression_fields(t, base), axes=1)
    # Blinking brings each lid to the eye's horizontal midline, whatever the expression made of it.
    mid = np.zeros((68, 2))
    for lids, eye in ((np.array([37, 38, 40, 41]), EYE_L), (np.array([43, 44, 46, 47]), EYE_R)):
        mid[lids, 1] = shaped[eye, 1].mean() - shaped[lids, 1]
    return (shaped[None] + mouth_open[:, None, None] * open_field()[None] + 0.95 * blink[:, None, None] * mid[None])


def _closed_curve(p: np.ndarray, steps: int = 4) -> np.ndarray:
    """Closed Catmull-Rom spline through the (..., K, 2) points, ``steps`` samples per segment."""
    s = np.linspace(0, 1, steps, endpoint=False)[:, None, None]
    p0, p1, p2, p3 = (np.roll(p, k, -2)[..., None, :, :] for k in (1, 0, -1, -2))
    c = 0.5 * (2 * p1 + (-p0 + p2) * s + (2 * p0 - 5 * p1 + 4 * p2 - p3) * s**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * s**3)
    c = np.swapaxes(c, -3, -2)  # (..., K, steps, 2): segment by segment
    return c.reshape(*p.shape[:-2], -1, 2)


def _ellipse(cx: float, cy: float, rx: float, ry: float, a0: float = 0, a1: float = 2 * np.pi, n: int = 24):
    a = np.linspace(a0, a1, n)
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], 1)


def _static_shapes(t: FaceTraits) -> dict[str, np.ndarray]:
    """Face-unit outlines that do not move with the expression (forehead, hair, ears, neck)."""
    w_top = 0.97
    shapes = {
        # upper half-ellipse from the image-right temple over the top to the image-left temple
        "forehead": _ellipse(0, t.jaw_top, w_top, t.forehead, 0, -np.pi, 20),
        "ear_l": _ellipse(-0.98, t.jaw_top + 0.08, 0.1, 0.19, n=16),
        "ear_r": _ellipse(0.98, t.jaw_top + 0.08, 0.1, 0.19, n=16),
        "neck": np.array([[-0.38, 0.4], [0.38, 0.4], [0.42, 2.2], [-0.42, 2.2]]),
    }
    cap = _ellipse(0, t.jaw_top - 0.02, w_top + 0.09, t.forehead + 0.14, -0.06, -np.pi + 0.06, 24)
    fx = np.linspace(-w_top, w_top, 9)
    fringe = np.stack([fx, t.hairline + 0.5 * (t.jaw_top - 0.1 - t.hairline) * (np.abs(fx) / w_top) ** 3], 1)
    shapes["hair_cap"] = np.r_[cap, fringe]
    if t.long_hair:
        shapes["hair_back"] = np.r_[_ellipse(0, t.jaw_top, 1.22, t.forehead + 0.2, 0, -np.pi, 16),
                                    [[-1.25, 1.6], [1.25, 1.6]]]
    return shapes


def _body(t: FaceTraits, pose: Pose) -> np.ndarray:
    """Shoulders (K, 2) in pixels at the clip's mean pose (the torso does not follow the head bob)."""
    k, cx, cy = pose.scale.mean(), pose.cx.mean(), pose.cy.mean()
    y0 = cy + k * (t.jaw_top + t.face_len + 0.45)
    sh = np.array([[-0.5, 0], [0.5, 0], [1.9, 0.6], [2.3, 3.0], [-2.3, 3.0], [-1.9, 0.6]])
    return np.stack([cx + k * sh[:, 0], y0 + k * sh[:, 1]], 1)


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], w: float) -> tuple[int, int, int]:
    return _rgb(np.array(a) * (1 - w) + np.array(b) * w)


def _interp_polyline(x: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Per-frame linear interpolation of x (T, N), within [px[:, 0], px[:, -1]], on polylines px, py (T, K)."""
    y = np.zeros_like(x)
    for j in range(px.shape[1] - 1):
        x0, x1, y0, y1 = px[:, j : j + 1], px[:, j + 1 : j + 2], py[:, j : j + 1], py[:, j + 1 : j + 2]
        w = np.clip((x - x0) / np.maximum(x1 - x0, 1e-9), 0, 1)
        inside = (x >= x0) & (x <= x1)
        y = np.where(inside, y0 + w * (y1 - y0), y)
    return y


def _disc_in_eye(centre: np.ndarray, radius: np.ndarray, eye: np.ndarray, n: int) -> np.ndarray:
    """(T, n, 2) outline of discs (centre (T, 2), radius (T,)) squeezed between the lids of ``eye`` (T, 6, 2)."""
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = np.clip(centre[:, :1] + radius[:, None] * np.cos(a), eye[:, :1, 0], eye[:, 3:4, 0])
    y = centre[:, 1:] + radius[:, None] * np.sin(a)
    upper = _interp_polyline(x, eye[:, [0, 1, 2, 3], 0], eye[:, [0, 1, 2, 3], 1])
    lower = np.maximum(upper, _interp_polyline(x, eye[:, [0, 5, 4, 3], 0], eye[:, [0, 5, 4, 3], 1]))
    return np.stack([x, np.clip(y, upper, lower)], -1)


def render(
    t: FaceTraits,
    expr: Expression,
    landmarks: np.ndarray,
    pose: Pose,
    size: int,
    gaze: tuple[float, float] = (0.0, 0.0),
    face_visible: np.ndarray | None = None,
) -> np.ndarray:
    """Draw (T, size, size, 3) uint8 frames for face-unit ``landmarks`` (T, 68, 2) under ``pose``.

    Frames where ``face_visible`` is False show the background only.
    """
    n, ss = len(landmarks), SUPERSAMPLE
    # Pixel-centre convention: output pixel x is the mean of supersampled pixels centred on (x + 0.5) * ss - 0.5.
    to_ss = lambda p: (p + 0.5) * ss - 0.5  # noqa: E731
    p = to_ss(pose.apply(landmarks))
    k = pose.scale * ss  # supersampled pixels per face unit, (T,)
    static = _static_shapes(t)
    moved = to_ss(pose.apply(np.concatenate(list(static.values()))))
    shapes = dict(zip(static, np.split(moved, np.cumsum([len(v) for v in static.values()])[:-1], 1)))
    cheek_y = t.mouth_y - 0.32 - 0.1 * expr.cheek_raise
    skin_shade = _mix(t.skin, (0, 0, 0), 0.18)
    lid_colour = _mix(t.skin, (0, 0, 0), 0.5)
    # (fill, (T, K, 2) polygon) in drawing order; everything is computed for all frames at once.
    layers: list[tuple[tuple[int, int, int], np.ndarray]] = []
    if "hair_back" in shapes:
        layers.append((t.hair, shapes["hair_back"]))
    layers += [(skin_shade, shapes["neck"]), (t.shirt, np.broadcast_to(to_ss(_body(t, pose)), (n, 6, 2))),
               (skin_shade, shapes["ear_l"]), (skin_shade, shapes["ear_r"]),
               (t.skin, np.concatenate([p[:, JAW], shapes["forehead"]], 1)), (t.hair, shapes["hair_cap"])]
    if expr.blush > 0.01:
        blush = _mix(t.skin, (225, 95, 100), float(np.clip(0.45 * expr.blush, 0, 0.6)))
        for x in (-0.52, 0.52):
            layers.append((blush, to_ss(pose.apply(_ellipse(x, cheek_y, 0.17, 0.12, n=16)))))
    for eye in (EYE_L, EYE_R):
        e = p[:, eye]
        centre = e.mean(1) + np.asarray(gaze) * k[:, None]
        layers += [((245, 245, 240), _closed_curve(e)), (t.iris, _disc_in_eye(centre, 0.085 * k, e, 20)),
                   ((15, 10, 10), _disc_in_eye(centre, 0.035 * k, e, 12))]
    for brow, taper in ((BROW_L, _BROW_TAPER), (BROW_R, _BROW_TAPER[::-1])):
        half = np.zeros((n, 5, 2))
        half[..., 1] = (t.brow_thick / 2) * k[:, None] * taper
        layers.append((t.hair, np.concatenate([p[:, brow] - half, (p[:, brow] + half)[:, ::-1]], 1)))
    layers += [(t.lips, _closed_curve(p[:, MOUTH_OUTER])), ((70, 20, 28), _closed_curve(p[:, MOUTH_INNER]))]
    line_w = max(1, round(0.02 * t.unit * size * ss))
    lines = [(lid_colour, p[:, [36, 37, 38, 39]], line_w), (lid_colour, p[:, [42, 43, 44, 45]], line_w),
             (skin_shade, p[:, NOSE_BRIDGE], line_w), (skin_shade, p[:, NOSE_BASE], line_w + 1)]
    n_fill = len(layers) - 2  # lid and nose lines go over everything but the two mouth polygons
    polys = [(fill, pts.reshape(n, -1).tolist()) for fill, pts in layers]
    plines = [(fill, pts.reshape(n, -1).tolist(), w) for fill, pts, w in lines]
    background = Image.new("RGB", (size * ss, size * ss), t.background)
    out = np.empty((n, size, size, 3), np.uint8)
    for f in range(n):
        img = background.copy()
        if face_visible is None or face_visible[f]:
            draw = ImageDraw.Draw(img)
            for fill, pts in polys[:n_fill]:
                draw.polygon(pts[f], fill=fill)
            for fill, pts, w in plines:
                draw.line(pts[f], fill=fill, width=w)
            for fill, pts in polys[n_fill:]:
                draw.polygon(pts[f], fill=fill)
        out[f] = np.asarray(img.reduce(ss))
    return out
