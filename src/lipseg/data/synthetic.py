"""Deterministic, offline generator of a synthetic face dataset in the Helen folder layout.

Why it exists: it is the project's embedded default dataset. The whole pipeline (lip crop -> TCNN
landmark regression -> GMM over lip states -> polygon masks) must run on it without network access
or research-only data, and the rest of the pipeline must not be able to tell it from Helen. So it
writes exactly Helen's files (`images/*.jpg`, `annotation/N.txt` with 194 `x , y` CRLF lines,
`trainnames.txt`, `testnames.txt`) plus `states.csv`, the lip state each image was drawn with, so
that the clustering can later be checked against the truth.

How a face is made: every part is described in a face-aligned "face unit" frame (head half-width
about 1, y down, mouth centre near y = 0.62), as float polygons. One similarity transform (scale,
in-plane rotation, translation) maps all of them, and all 194 points, to the image, so pixels and
annotation always agree. The lips are rendered by filling exactly the polygons that `masks.py`
later builds from the points (upper lip = 58..71, R, r, 99..86; lower lip = R, 72..85, 58, 86,
113..100, r; inner mouth = 86..113), so the annotation is pixel-consistent by construction.

Every image uses its own generator `default_rng([seed, index])` (and the lip state comes from a
balanced shuffle per block of five images, `default_rng([seed, block, 7])`), so image `i` is the
same whatever `n_train` / `n_test` are.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from lipseg.data.helen import format_helen_annotation
from lipseg.data.landmarks import HELEN_NUM_POINTS
from lipseg.data.synthetic_parts import (
    BROW_Y,
    EYE_Y,
    HEAD_CY,
    MOUTH_Y,
    brow_points,
    ellipse,
    eye_points,
    head_outline,
    jaw_points,
    lip_params,
    lip_points,
    nose_points,
    teeth_polygon,
)

STATES: tuple[str, ...] = ("closed", "smile", "open", "laugh", "pursed")
NAME_PREFIX = "synth_"
JPEG_QUALITY = 90

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_SCALE = float(1 << _SHIFT)
_MARGIN = 3.0  # pixels kept free between any landmark and the image border


class _Canvas:
    """An image plus the face-to-image similarity transform; draws face-unit polygons anti-aliased."""

    def __init__(self, img: np.ndarray, scale: float, angle: float, centre: np.ndarray) -> None:
        self.img = img
        c, s = np.cos(angle), np.sin(angle)
        self.m = scale * np.array([[c, -s], [s, c]])
        self.t = np.asarray(centre, np.float64)
        self.scale = scale

    def to_img(self, pts: np.ndarray) -> np.ndarray:
        """Face units -> image pixels (same similarity for every part and every landmark)."""
        return np.asarray(pts, np.float64) @ self.m.T + self.t

    def fill(self, pts: np.ndarray, color, face_units: bool = True) -> None:
        p = self.to_img(pts) if face_units else np.asarray(pts, np.float64)
        q = np.round(p * _SCALE).astype(np.int32)
        cv2.fillPoly(self.img, [q], _bgr(color), cv2.LINE_AA, _SHIFT)

    def line(self, pts: np.ndarray, color, width_units: float, closed: bool = False) -> None:
        q = np.round(self.to_img(pts) * _SCALE).astype(np.int32)
        w = max(1, int(round(width_units * self.scale)))
        cv2.polylines(self.img, [q], closed, _bgr(color), w, cv2.LINE_AA, _SHIFT)


def _bgr(color) -> tuple[float, float, float]:
    c = np.clip(np.asarray(color, np.float64), 0, 255)
    return (float(c[0]), float(c[1]), float(c[2]))


def _mask(shape: tuple[int, int], pts_img: np.ndarray) -> np.ndarray:
    """Anti-aliased float mask (0..1) of one image-pixel polygon."""
    m = np.zeros(shape, np.uint8)
    q = np.round(np.asarray(pts_img) * _SCALE).astype(np.int32)
    cv2.fillPoly(m, [q], 255, cv2.LINE_AA, _SHIFT)
    return m.astype(np.float32) / 255.0


# --------------------------------------------------------------------------------------------
# colours
# --------------------------------------------------------------------------------------------
# Skin tone path from light to dark (BGR), sampled uniformly along it for a wide range.
_SKIN_PATH = np.array(
    [[190, 215, 245], [160, 190, 230], [120, 160, 210], [85, 125, 180], [60, 90, 140], [45, 65, 100], [36, 50, 80]],
    np.float64,
)
_HAIR = np.array(
    [[15, 15, 20], [25, 35, 55], [40, 60, 95], [70, 110, 150], [120, 160, 200], [150, 150, 150], [30, 50, 120]],
    np.float64,
)
_LIPSTICK = np.array([[50, 30, 170], [110, 80, 200], [60, 40, 120], [90, 100, 210], [80, 20, 140]], np.float64)


def _skin_colour(rng: np.random.Generator) -> np.ndarray:
    u = rng.uniform(0.0, 1.0) * (len(_SKIN_PATH) - 1)
    i = min(int(u), len(_SKIN_PATH) - 2)
    f = u - i
    c = (1 - f) * _SKIN_PATH[i] + f * _SKIN_PATH[i + 1]
    return np.clip(c * rng.uniform(0.93, 1.07, 3), 10, 250)


def _lip_colour(rng: np.random.Generator, skin: np.ndarray) -> np.ndarray:
    """Lips follow the skin (redder, darker), sometimes lipstick; always clearly unlike the skin."""
    lip = skin * np.array([rng.uniform(0.55, 0.72), rng.uniform(0.52, 0.68), rng.uniform(0.8, 0.95)])
    if rng.uniform() < 0.15:
        lip = 0.35 * lip + 0.65 * _LIPSTICK[rng.integers(len(_LIPSTICK))]
    for _ in range(16):
        if np.linalg.norm(lip - skin) >= 40:
            break
        # dark skin: make the lips darker and redder (never lighter, so an open dark mouth and the
        # lips cannot average out to the skin colour) until they stand out
        lip = lip * np.array([0.9, 0.86, 1.0]) + np.array([0.0, 0.0, 6.0])
    return np.clip(lip, 5, 250)


# --------------------------------------------------------------------------------------------
# one image
# --------------------------------------------------------------------------------------------
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Random two-colour linear gradient plus a few random shapes, slightly blurred."""
    c0, c1 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    f = np.clip(0.5 + (xx - 0.5) * np.cos(a) + (yy - 0.5) * np.sin(a), 0, 1)[..., None]
    img = ((1 - f) * c0 + f * c1).astype(np.float32)
    img = np.ascontiguousarray(img)
    for _ in range(int(rng.integers(2, 8))):
        col = _bgr(rng.uniform(0, 255, 3))
        kind = rng.integers(3)
        p = rng.uniform(-0.1, 1.1, 2) * size
        if kind == 0:
            r = rng.uniform(0.05, 0.3) * size
            poly = ellipse(p[0], p[1], r, r * rng.uniform(0.5, 1.5), 40, rng.uniform(0, np.pi))
            cv2.fillPoly(img, [np.round(poly * _SCALE).astype(np.int32)], col, cv2.LINE_AA, _SHIFT)
        elif kind == 1:
            wh = rng.uniform(0.05, 0.4, 2) * size
            ang = rng.uniform(0, 180)
            box = cv2.boxPoints(((float(p[0]), float(p[1])), (float(wh[0]), float(wh[1])), float(ang)))
            cv2.fillPoly(img, [np.round(box * _SCALE).astype(np.int32)], col, cv2.LINE_AA, _SHIFT)
        else:
            q = rng.uniform(-0.1, 1.1, 2) * size
            th = max(1, int(rng.uniform(0.005, 0.03) * size))
            cv2.line(
                img,
                tuple(np.round(p * _SCALE).astype(int)),
                tuple(np.round(q * _SCALE).astype(int)),
                col,
                th,
                cv2.LINE_AA,
                _SHIFT,
            )
    k = rng.uniform(0.5, 3.0) * size / 256
    return np.round(cv2.GaussianBlur(img, (0, 0), k)).astype(np.uint8)


