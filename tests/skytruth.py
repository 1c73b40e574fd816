"""Where the simulator planted nothing but sky: the pixels a background test may use."""

from __future__ import annotations

import numpy as np

from gsaoi_watch.instrument import distortion
from gsaoi_watch.instrument.tables import ARRAYS
from gsaoi_watch.sim import plan_night
from gsaoi_watch.sim.render import _galaxy
from gsaoi_watch.sim.scene import _moffat_alpha, _stamp_radius

#: Pixels this close to an array's edge are left out (stars just outside the array,
#: which the truth does not list, reach in).
EDGE = 12


def clean_sky_pixels(truth: dict, frame_truth: dict, index: int, shape: tuple[int, int],
                     galaxy_limit: float) -> np.ndarray:
    """Pixels of array ``index`` with no planted star light and galaxy below a limit.

    Parameters
    ----------
    truth : dict
        The night's truth (``truth.json``).
    frame_truth : dict
        The frame's entry in ``truth['frames']``.
    index : int
        Array (0-3).
    shape : tuple
        The array's shape.
    galaxy_limit : float
        Largest galaxy signal (e- in the exposure) a pixel may hold.

    Returns
    -------
    ndarray of bool
        True where only sky (and noise) was planted: outside every star's stamp (the
        radius beyond which the simulator adds no star light), away from the edges, and
        where the galaxy adds less than ``galaxy_limit``.
    """
    ny, nx = shape
    good = np.zeros(shape, bool)
    good[EDGE:ny - EDGE, EDGE:nx - EDGE] = True
    alpha = _moffat_alpha(frame_truth["fwhm_px"])
    yy, xx = np.mgrid[0:ny, 0:nx]
    for _, x, y, flux in frame_truth["arrays"][index]["stars"]:
        r = _stamp_radius(flux, alpha, 128) + 2
        cx, cy = x - 1.0, y - 1.0
        x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, nx)
        y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        sub = (xx[y0:y1, x0:x1] - cx) ** 2 + (yy[y0:y1, x0:x1] - cy) ** 2 <= r * r
        good[y0:y1, x0:x1] &= ~sub
    night = plan_night(truth["seed"], truth["size"])
    plan = next(p for p in night.frames if p.filename == frame_truth["filename"])
    gal = _galaxy(plan, ARRAYS[index], night.params, size=truth["size"], x0=0, y0=0,
                  n=shape[0], fp0=distortion.focal_plane_center())
    if gal is not None:
        good &= gal * plan.exptime < galaxy_limit
    return good


def background_offsets(truth: dict, products: list) -> list[dict]:
    """Median of every on-target array's clean sky pixels after sky subtraction.

    Returns
    -------
    list of dict
        ``file``, ``array``, ``median`` (e-), ``sigma`` (per-pixel noise from VAR, e-),
        ``sky`` (the planted sky level, e-), ``n`` (pixels used).
    """
    frames = {f["filename"]: f for f in truth["frames"]}
    rows = []
    for product in products:
        ft = frames[product.orig_filename]
        for i, a in enumerate(product.arrays):
            sigma = float(np.sqrt(np.median(a.var[a.dq == 0])))
            good = clean_sky_pixels(truth, ft, i, a.sci.shape, 0.02 * sigma) & (a.dq == 0)
            n = int(good.sum())
            rows.append({"file": product.orig_filename, "array": i,
                         "extrapolated": float(product.phu.get("SKYEXTRP", 0.0)),
                         "median": float(np.median(a.sci[good])) if n else float("nan"),
                         "sigma": sigma,
                         "sky": ft["sky_rate"] * ft["exptime"], "n": n})
    return rows
