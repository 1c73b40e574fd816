"""Departures of the simulated instrument's arrays from the static distortion model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gsaoi_watch.instrument.tables import FULL_SIZE

__all__ = ["GeometryPerturbation"]

_N_ARRAYS = 4


def _four(name, values):
    values = tuple(float(v) for v in values)
    if len(values) != _N_ARRAYS:
        raise ValueError(f"geometry {name}: {len(values)} values, need one per array (4)")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"geometry {name}: values must be finite, not {values}")
    return values


@dataclass(frozen=True)
class GeometryPerturbation:
    """Per-array shift, rotation and scale of the real arrays against the static model.

    The static model (DRAGONS' polynomials, :mod:`gsaoi_watch.instrument.distortion`) says
    which focal-plane position each array pixel sees.  After an intervention the real array
    sits slightly elsewhere: real pixel ``p`` of array ``i`` sees what the static model
    assigns to pixel

        ``p' = c + (1 + scale[i]) R(rotation[i]) (p - c) + s[i]``

    with ``p = (x, y)`` 1-based full-size (2048) pixel coordinates, ``c = (1024.5, 1024.5)``
    the array centre, ``s[i] = (dx[i], dy[i])`` in full-size pixels and
    ``R(t) = [[cos t, -sin t], [sin t, cos t]]`` (a positive rotation turns +x towards +y).
    Seen in the static model's pixel frame, the real array is displaced by ``+s`` and turned
    by ``+rotation`` (counter-clockwise on the raw frame) about its centre and scaled by
    ``1 + scale`` (its pixels cover more sky), so a star the static model puts at ``p'``
    lands on the real array at

        ``p = c + R(-rotation[i]) (p' - c - s[i]) / (1 + scale[i])``

    i.e. a positive ``dx`` moves the stars by ``-dx`` pixels in x, a positive rotation turns
    them clockwise about the array centre.  On an array of ``size`` pixels (the scaled-down
    detector of :mod:`~gsaoi_watch.instrument.distortion`) the same transform applies in
    full-size coordinates: shifts are ``dx * size / 2048`` of its pixels, rotations and
    scales are the same, and the centre is ``(size + 1) / 2``.  The raw headers' WCS does
    not know about the departure (as on the real instrument).

    Attributes
    ----------
    dx, dy : tuple of float
        Per array (index 0-3, extension 1-4), shift ``s`` in full-size pixels.
    rotation : tuple of float
        Per array, rotation in degrees.
    scale : tuple of float
        Per array, relative scale change (dimensionless; 0 = the static scale).
    """

    dx: tuple = (0.0, 0.0, 0.0, 0.0)
    dy: tuple = (0.0, 0.0, 0.0, 0.0)
    rotation: tuple = (0.0, 0.0, 0.0, 0.0)
    scale: tuple = (0.0, 0.0, 0.0, 0.0)

    def __post_init__(self):
        for name in ("dx", "dy", "rotation", "scale"):
            object.__setattr__(self, name, _four(name, getattr(self, name)))
        if any(s <= -1.0 for s in self.scale):
            raise ValueError(f"geometry scale: must be > -1, not {self.scale}")

    @property
    def is_identity(self) -> bool:
        """True if every array sits where the static model says (all terms zero)."""
        return not any(self.dx + self.dy + self.rotation + self.scale)

    @classmethod
    def random(cls, seed: int, max_shift: float = 10.0, max_rotation: float = 0.3,
               max_scale: float = 0.0) -> GeometryPerturbation:
        """A random perturbation of the given amplitudes (reproducible from ``seed``).

        Per array the shift has a uniformly random direction and a length uniform in
        ``[max_shift / 2, max_shift]`` full-size pixels; the rotation a random sign and a
        size uniform in ``[max_rotation / 2, max_rotation]`` degrees; the scale is uniform in
        ``[-max_scale, max_scale]``.  Every array therefore departs by a sizeable fraction
        of the amplitudes and never beyond them.

        Parameters
        ----------
        seed : int
            Random seed.
        max_shift : float
            Largest shift length, full-size pixels.
        max_rotation : float
            Largest rotation, degrees.
        max_scale : float
            Largest relative scale change.

        Returns
        -------
        GeometryPerturbation
        """
        for name, value in (("max_shift", max_shift), ("max_rotation", max_rotation),
                            ("max_scale", max_scale)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"geometry {name}: must be >= 0, not {value}")
        rng = np.random.default_rng([seed, 0x6E0])
        length = max_shift * rng.uniform(0.5, 1.0, _N_ARRAYS)
        angle = rng.uniform(0.0, 2 * np.pi, _N_ARRAYS)
        sign = rng.choice([-1.0, 1.0], _N_ARRAYS)
        rotation = sign * max_rotation * rng.uniform(0.5, 1.0, _N_ARRAYS)
        scale = rng.uniform(-max_scale, max_scale, _N_ARRAYS)
        return cls(dx=tuple(length * np.cos(angle)), dy=tuple(length * np.sin(angle)),
                   rotation=tuple(rotation), scale=tuple(scale))

    def to_dict(self) -> dict:
        """JSON-serialisable form (``truth.json`` entry ``geometry``)."""
        return {"dx": list(self.dx), "dy": list(self.dy), "rotation": list(self.rotation),
                "scale": list(self.scale),
                "units": {"dx": "full-size (2048) pixels", "dy": "full-size (2048) pixels",
                          "rotation": "deg", "scale": "relative"}}

    @classmethod
    def from_dict(cls, data: dict) -> GeometryPerturbation:
        """Inverse of :meth:`to_dict` (``scale`` optional; ``units`` ignored)."""
        unknown = set(data) - {"dx", "dy", "rotation", "scale", "units"}
        if unknown:
            raise ValueError(f"geometry: unknown keys {sorted(unknown)}")
        return cls(dx=data["dx"], dy=data["dy"], rotation=data["rotation"],
                   scale=data.get("scale", (0.0,) * _N_ARRAYS))

    def _terms(self, index, size):
        f = FULL_SIZE / size
        t = math.radians(self.rotation[index])
        k = 1.0 + self.scale[index]
        c = 0.5 * (size + 1)
        return c, k * math.cos(t), k * math.sin(t), self.dx[index] / f, self.dy[index] / f

    def to_static(self, index: int, x, y, *, size: int = FULL_SIZE):
        """Real pixel ``(x, y)`` of array ``index`` to the static-model pixel it sees (p').

        Parameters
        ----------
        index : int
            0-based array index.
        x, y : array_like
            1-based pixel coordinates on an array of ``size`` pixels.
        size : int
            Array size in pixels.

        Returns
        -------
        x, y : ndarray
            Static-model pixel coordinates (same ``size`` pixels).
        """
        c, a, b, sx, sy = self._terms(index, size)
        u, v = np.asarray(x, dtype=np.float64) - c, np.asarray(y, dtype=np.float64) - c
        return c + a * u - b * v + sx, c + b * u + a * v + sy

    def from_static(self, index: int, x, y, *, size: int = FULL_SIZE):
        """Inverse of :meth:`to_static`: where a static-model pixel lands on the real array."""
        c, a, b, sx, sy = self._terms(index, size)
        u = np.asarray(x, dtype=np.float64) - c - sx
        v = np.asarray(y, dtype=np.float64) - c - sy
        d = a * a + b * b
        return c + (a * u + b * v) / d, c + (-b * u + a * v) / d
