"""The output grid of a stack: a north-up, east-left TAN pixel grid holding every frame."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from gsaoi_watch.data.headers import Header, new_header
from gsaoi_watch.reduction.stack.geometry import FrameGeometry, Pair
from gsaoi_watch.reduction.stack.geometry import apply_affine as _apply

__all__ = ["PIXEL_SCALE", "OutputGrid", "array_outline", "output_grid"]

#: Output pixel scale of a full-size (2048) stack, arcsec (DRAGONS resampleToCommonFrame).
PIXEL_SCALE = 0.02


@dataclass(frozen=True)
class OutputGrid:
    """A north-up, east-left TAN pixel grid.

    Attributes
    ----------
    ra, dec : float
        Tangent point (CRVAL), degrees.
    scale : float
        Pixel scale, arcsec.
    crpix : (float, float)
        1-based pixel of the tangent point.
    shape : (int, int)
        (ny, nx).
    """

    ra: float
    dec: float
    scale: float
    crpix: tuple
    shape: tuple

    @property
    def center(self) -> tuple[float, float]:
        """Tangent point (ra, dec)."""
        return (self.ra, self.dec)

    def pixel_to_plane(self, x: ArrayLike, y: ArrayLike) -> Pair:
        """1-based output pixels -> (east, north) arcsec."""
        return (-(np.asarray(x, float) - self.crpix[0]) * self.scale,
                (np.asarray(y, float) - self.crpix[1]) * self.scale)

    def plane_to_pixel(self, east: ArrayLike, north: ArrayLike) -> Pair:
        """(east, north) arcsec -> 1-based output pixels."""
        return (self.crpix[0] - np.asarray(east, float) / self.scale,
                self.crpix[1] + np.asarray(north, float) / self.scale)

    def header(self) -> Header:
        """FITS WCS keywords of the grid."""
        h = new_header()
        for key, value, comment in (
                ("CTYPE1", "RA---TAN", "R.A. in tangent plane projection"),
                ("CTYPE2", "DEC--TAN", "DEC. in tangent plane projection"),
                ("CRPIX1", float(self.crpix[0]), "Ref pix of axis 1"),
                ("CRPIX2", float(self.crpix[1]), "Ref pix of axis 2"),
                ("CRVAL1", float(self.ra), "RA at Ref pix in decimal degrees"),
                ("CRVAL2", float(self.dec), "DEC. at Ref pix in decimal degrees"),
                ("CD1_1", -self.scale / 3600.0, "partial of first axis coord w.r.t. x"),
                ("CD1_2", 0.0, "partial of first axis coord w.r.t. y"),
                ("CD2_1", 0.0, "partial of second axis coord w.r.t. x"),
                ("CD2_2", self.scale / 3600.0, "partial of second axis coord w.r.t. y"),
                ("CUNIT1", "deg", ""), ("CUNIT2", "deg", ""),
                ("RADESYS", "FK5", "R.A./DEC. coordinate system reference"),
                ("EQUINOX", 2000.0, "Equinox of coordinate system"),
                ("PIXSCALE", self.scale, "Pixel scale in arcsec/pixel")):
            h[key] = (value, comment)
        return h


def array_outline(geom: FrameGeometry, index: int, n: int = 17) -> Pair:
    """Points along the outer edge of array ``index`` (1-based pixels), ``n`` per side."""
    ny, nx = geom.shapes[index]
    t = np.linspace(0.5, 1.0, n)
    xs = np.concatenate([0.5 + (nx) * (t - 0.5) * 2, np.full(n, nx + 0.5),
                         0.5 + nx * (t - 0.5) * 2, np.full(n, 0.5)])
    ys = np.concatenate([np.full(n, 0.5), 0.5 + ny * (t - 0.5) * 2, np.full(n, ny + 0.5),
                         0.5 + ny * (t - 0.5) * 2])
    return xs, ys


def output_grid(geoms: Sequence[FrameGeometry], transforms: Sequence[np.ndarray],
                center: Sequence[float], scale: float, *, margin: int = 2) -> OutputGrid:
    """The smallest grid holding every array of every frame, tangent point ``center``."""
    es, ns = [], []
    for geom, m in zip(geoms, transforms):
        for i in range(len(geom.shapes)):
            e, n = geom.to_plane(i, *array_outline(geom, i), center)
            p = _apply(m, np.column_stack([e, n]))
            es.append(p[:, 0])
            ns.append(p[:, 1])
    e, n = np.concatenate(es), np.concatenate(ns)
    crpix1 = 0.5 + margin + e.max() / scale
    crpix2 = 0.5 + margin - n.min() / scale
    nx = int(math.ceil((e.max() - e.min()) / scale)) + 2 * margin
    ny = int(math.ceil((n.max() - n.min()) / scale)) + 2 * margin
    return OutputGrid(float(center[0]), float(center[1]), float(scale),
                      (float(crpix1), float(crpix2)), (ny, nx))

