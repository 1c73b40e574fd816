"""Simulated GSAOI detector: flat-field response, bad pixels, non-linearity and readout."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from gsaoi_watch.instrument import distortion
from gsaoi_watch.instrument.tables import ARRAYS, FULL_SIZE

__all__ = ["Detector", "invert_nonlinearity", "make_detector", "read_out"]

#: Reference-pixel border of each H2RG array: not illuminated (gsaoi/lookup.py comment).
BORDER = 4
#: Full-size numbers of bad pixels per array (scaled by area for smaller arrays).
N_DEAD, N_HOT = 220, 180
#: Fraction of dead pixels that appeared after the BPM was made (not in the BPM file).
NEW_DEAD_FRACTION = 0.1
#: Time of one full-frame non-destructive read (s); sets the Fowler first-group time.
T_READ = 0.66


@dataclass
class Detector:
    """Planted detector truth for one night.

    Attributes
    ----------
    size : int
        Array size in pixels.
    flat : list of ndarray
        Per array, what an ideal lamp-on minus lamp-off flat measures: quantum efficiency x
        vignetting x relative pixel area, normalised to a median of 1 over the good pixels
        of all four arrays (float32).  Zero on dead and border pixels.
    response : list of ndarray
        Per array, the point-source response: ``flat`` without the pixel-area term.
    dark : list of ndarray
        Per array, dark current in e-/s (zero except at hot pixels).
    dead, hot : list of (array, x, y, in_bpm[, rate]) tuples
        0-based pixel positions of planted bad pixels; ``in_bpm`` says whether the static
        BPM file lists them.
    bpm : list of ndarray
        Per array uint16 mask (1 = bad) written to the BPM file.
    """

    size: int
    flat: list
    response: list
    dark: list
    dead: list
    hot: list
    bpm: list


def _large_scale(rng, n, amplitude):
    """Smooth random pattern with a few-hundred-pixel correlation length (full-size units)."""
    coarse = rng.standard_normal((9, 9))
    pattern = ndimage.zoom(coarse, n / 9, order=3, mode="nearest")[:n, :n]
    pattern = (pattern - pattern.mean()) / (pattern.std() + 1e-12)
    return 1.0 + amplitude * pattern


def _pixel_area(index, size):
    """Relative on-sky area of each pixel from the distortion Jacobian (coarse, interpolated)."""
    step = max(size // 32, 1)
    grid = np.arange(1, size + step, step, dtype=float)
    gx, gy = np.meshgrid(grid, grid)
    area = np.abs(np.linalg.det(distortion.jacobian(index, gx, gy, size=size)))
    zoom = ndimage.zoom(area, (size + step - 1) / area.shape[0], order=1, mode="nearest")
    return zoom[:size, :size]


@lru_cache(maxsize=2)
def make_detector(seed: int, size: int) -> Detector:
    """Build the planted detector of a simulated night (deterministic in ``seed``, ``size``).

    Parameters
    ----------
    seed : int
        Night seed.
    size : int
        Array size in pixels.

    Returns
    -------
    Detector
    """
    rng = np.random.default_rng([seed, 1])
    scale = (size / FULL_SIZE) ** 2
    n_dead = max(int(round(N_DEAD * scale)), 8)
    n_hot = max(int(round(N_HOT * scale)), 8)
    border = max(int(round(BORDER * size / FULL_SIZE)), 1)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    areas = [_pixel_area(spec.index, size) for spec in ARRAYS]
    mean_area = float(np.mean([a.mean() for a in areas]))
    flats, responses, darks, bpms = [], [], [], []
    dead, hot = [], []
    for spec in ARRAYS:
        i = spec.index
        array_qe = 1.0 + 0.04 * rng.standard_normal()
        pix = 1.0 + 0.015 * rng.standard_normal((size, size))
        large = _large_scale(rng, size, 0.03)
        # Vignetting: radial fall-off from the mosaic centre (the array's inner corner).
        col, row = spec.position
        cx = size if col == 0 else 0.0
        cy = size if row == 0 else 0.0
        r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (2.0 * size**2)
        vignet = 1.0 - 0.05 * r2
        response = (array_qe * pix * large * vignet).astype(np.float32)
        response[:border, :] = 0.0
        response[-border:, :] = 0.0
        response[:, :border] = 0.0
        response[:, -border:] = 0.0
        inner = rng.choice((size - 2 * border) ** 2, n_dead + n_hot, replace=False)
        ys, xs = np.divmod(inner, size - 2 * border)
        ys, xs = ys + border, xs + border
        bpm = np.zeros((size, size), dtype=np.uint16)
        for k in range(n_dead):
            y, x = int(ys[k]), int(xs[k])
            response[y, x] = 0.0
            in_bpm = bool(rng.random() >= NEW_DEAD_FRACTION)
            if in_bpm:
                bpm[y, x] = 1
            dead.append((i, x, y, in_bpm))
        dark = np.zeros((size, size), dtype=np.float32)
        for k in range(n_dead, n_dead + n_hot):
            y, x = int(ys[k]), int(xs[k])
            rate = float(10 ** rng.uniform(0.5, 2.5))  # 3-300 e-/s
            dark[y, x] = rate
            bpm[y, x] = 1
            hot.append((i, x, y, True, round(rate, 3)))
        responses.append(response)
        flats.append(response * (areas[i] / mean_area).astype(np.float32))
        darks.append(dark)
        bpms.append(bpm)
    good = np.concatenate([f[f > 0] for f in flats])
    norm = float(np.median(good))
    flats = [(f / norm).astype(np.float32) for f in flats]
    responses = [(r / norm).astype(np.float32) for r in responses]
    return Detector(size, flats, responses, darks, dead, hot, bpms)


def invert_nonlinearity(linear_e, coeffs, *, iterations=4):
    """Return the raw (non-linear) count in electrons whose DRAGONS correction is ``linear_e``.

    DRAGONS corrects raw counts c (electrons) with ``a0*c + a1*c**2 + a2*c**3``; this solves
    that cubic for c by Newton's method (monotonic over the detector's range).
    """
    a0, a1, a2 = coeffs
    lin = np.asarray(linear_e, dtype=np.float64)
    c = lin / a0
    for _ in range(iterations):
        f = c * (a0 + c * (a1 + c * a2)) - lin
        fp = a0 + c * (2.0 * a1 + 3.0 * a2 * c)
        c = c - f / fp
    return c


def read_out(linear_e, rate, *, spec, lnrs, rng, coadds=1):
    """Turn accumulated linear electrons into raw ADU as a Fowler-sampled H2RG reads them.

    Parameters
    ----------
    linear_e : ndarray
        Noisy accumulated electrons (float) at the end of the exposure.
    rate : ndarray
        Expected electrons per second (used for the first Fowler group of saturated pixels).
    spec : gsaoi_watch.instrument.ArraySpec
        The array.
    lnrs : int
        Number of non-destructive reads (read noise and Fowler group length).
    rng : numpy.random.Generator
        Random generator for the read noise.
    coadds : int
        Number of coadds (GSAOI averages them; read noise scales by 1/sqrt(coadds)).

    Returns
    -------
    adu : ndarray of float32
        Raw ADU.  Saturated pixels read the plateau ``spec.well``; pixels so bright that
        they saturate within the first Fowler group read low (hidden saturation).
    saturated : ndarray of bool
        Pixels whose charge reached the full well.
    reads_low : ndarray of bool
        The saturated pixels that read low.
    """
    coeffs = spec.coeffs[lnrs]
    gain = spec.gain
    sat_e = spec.well * gain
    raw_e = invert_nonlinearity(np.maximum(linear_e, 0.0), coeffs)
    adu = (raw_e / gain).astype(np.float32)
    rn_adu = spec.read_noise[lnrs] / np.sqrt(coadds) / gain
    adu += (rn_adu * rng.standard_normal(adu.shape, dtype=np.float32)).astype(np.float32)
    saturated = raw_e >= sat_e
    reads_low = np.zeros_like(saturated)
    if np.any(saturated):
        first = rate[saturated] * (lnrs * T_READ / 2.0)
        first_e = np.minimum(invert_nonlinearity(first, coeffs), sat_e)
        low = first_e >= 0.5 * sat_e
        values = np.full(first.shape, spec.well, dtype=np.float32)
        values[low] = ((sat_e - first_e[low]) / gain).astype(np.float32)
        adu[saturated] = values
        reads_low[saturated] = low
    return adu, saturated, reads_low