def _render(rng: np.random.Generator, state: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one face; returns (uint8 BGR image, (194, 2) float64 points in pixels)."""
    u = rng.uniform
    # ---- geometry in face units
    rx, ry, taper = u(0.94, 1.06), u(1.34, 1.48), u(0.08, 0.2)
    lp = lip_params(state, rng)
    mouth_c = np.array([u(-0.02, 0.02), MOUTH_Y + u(-0.04, 0.04)])
    lips = lip_points(lp) + mouth_c
    eye_dx, eye_hw, eye_hh = u(0.46, 0.54), u(0.19, 0.23), u(0.055, 0.095)
    eye_y = EYE_Y + u(-0.04, 0.04)
    droop = u(-0.03, 0.02)
    eye_r = eye_points(eye_dx, eye_y, eye_hw, eye_hh, +1, droop)
    eye_l = eye_points(-eye_dx, eye_y, eye_hw, eye_hh, -1, droop)
    brow_y, arch, thick = BROW_Y + u(-0.05, 0.04), u(0.02, 0.08), u(0.07, 0.12)
    b_in, b_out = u(0.2, 0.3), eye_dx + eye_hw + u(0.0, 0.08)
    brow_r = brow_points(b_in, b_out, brow_y, arch, thick)
    brow_l = brow_points(-b_in, -b_out, brow_y, arch, thick)
    nose = nose_points(u(0.08, 0.12), u(0.17, 0.23), eye_y + u(0.12, 0.2), mouth_c[1] - u(0.28, 0.36))
    jaw = jaw_points(rx, ry, taper, u(-0.05, 0.08))
    pts = np.vstack([jaw, nose, lips, eye_r, eye_l, brow_r, brow_l])
    assert pts.shape == (HELEN_NUM_POINTS, 2)

    # ---- similarity: mouth width ~ 15-30% of the image width, clipped so every point fits
    angle = np.deg2rad(u(-15, 15))
    mouth_w = float(np.linalg.norm(lips[:28] - lips[0], axis=1).max())
    scale = u(0.15, 0.30) * size / mouth_w
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    rel = pts @ rot.T
    span = rel.max(0) - rel.min(0)
    scale = min(scale, float(((size - 1 - 2 * _MARGIN) / span).min()) * 0.999)
    lo = _MARGIN - scale * rel.min(0)
    hi = size - 1 - _MARGIN - scale * rel.max(0)
    centre = np.array([u(lo[0], hi[0]), u(lo[1], hi[1])])

    # ---- colours
    skin = _skin_colour(rng)
    lip = _lip_colour(rng, skin)
    lip_up = lip * u(0.78, 0.92)
    lip_lo = lip * u(0.98, 1.08)
    hair = _HAIR[rng.integers(len(_HAIR))] * u(0.8, 1.2, 3)
    has_hair = u() < 0.9

    # ---- draw
    img = _background(rng, size)
    cv = _Canvas(img, scale, angle, centre)
    if has_hair and u() < 0.6:  # long hair: an egg behind the head reaching below the chin
        cv.fill(ellipse(0, HEAD_CY + u(0.1, 0.35), rx * u(1.15, 1.35), ry * u(1.1, 1.3), 60), hair * 0.85)
    neck_w = u(0.45, 0.6)
    neck_col = skin * 0.78
    cv.fill(np.array([[-neck_w, 0.6], [neck_w, 0.6], [neck_w * 1.1, ry + 1.2], [-neck_w * 1.1, ry + 1.2]]), neck_col)
    cloth_top = ry + HEAD_CY + u(0.25, 0.45)
    cv.fill(ellipse(0, cloth_top + 1.0, u(1.8, 2.4), 1.0, 60), rng.uniform(20, 230, 3))
    cv.fill(ellipse(0, cloth_top, neck_w * u(1.0, 1.4), u(0.12, 0.3), 40), neck_col)  # neckline
    for sd in (-1, 1):
        cv.fill(ellipse(sd * rx * 0.97, -0.1, 0.13, 0.25, 30), skin * 0.88)
    head = head_outline(rx, ry, taper)
    cv.fill(head, skin)
    if has_hair:  # hair cap above a curved hairline
        cut = brow_y - u(0.3, 0.55)
        vol = u(1.03, 1.1)
        hx = np.linspace(-rx * vol, rx * vol, 40)
        arc = HEAD_CY - ry * vol * np.sqrt(np.clip(1 - (hx / (rx * vol)) ** 2, 0, None))
        line = cut - 0.12 * (1 - (hx / rx) ** 2) + 0.05
        line = np.maximum(line, arc)
        cv.fill(np.vstack([np.stack([hx, arc], 1), np.stack([hx[::-1], line[::-1]], 1)]), hair)
    # brows
    for b in (brow_r, brow_l):
        cv.fill(b, 0.55 * hair + 0.45 * skin * 0.6)
    # eyes: sclera, iris + pupil clipped to the eye contour, lid line
    iris_col = np.array([[40, 60, 90], [30, 40, 55], [120, 110, 70], [90, 120, 80], [20, 25, 30]])[rng.integers(5)]
    gaze = np.array([u(-0.3, 0.3), u(-0.2, 0.2)])
    for e, cx in ((eye_r, eye_dx), (eye_l, -eye_dx)):
        sclera = np.array([225, 230, 235]) * u(0.8, 1.0)
        cv.fill(e, sclera)
        layer = img.copy()
        ir = eye_hw * u(0.42, 0.5)
        ic = np.array([cx + gaze[0] * eye_hw * 0.5, eye_y + gaze[1] * eye_hh])
        cv2.fillPoly(
            layer,
            [np.round(cv.to_img(ellipse(*ic, ir, ir, 32)) * _SCALE).astype(np.int32)],
            _bgr(iris_col),
            cv2.LINE_AA,
            _SHIFT,
        )
        cv2.fillPoly(
            layer,
            [np.round(cv.to_img(ellipse(*ic, ir * 0.45, ir * 0.45, 24)) * _SCALE).astype(np.int32)],
            (10, 10, 10),
            cv2.LINE_AA,
            _SHIFT,
        )
        m = _mask(img.shape[:2], cv.to_img(e))[..., None]
        img[:] = np.round(img * (1 - m) + layer * m).astype(np.uint8)
        cv.line(e[:11], 0.35 * skin * 0.5 + 0.65 * np.array([20, 20, 25]), 0.025)
        cv.line(e[10:].tolist() + [e[0].tolist()], skin * 0.6, 0.012)
    # nose hint: soft side shading, nostrils
    cv.line(nose[2:15], skin * 0.72, 0.02)
    for sd in (-1, 1):
        nx = sd * 0.09
        cv.fill(ellipse(nx, nose[8, 1] - 0.04, 0.05, 0.025, 20), skin * 0.45)
    cv.line(np.array([[0.08, eye_y + 0.05], [0.1, nose[8, 1] - 0.15]]), skin * 0.85, 0.03)
    # lips: exactly the mask polygons (outer ring in lower-lip colour, then upper lip, inner mouth)
    R = (lips[13] + lips[14]) / 2  # points 71, 72
    r = (lips[41] + lips[42]) / 2  # points 99, 100
    upper_poly = np.vstack([lips[0:14], R, r, lips[28:42][::-1]])
    cv.fill(lips[0:28], lip_lo)
    cv.fill(upper_poly, lip_up)
    inner = lips[28:56]
    opened = lp["gap"] > 0
    if opened:
        # the mouth cavity is always darker than the skin and the lips
        cv.fill(inner, np.minimum(np.array([35, 30, 60]) * u(0.5, 1.0), np.minimum(skin, lip) * 0.45))
        if lp.get("teeth_u", 0.0) > 0:
            teeth = np.array([205, 215, 220]) * u(0.75, 0.95)
            cv.fill(teeth_polygon(lp, lp["teeth_u"], True) + mouth_c, teeth)
            if lp["teeth_l"] > 0:
                cv.fill(teeth_polygon(lp, lp["teeth_l"], False) + mouth_c, teeth * 0.9)
    if lp.get("pucker", 0):  # radial wrinkles of pushed-together lips, kept inside the lip polygons
        inner_c = lips[28:56].mean(0) * 0.5 + mouth_c * 0.5
        for j in np.linspace(1, 26, lp["pucker"]).round().astype(int):
            if j == 14:
                continue
            a0 = inner_c + (lips[j] - inner_c) * 0.45
            a1 = inner_c + (lips[j] - inner_c) * u(0.7, 0.85)
            cv.line(np.array([a0, a1]), (lip_up if j < 14 else lip_lo) * 0.75, 0.008)
    # lip seam (a thin darker line along the inner upper contour), lower-lip highlight
    cv.line(lips[28:42].tolist() + [r.tolist()], lip_up * 0.55, 0.012)
    mid_lo = (lips[49] + lips[78 - 58]) / 2  # between the inner and outer lower lip centre
    th = float(np.linalg.norm(lips[49] - lips[78 - 58]))
    if th * scale > 4:
        cv.fill(ellipse(mid_lo[0], mid_lo[1] - th * 0.05, lp["w"] * 0.25, th * 0.16, 24), lip_lo * 1.15 + 10)

    # ---- shading / lighting / camera
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    inv = np.linalg.inv(cv.m)
    fx = (xx - centre[0]) * inv[0, 0] + (yy - centre[1]) * inv[0, 1]
    fy = (xx - centre[0]) * inv[1, 0] + (yy - centre[1]) * inv[1, 1]
    rr = (fx / rx) ** 2 + ((fy - HEAD_CY) / ry) ** 2
    shade = 1.0 - 0.18 * np.clip(rr, 0, 1) ** 2 * (rr <= 1.05)
    a = u(0, 2 * np.pi)
    amp = u(0.05, 0.35)
    grad = 1.0 + amp * ((xx / size - 0.5) * np.cos(a) + (yy / size - 0.5) * np.sin(a))
    img = img.astype(np.float32) * (shade * grad)[..., None]
    # global contrast / brightness; dark faces are never pushed darker (they would be crushed)
    contrast, bright = u(0.8, 1.25), u(-30 if skin.mean() > 110 else 0, 30)
    img = (img - 128.0) * contrast + 128.0 + bright
    img = img * u(0.93, 1.07, 3)  # colour cast
    sigma = u(0.2, 1.0) * size / 256
    img = cv2.GaussianBlur(img, (0, 0), sigma)
    img += rng.normal(0.0, u(1.0, 5.0), img.shape).astype(np.float32)
    out = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if u() < 0.5:  # an earlier, stronger JPEG generation
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(45, 90))])
        out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return out, cv.to_img(pts)


# --------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------
def image_name(index: int) -> str:
    """File stem of image `index` (0-based), e.g. `synth_00000`."""
    return f"{NAME_PREFIX}{index:05d}"


def state_of(seed: int, index: int) -> str:
    """Lip state of image `index`: a fresh shuffle of all five states per block of five images,
    so the states are balanced in every prefix and do not depend on n_train / n_test."""
    block, pos = divmod(index, len(STATES))
    perm = np.random.default_rng([seed, block, 7]).permutation(len(STATES))
    return STATES[int(perm[pos])]


def render_face(seed: int, index: int, image_size: int = 256) -> tuple[np.ndarray, np.ndarray, str]:
    """Image `index` of the dataset with this seed: (BGR uint8 image, (194, 2) float32 points, state).

    Exposed so tests and notebooks can look at one face without writing files.
    """
    state = state_of(seed, index)
    img, pts = _render(np.random.default_rng([seed, index]), state, image_size)
    return img, pts.astype(np.float32), state


def generate_synthetic_dataset(
    out_dir: Path,
    n_train: int,
    n_test: int,
    image_size: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Write a synthetic Helen-layout dataset into `out_dir` and return a summary.

    Images 0..n_train-1 are the train split, the next n_test the test split; annotation file N
    (1-based) belongs to image N-1. The same (seed, index) always gives byte-identical annotation
    and pixel-identical image, whatever n_train / n_test are. The caller is expected to write into
    a temporary folder and rename it, so nothing here is atomic.

    Returns {"n_train", "n_test", "image_size", "seed", "states": {state: count},
    "states_by_split": {"train": {...}, "test": {...}}}.
    """
    if n_train < 0 or n_test < 0 or n_train + n_test < 1:
        raise ValueError(f"need n_train, n_test >= 0 and at least one image, got {n_train}, {n_test}")
    if image_size < 64:
        raise ValueError(f"image_size must be at least 64, got {image_size}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotation").mkdir(parents=True, exist_ok=True)
    total = n_train + n_test
    names, states, splits = [], [], []
    by_split: dict[str, dict[str, int]] = {sp: {s: 0 for s in STATES} for sp in ("train", "test")}
    for i in tqdm(range(total), desc="synthetic faces", unit="img", disable=not progress):
        name = image_name(i)
        split = "train" if i < n_train else "test"
        img, pts, state = render_face(seed, i, image_size)
        if not cv2.imwrite(str(out / "images" / f"{name}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise OSError(f"could not write {out / 'images' / f'{name}.jpg'}")
        with open(out / "annotation" / f"{i + 1}.txt", "w", newline="") as f:
            f.write(format_helen_annotation(name, pts))
        names.append(name)
        states.append(state)
        splits.append(split)
        by_split[split][state] += 1
    with open(out / "trainnames.txt", "w", newline="") as f:
        f.write("".join(f"{n}\n" for n, sp in zip(names, splits) if sp == "train"))
    with open(out / "testnames.txt", "w", newline="") as f:
        f.write("".join(f"{n}\n" for n, sp in zip(names, splits) if sp == "test"))
    with open(out / "states.csv", "w", newline="") as f:
        f.write("name,state,split\n")
        f.write("".join(f"{n},{s},{sp}\n" for n, s, sp in zip(names, states, splits)))
    return {
        "n_train": n_train,
        "n_test": n_test,
        "image_size": image_size,
        "seed": seed,
        "states": {s: by_split["train"][s] + by_split["test"][s] for s in STATES},
        "states_by_split": by_split,
    }
