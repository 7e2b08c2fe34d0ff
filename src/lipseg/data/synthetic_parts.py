"""The synthetic faces' parts as float polygons in a face-aligned "face unit" frame (head half-width about
1, y down, mouth centre near y = 0.62): the lips in five states, teeth, head, jaw, eyes, brows, nose.
lipseg.data.synthetic draws them and maps the 194 annotation points with the same transform."""

from __future__ import annotations

import numpy as np

# Face-unit layout (y down). Head ellipse centre / radii are per face jittered around these.
HEAD_CY = -0.10
MOUTH_Y = 0.62
EYE_Y = -0.33
BROW_Y = -0.62


# --------------------------------------------------------------------------------------------
# small geometry helpers
# --------------------------------------------------------------------------------------------
def resample(poly: np.ndarray, n: int) -> np.ndarray:
    """`n` points evenly spaced by arc length along a polyline, both end points included."""
    seg = np.linalg.norm(np.diff(poly, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    if cum[-1] <= 1e-12:
        return np.repeat(poly[:1], n, axis=0)
    t = np.linspace(0.0, cum[-1], n)
    return np.stack([np.interp(t, cum, poly[:, 0]), np.interp(t, cum, poly[:, 1])], axis=1)


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 72, a0: float = 0.0) -> np.ndarray:
    """Closed ellipse outline as a float polygon (no repeated end point)."""
    t = a0 + np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


# --------------------------------------------------------------------------------------------
# lips
# --------------------------------------------------------------------------------------------
def lip_params(state: str, rng: np.random.Generator) -> dict:
    """Per-state parameter ranges. Lengths are in units of the mouth half-width, except `w`."""
    u = rng.uniform
    if state == "closed":
        p = dict(
            w=u(0.40, 0.46),
            th_u=u(0.22, 0.34),
            th_l=u(0.30, 0.44),
            gap=0.0,
            w_in=u(0.88, 0.95),
            k=u(-0.04, 0.04),
            pa=u(0.5, 0.7),
            pb=u(0.55, 0.8),
            bow=u(0.1, 0.3),
            q_u=0.5,
            q_l=0.5,
            up=0.5,
        )
    elif state == "smile":
        p = dict(
            w=u(0.50, 0.58),
            th_u=u(0.15, 0.22),
            th_l=u(0.20, 0.30),
            gap=u(0.03, 0.09) if u() < 0.5 else 0.0,
            w_in=u(0.90, 0.96),
            k=u(0.16, 0.30),
            pa=u(0.5, 0.7),
            pb=u(0.55, 0.8),
            bow=u(0.05, 0.2),
            q_u=0.5,
            q_l=0.6,
            up=0.4,
        )
    elif state == "open":
        p = dict(
            w=u(0.38, 0.45),
            th_u=u(0.20, 0.30),
            th_l=u(0.24, 0.36),
            gap=u(0.38, 0.70),
            w_in=u(0.76, 0.88),
            k=u(-0.05, 0.05),
            pa=u(0.5, 0.7),
            pb=u(0.55, 0.8),
            bow=u(0.05, 0.2),
            q_u=u(0.5, 0.8),
            q_l=u(0.55, 0.9),
            up=u(0.3, 0.45),
        )
    elif state == "laugh":
        p = dict(
            w=u(0.52, 0.60),
            th_u=u(0.13, 0.20),
            th_l=u(0.17, 0.26),
            gap=u(0.55, 0.90),
            w_in=u(0.84, 0.93),
            k=u(0.12, 0.28),
            pa=u(0.5, 0.7),
            pb=u(0.55, 0.8),
            bow=u(0.0, 0.12),
            q_u=u(0.3, 0.5),
            q_l=u(0.6, 0.9),
            up=u(0.3, 0.42),
            teeth_u=u(0.20, 0.34),
            teeth_l=u(0.08, 0.16) if u() < 0.6 else 0.0,
        )
    elif state == "pursed":
        opening = u() < 0.5
        p = dict(
            w=u(0.25, 0.31),
            th_u=u(0.42, 0.56),
            th_l=u(0.48, 0.62),
            gap=u(0.12, 0.24) if opening else 0.0,
            w_in=u(0.26, 0.40) if opening else u(0.40, 0.60),
            k=u(-0.03, 0.03),
            pa=u(0.28, 0.38),
            pb=u(0.30, 0.42),
            bow=u(0.0, 0.08),
            q_u=0.5,
            q_l=0.5,
            up=0.5,
            pucker=int(rng.integers(5, 9)),
        )
    else:  # pragma: no cover - STATES is closed
        raise ValueError(state)
    p["tilt"] = u(-0.03, 0.03)
    return p


def lip_points(p: dict) -> np.ndarray:
    """56 lip points (Helen order 58..113) in face units, mouth centre at (0, 0)."""
    w, w_in, g = p["w"], p["w_in"], p["gap"]
    t = np.linspace(-1.0, 1.0, 401)  # x in units of w

    def warp(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # raise the corners (smile), add a slight tilt; the same warp for every contour keeps order
        y = y - p["k"] * x**2 + p["tilt"] * x
        return np.stack([x * w, y * w], axis=1)

    def inner_u(x: np.ndarray) -> np.ndarray:
        return -g * p["up"] * np.clip(1 - (x / w_in) ** 2, 0, None) ** p["q_u"]

    def inner_l(x: np.ndarray) -> np.ndarray:
        return g * (1 - p["up"]) * np.clip(1 - (x / w_in) ** 2, 0, None) ** p["q_l"]

    bow = 1 - p["bow"] * np.exp(-((t / 0.2) ** 2))
    outer_u = inner_u(t) - p["th_u"] * np.clip(1 - t**2, 0, None) ** p["pa"] * bow
    outer_l = inner_l(t) + p["th_l"] * np.clip(1 - t**2, 0, None) ** p["pb"]
    ti = np.linspace(-w_in, w_in, 301)

    up_outer = resample(warp(t, outer_u), 15)[:14]  # 58..71: left corner .. just before right corner
    lo_outer = resample(warp(t, outer_l)[::-1], 15)[:14]  # 72..85: right corner .. just after left
    up_inner = resample(warp(ti, inner_u(ti)), 15)[:14]  # 86..99
    lo_inner = resample(warp(ti, inner_l(ti))[::-1], 15)[:14]  # 100..113
    return np.vstack([up_outer, lo_outer, up_inner, lo_inner])


def teeth_polygon(p: dict, height: float, upper: bool) -> np.ndarray:
    """Band of teeth under the upper inner contour (or over the lower), never past the other lip."""
    w, w_in, g = p["w"], p["w_in"], p["gap"]
    x = np.linspace(-w_in, w_in, 61)
    base = np.clip(1 - (x / w_in) ** 2, 0, None)
    yu = -g * p["up"] * base ** p["q_u"]
    yl = g * (1 - p["up"]) * base ** p["q_l"]
    if upper:
        edge, other = yu, np.minimum(yu + height * base**0.3, yl)
    else:
        edge, other = yl, np.maximum(yl - height * base**0.3, yu)
    xs = np.concatenate([x, x[::-1]])
    ys = np.concatenate([edge, other[::-1]])
    ys = ys - p["k"] * xs**2 + p["tilt"] * xs
    return np.stack([xs * w, ys * w], axis=1)


# --------------------------------------------------------------------------------------------
# face parts in face units
# --------------------------------------------------------------------------------------------
def head_outline(rx: float, ry: float, taper: float, n: int = 120) -> np.ndarray:
    """Egg-shaped head: an ellipse whose lower half narrows towards the chin."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    s = np.sin(t)
    x = rx * np.cos(t) * (1 - taper * np.clip(s, 0, None) ** 2)
    return np.stack([x, HEAD_CY + ry * s], axis=1)


def jaw_points(rx: float, ry: float, taper: float, top_y: float) -> np.ndarray:
    """41 jaw points on the head outline, from the image-left side through the chin to the right."""
    d = np.arcsin(np.clip((top_y - HEAD_CY) / ry, -0.9, 0.9))
    t = np.linspace(np.pi - d, d, 400)
    s = np.sin(t)
    x = rx * np.cos(t) * (1 - taper * np.clip(s, 0, None) ** 2)
    return resample(np.stack([x, HEAD_CY + ry * s], axis=1), 41)


def eye_points(cx: float, cy: float, hw: float, hh: float, side: int, droop: float) -> np.ndarray:
    """20 eye points: inner corner, 9 upper, outer corner, 9 lower (Helen order).

    side = +1 for the eye on the image right (inner corner at smaller x), -1 for the image left.
    """
    inner = np.array([cx - side * hw, cy])
    outer = np.array([cx + side * hw, cy + droop])
    s = np.linspace(0.0, 1.0, 200)
    base = inner + (outer - inner) * s[:, None]
    bump = np.sin(np.pi * s)
    # upper lid is fuller and peaks a little towards the inner side; lower lid is flatter
    upper = base.copy()
    upper[:, 1] -= hh * bump**0.8 * (1 + 0.15 * np.cos(np.pi * s))
    lower = base.copy()
    lower[:, 1] += 0.6 * hh * bump**0.9
    up = resample(upper, 11)  # inner .. outer (11 points)
    lo = resample(lower[::-1], 11)[1:-1]  # outer .. inner, both excluded (9 points)
    return np.vstack([up, lo])


def brow_points(cx_in: float, cx_out: float, y: float, arch: float, thick: float) -> np.ndarray:
    """20 brow points: inner lower corner, along the top to the outer end, back along the bottom."""
    s = np.linspace(0.0, 1.0, 200)
    x = cx_in + (cx_out - cx_in) * s
    centre = y - arch * np.sin(np.pi * np.clip(s * 1.15, 0, 1)) + 0.02 * s
    th = thick * (1.0 - 0.55 * s)
    top = np.stack([x, centre - th / 2], axis=1)
    bot = np.stack([x, centre + th / 2], axis=1)
    top_pts = resample(np.vstack([bot[:1], top]), 11)  # inner lower corner, up, along the top
    bot_pts = resample(bot[::-1], 10)[1:]  # back along the bottom, outer end excluded
    pts = np.vstack([top_pts, bot_pts])
    return pts[:20]


def nose_points(half_top: float, half_wing: float, top_y: float, bottom_y: float) -> np.ndarray:
    """17 nose points: down the image-left side, round the nostrils, up the image-right side."""
    ctrl = np.array(
        [
            [-half_top, top_y],
            [-half_top * 1.1, top_y + 0.45 * (bottom_y - top_y)],
            [-half_wing, bottom_y - 0.10],
            [-half_wing * 0.9, bottom_y - 0.01],
            [-half_wing * 0.5, bottom_y + 0.02],
            [0.0, bottom_y + 0.01],
            [half_wing * 0.5, bottom_y + 0.02],
            [half_wing * 0.9, bottom_y - 0.01],
            [half_wing, bottom_y - 0.10],
            [half_top * 1.1, top_y + 0.45 * (bottom_y - top_y)],
            [half_top, top_y],
        ]
    )
    # smooth the control polygon a little (Chaikin) before resampling
    for _ in range(3):
        q = 0.75 * ctrl[:-1] + 0.25 * ctrl[1:]
        r = 0.25 * ctrl[:-1] + 0.75 * ctrl[1:]
        ctrl = np.vstack([ctrl[:1], np.stack([q, r], axis=1).reshape(-1, 2), ctrl[-1:]])
    return resample(ctrl, 17)
