"""Persistence (latency) of the simulated HAWAII-2RG arrays: residual charge after bright pixels.

Model
-----
A pixel that an earlier frame left *latent* releases trapped charge after the array is reset,
as a dark current decaying exponentially::

    I(t) = PERSIST_RATE * fill * exp(-t / PERSIST_TAU)        (e-/s, t from the reset)

``fill`` is the raw (non-linear) charge the earlier exposure collected in the pixel as a
fraction of the full well, at most 1 (saturated pixels, those that read low included, give
1).  With ``PERSIST_RATE`` = 3 e-/s and ``PERSIST_TAU`` = 180 s a filled pixel releases
``3 * 180`` = 540 e- in all, about 0.4 % of the ~1.1-1.4e5 e- well: H2RG persistence of a
few tenths of a per cent of the stimulus, decaying over minutes.  The reset is taken at the
end of the earlier exposure (UT start + exposure time); a later frame exposed from ``t1`` to
``t2`` after it collects ``PERSIST_RATE * fill * PERSIST_TAU * (exp(-t1/tau) - exp(-t2/tau))``
electrons, with Poisson noise, before the non-linearity of the readout (a pixel saturated in
the later frame keeps its value).  For the tutorial's 94 s science cadence that is ~127 e- in
the next frame (about 2 sigma of its sky noise), ~75 e- in the one after: invisible in one
pixel, a clear ghost over a star core, and flagged by addDQ's latency step either way.

Which pixels are latent is what DRAGONS' addDQ would flag in the earlier frame as written:
``ADU >= non_linear_level`` (non-linear and saturated, bits 2 and 4) or a connected region
(4-connected) of ``ADU < non_linear_level`` no larger than 10 000 pixels while something in
the array reaches that level (hidden saturation: star cores that read low), evaluated on
the ADU the simulator wrote, so the truth is exact at the threshold.  Only earlier frames
whose UT start is less than ``LATENCY_WINDOW`` (900 s, GSAOI's addDQ ``time``) before the
frame's contribute: the current left after that (< 1 % of ``PERSIST_RATE``) is not
planted.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from gsaoi_watch.sim.detector import invert_nonlinearity

__all__ = ["HIDDEN_SATURATION_MAX_AREA", "LATENCY_WINDOW", "PERSIST_RATE", "PERSIST_TAU",
           "add_persistence", "latent_pixels", "persistence_charge"]

#: Persistence current (e-/s) of a pixel filled to the well, right after the reset.
PERSIST_RATE = 3.0
#: e-folding time (s) of the persistence current.
PERSIST_TAU = 180.0
#: Earlier frames (UT start to UT start, s) whose latent pixels are planted: addDQ ``time``.
LATENCY_WINDOW = 900.0
#: DRAGONS addDQ: regions below the non-linear level up to this size are hidden saturation.
HIDDEN_SATURATION_MAX_AREA = 10000


def latent_pixels(adu: np.ndarray, non_linear_level: float) -> np.ndarray:
    """Pixels of a read-out array that leave persistence: DRAGONS' saturated | non_linear.

    Parameters
    ----------
    adu : ndarray
        The raw ADU as written (float32).
    non_linear_level : float
        Raw ADU of the non-linear threshold (``ArraySpec.non_linear_level``).

    Returns
    -------
    ndarray of bool
        ``adu >= non_linear_level`` plus the small connected regions below it (hidden
        saturation), only when some pixel reaches the level.
    """
    high = adu >= non_linear_level
    if not high.any():
        return high
    labels, n = ndimage.label(~high)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    small = sizes <= min(HIDDEN_SATURATION_MAX_AREA, adu.size // 4)  # as the pipeline
    small[0] = False
    return high | small[labels]


def persistence_charge(fill: np.ndarray, start: float, stop: float) -> np.ndarray:
    """Electrons of persistence collected from ``start`` to ``stop`` s after the reset.

    ``fill`` is the earlier raw charge over the well (clipped to [0, 1]).
    """
    fill = np.clip(np.asarray(fill, dtype=np.float64), 0.0, 1.0)
    decay = np.exp(-max(start, 0.0) / PERSIST_TAU) - np.exp(-max(stop, 0.0) / PERSIST_TAU)
    return PERSIST_RATE * PERSIST_TAU * fill * decay


def add_persistence(adu: np.ndarray, index: np.ndarray, charge: np.ndarray,
                    saturated: np.ndarray, *, spec, lnrs: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Add persistence electrons to read-out pixels (in place) as the readout would see them.

    The pixel's raw charge is taken as ``adu * gain`` (its read noise is additive after the
    non-linearity, so only the slope of the non-linearity at that level matters); the
    persistence (with Poisson noise) is added to the linear charge and read out again
    through the non-linearity.  Pixels already saturated keep their value; a pixel pushed
    to the well reads the plateau.

    Parameters
    ----------
    adu : ndarray of float32
        The frame's array (modified in place).
    index : ndarray of int
        Flat indices into ``adu`` of the pixels that receive persistence.
    charge : ndarray of float
        Expected persistence electrons per pixel of ``index``.
    saturated : ndarray of bool
        Pixels of ``adu`` that saturated in this frame.
    spec : gsaoi_watch.instrument.ArraySpec
        The array.
    lnrs : int
        Read mode (non-linearity coefficients).
    rng : numpy.random.Generator
        For the Poisson noise.

    Returns
    -------
    adu : ndarray
        The same array.
    n_new_saturated : int
        Pixels that the persistence pushed to the well.
    """
    flat = adu.reshape(-1)
    noisy = charge + np.sqrt(np.maximum(charge, 0.0)) * rng.standard_normal(charge.shape)
    keep = ~saturated.reshape(-1)[index]
    index, noisy = index[keep], noisy[keep]
    a0, a1, a2 = spec.coeffs[lnrs]
    sat_e = spec.well * spec.gain
    raw = np.maximum(flat[index].astype(np.float64) * spec.gain, 0.0)
    linear = raw * (a0 + raw * (a1 + raw * a2))
    new_raw = invert_nonlinearity(np.maximum(linear + noisy, 0.0), spec.coeffs[lnrs])
    full = new_raw >= sat_e
    values = flat[index].astype(np.float64) + (new_raw - raw) / spec.gain
    values[full] = spec.well
    flat[index] = values.astype(np.float32)
    return adu, int(full.sum())
