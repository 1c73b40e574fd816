"""GSAOI static distortion: array pixels <-> static focal plane (arcsec), vectorised.

The model is DRAGONS' per-array degree-3 polynomial (``instrument.STATIC_DISTORTION``),
defined on 1-based unbinned full-size (2048) array pixels.  Arrays simulated at a smaller
``size`` are a scaled-down detector: pixel ``x`` of a ``size`` array covers full-size pixels
``(x - 0.5) * f + 0.5`` with ``f = 2048 / size``, so every function takes ``size``.
"""

from __future__ import annotations

import numpy as np

from gsaoi_watch.instrument.tables import ARRAYS, FULL_SIZE, STATIC_DISTORTION

__all__ = ["focal_plane_center", "forward", "inverse", "jacobian"]


def _to_full(x, size):
    f = FULL_SIZE / size
    return (np.asarray(x, dtype=np.float64) - 0.5) * f + 0.5


def _from_full(x, size):
    f = FULL_SIZE / size
    return (np.asarray(x, dtype=np.float64) - 0.5) / f + 0.5


def _poly(coeffs, x, y):
    out = np.zeros(np.broadcast(x, y).shape)
    for (i, j), c in coeffs.items():
        out += c * x**i * y**j
    return out


def _dpoly(coeffs, x, y):
    dx = np.zeros(np.broadcast(x, y).shape)
    dy = np.zeros_like(dx)
    for (i, j), c in coeffs.items():
        if i:
            dx += c * i * x ** (i - 1) * y**j
        if j:
            dy += c * j * x**i * y ** (j - 1)
    return dx, dy


def forward(index, x, y, *, size=FULL_SIZE):
    """Map 1-based pixel coordinates of array ``index`` to the static focal plane.

    Parameters
    ----------
    index : int
        0-based array (extension) index.
    x, y : array_like
        1-based pixel coordinates on an array of ``size`` pixels.
    size : int, optional
        Array size in pixels (2048 for real data).

    Returns
    -------
    u, v : ndarray
        Focal-plane coordinates in arcsec (+u East, +v North at PA=0).
    """
    cx, cy = STATIC_DISTORTION[index]
    xf, yf = _to_full(x, size), _to_full(y, size)
    return _poly(cx, xf, yf), _poly(cy, xf, yf)


def jacobian(index, x, y, *, size=FULL_SIZE):
    """Return the 2x2 derivative d(u, v)/d(x, y) in arcsec per ``size``-pixel, shape (..., 2, 2)."""
    cx, cy = STATIC_DISTORTION[index]
    f = FULL_SIZE / size
    xf, yf = _to_full(x, size), _to_full(y, size)
    dux, duy = _dpoly(cx, xf, yf)
    dvx, dvy = _dpoly(cy, xf, yf)
    jac = np.stack([np.stack([dux, duy], -1), np.stack([dvx, dvy], -1)], -2)
    return jac * f


def inverse(index, u, v, *, size=FULL_SIZE, tol=1e-6, max_iter=20):
    """Map focal-plane coordinates (arcsec) to 1-based pixels of array ``index`` (Newton).

    Points far outside the array still converge (the model is smooth); callers decide
    which results fall on the array.
    """
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    cx, cy = STATIC_DISTORTION[index]
    # Linear start.
    a = np.array([[cx[(1, 0)], cx[(0, 1)]], [cy[(1, 0)], cy[(0, 1)]]])
    rhs = np.stack([u - cx[(0, 0)], v - cy[(0, 0)]], -1)
    xy = np.linalg.solve(a, rhs[..., None])[..., 0]
    xf, yf = xy[..., 0], xy[..., 1]
    for _ in range(max_iter):
        du = _poly(cx, xf, yf) - u
        dv = _poly(cy, xf, yf) - v
        dux, duy = _dpoly(cx, xf, yf)
        dvx, dvy = _dpoly(cy, xf, yf)
        det = dux * dvy - duy * dvx
        stepx = (dvy * du - duy * dv) / det
        stepy = (-dvx * du + dux * dv) / det
        xf = xf - stepx
        yf = yf - stepy
        if np.all(np.abs(stepx) < tol) and np.all(np.abs(stepy) < tol):
            break
    return _from_full(xf, size), _from_full(yf, size)


def focal_plane_center():
    """Return the focal-plane position (arcsec) of the centre of the 2x2 mosaic.

    It is the mean of the four inner array corners, i.e. the middle of the cross-shaped
    gap, where the telescope pointing (RA/DEC plus offsets) falls.
    """
    us, vs = [], []
    for spec in ARRAYS:
        col, row = spec.position
        x = FULL_SIZE + 0.5 if col == 0 else 0.5
        y = FULL_SIZE + 0.5 if row == 0 else 0.5
        u, v = forward(spec.index, x, y)
        us.append(float(u))
        vs.append(float(v))
    return float(np.mean(us)), float(np.mean(vs))
