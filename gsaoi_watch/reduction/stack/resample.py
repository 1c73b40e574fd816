"""Resampling and combination: every output pixel pulled back to each frame's arrays.

For every output pixel the geometric chain (:mod:`gsaoi_watch.reduction.stack.geometry`) is
run backwards on a coarse grid of nodes (every ``NODE_STEP`` output pixels) and
interpolated in between; SCI is interpolated with cubic splines, VAR and DQ are taken from
the nearest input pixel.  The output is made one strip of rows at a time
(:func:`combine_strip`), each strip independent of the others, so that a caller may run
them in parallel (see :mod:`gsaoi_watch.pipeline.pools`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from gsaoi_watch.instrument.dq import DQ, FAIL_BITS
from gsaoi_watch.reduction.combine import sigma_clipped_mean
from gsaoi_watch.reduction.container import Array, Frame
from gsaoi_watch.reduction.stack.geometry import FrameGeometry, invert
from gsaoi_watch.reduction.stack.geometry import apply_affine as _apply
from gsaoi_watch.reduction.stack.grid import OutputGrid, array_outline

__all__ = ["NODE_STEP", "REJECT_BITS", "PreparedFrame", "combine_strip", "prepare_frame"]

#: DQ bits that exclude an input pixel from the combination.
REJECT_BITS = FAIL_BITS | DQ["unilluminated"]
#: Output pixels per node of the coarse grid on which the geometric chain is evaluated.
NODE_STEP = 16


@dataclass
class _PreparedArray:
    index: int
    coeffs: np.ndarray      # cubic-spline coefficients of sci (bad pixels filled), float32
    var: np.ndarray         # float32
    dq: np.ndarray          # uint16, OR over each pixel's 3x3 neighbourhood
    box: tuple              # (x0, x1, y0, y1) inclusive 1-based output bounding box
    nodes_x: np.ndarray     # input x at coarse nodes, float64
    nodes_y: np.ndarray
    jac: np.ndarray         # input pixels per output pixel at the nodes


def _fill_bad(sci, bad):
    """Replace flagged pixels by the mean of their good 3x3 neighbours (0 if none)."""
    ys, xs = np.nonzero(bad)
    if not len(ys):
        return sci
    ny, nx = sci.shape
    total = np.zeros(len(ys))
    count = np.zeros(len(ys))
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            yy, xx = ys + dy, xs + dx
            ok = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
            yy, xx = np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)
            ok &= ~bad[yy, xx]
            total += np.where(ok, sci[yy, xx], 0.0)
            count += ok
    out = sci.copy()
    out[ys, xs] = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    return out


def _or_dilate(dq):
    """Bitwise OR of each pixel's 3x3 neighbourhood."""
    p = np.pad(dq, 1, mode="edge")
    out = np.zeros_like(dq)
    ny, nx = dq.shape
    for dy in range(3):
        for dx in range(3):
            out |= p[dy:dy + ny, dx:dx + nx]
    return out


def _prepare_array(arr: Array, index, geom, m_inv, grid):
    sci = np.nan_to_num(arr.sci.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    dq = arr.dq if arr.dq is not None else np.zeros(sci.shape, np.uint16)
    dq = dq | np.where(np.isfinite(arr.sci), 0, DQ["bad_pixel"]).astype(np.uint16)
    bad = (dq & REJECT_BITS) != 0
    coeffs = ndimage.spline_filter(_fill_bad(sci, bad), order=3, output=np.float32,
                                   mode="mirror")
    var = np.zeros(sci.shape, np.float32) if arr.var is None else np.nan_to_num(
        arr.var.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    # bounding box on the output grid
    e, n = geom.to_plane(index, *array_outline(geom, index), grid.center)
    minv = invert(m_inv)  # forward transform (frame plane -> aligned plane)
    p = _apply(minv, np.column_stack([e, n]))
    xo, yo = grid.plane_to_pixel(p[:, 0], p[:, 1])
    ny, nx = grid.shape
    x0, x1 = max(int(math.floor(xo.min())) - 1, 1), min(int(math.ceil(xo.max())) + 1, nx)
    y0, y1 = max(int(math.floor(yo.min())) - 1, 1), min(int(math.ceil(yo.max())) + 1, ny)
    gx = np.arange(x0, x1 + NODE_STEP, NODE_STEP, dtype=float)
    gy = np.arange(y0, y1 + NODE_STEP, NODE_STEP, dtype=float)
    mx, my = np.meshgrid(gx, gy)
    e, n = grid.pixel_to_plane(mx, my)
    q = _apply(m_inv, np.column_stack([e.ravel(), n.ravel()]))
    ix, iy = geom.from_plane(index, q[:, 0], q[:, 1], grid.center)
    ix, iy = ix.reshape(mx.shape), iy.reshape(mx.shape)
    dxdy = np.gradient(ix, NODE_STEP)
    dydy = np.gradient(iy, NODE_STEP)
    jac = np.abs(dxdy[1] * dydy[0] - dxdy[0] * dydy[1])
    return _PreparedArray(index, coeffs, var, _or_dilate(dq), (x0, x1, y0, y1), ix, iy, jac)


@dataclass
class PreparedFrame:
    """A frame ready to be resampled: per array, spline coefficients, VAR, DQ, nodes."""

    name: str
    arrays: list
    factor: float           # flux scale: exposure time and pixel area
    jacobian: bool          # multiply by the local Jacobian too


def prepare_frame(frame: Frame, geom: FrameGeometry, transform: np.ndarray, grid: OutputGrid,
                  *, t_ref: float, flux_mode: str, area_ref: float) -> PreparedFrame:
    """Everything :func:`combine_strip` needs of one frame (its pixels and where they go).

    ``transform`` takes the frame's plane onto the aligned stack plane; the flux is scaled
    to the exposure time ``t_ref`` and, for ``flux_mode`` 'surface', from the mean input
    pixel area ``area_ref`` to the output pixel area.
    """
    m_inv = invert(transform)
    arrays = [_prepare_array(a, i, geom, m_inv, grid) for i, a in enumerate(frame.arrays)]
    t_scale = t_ref / geom.exptime
    if flux_mode == "surface":
        factor = t_scale * grid.scale**2 / area_ref
    else:
        factor = t_scale
    return PreparedFrame(geom.name, arrays, factor, flux_mode == "jacobian")


def _interp_matrix(positions, n_nodes):
    """Dense (len(positions), n_nodes) matrix of linear-interpolation weights."""
    t = np.clip(positions, 0, n_nodes - 1)
    i0 = np.minimum(np.floor(t).astype(int), max(n_nodes - 2, 0))
    w = t - i0
    m = np.zeros((len(positions), n_nodes))
    rows = np.arange(len(positions))
    m[rows, i0] += 1.0 - w
    if n_nodes > 1:
        m[rows, np.minimum(i0 + 1, n_nodes - 1)] += w
    return m


def _interp_index(positions, n_nodes):
    """Left node and weight of linear interpolation at ``positions`` (node units)."""
    t = np.clip(positions, 0, n_nodes - 1)
    i0 = np.minimum(np.floor(t).astype(np.intp), max(n_nodes - 2, 0))
    return i0, t - i0


def _interp_columns(a, i0, w):
    """Linear interpolation of the columns of ``a`` at (left node, weight) ``i0``, ``w``."""
    if a.shape[1] == 1:
        return np.repeat(a, len(i0), axis=1)
    return a[:, i0] * (1.0 - w) + a[:, i0 + 1] * w


def _resample_strip(pf: PreparedFrame, row0, row1, out_sci, out_var, out_dq, out_cov):
    """Resample frame ``pf`` into output rows [row0, row1) (1-based, exclusive end)."""
    for pa in pf.arrays:
        x0, x1, y0, y1 = pa.box
        r0, r1 = max(row0, y0), min(row1 - 1, y1)
        if r0 > r1:
            continue
        wy = _interp_matrix((np.arange(r0, r1 + 1) - y0) / NODE_STEP, pa.nodes_x.shape[0])
        i0, w = _interp_index((np.arange(x0, x1 + 1) - x0) / NODE_STEP, pa.nodes_x.shape[1])
        ix = _interp_columns(wy @ pa.nodes_x, i0, w)  # bilinear interpolation of the nodes
        iy = _interp_columns(wy @ pa.nodes_y, i0, w)
        ny, nxa = pa.coeffs.shape
        inside = (ix > 0.5) & (ix < nxa + 0.5) & (iy > 0.5) & (iy < ny + 0.5)
        if not inside.any():
            continue
        ix -= 1.0
        iy -= 1.0
        sci = ndimage.map_coordinates(pa.coeffs, np.stack([iy, ix]), order=3,
                                      prefilter=False, mode="mirror", output=np.float32)
        # VAR and DQ from the nearest input pixel
        flat = (np.clip(np.rint(iy), 0, ny - 1).astype(np.intp) * nxa
                + np.clip(np.rint(ix), 0, nxa - 1).astype(np.intp))
        var = np.take(pa.var, flat)
        dq = np.take(pa.dq, flat)
        factor = np.float32(pf.factor)
        if pf.jacobian:
            factor = _interp_columns(wy @ pa.jac, i0, w).astype(np.float32) * factor
        sci *= factor
        var *= factor * factor
        rows = slice(r0 - row0, r1 - row0 + 1)
        cols = slice(x0 - 1, x1)
        np.copyto(out_sci[rows, cols], sci, where=inside)
        np.copyto(out_var[rows, cols], var, where=inside)
        np.copyto(out_dq[rows, cols], dq, where=inside)
        out_cov[rows, cols] |= inside


def _combine(sci: np.ndarray, var: np.ndarray, dq: np.ndarray, cov: np.ndarray, *,
             sigma: float, maxiters: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sigma-clipped mean over axis 0 of the covered, unflagged values: sci, var, dq, n_used.

    The combination is :func:`gsaoi_watch.reduction.combine.sigma_clipped_mean`.

    DQ: 0 where something was combined; else the OR of the rejecting bits of the covering
    inputs (bad_pixel if none), no_data where no input falls.
    """
    good = cov & ((dq & REJECT_BITS) == 0)
    out_sci, out_var, n = sigma_clipped_mean(np.where(good, sci, np.float32(np.nan)), var,
                                             sigma_lower=sigma, sigma_upper=sigma,
                                             maxiters=maxiters)
    covered = cov.any(axis=0)
    bits = np.bitwise_or.reduce(np.where(cov, dq, 0), axis=0).astype(np.uint16)
    out_dq = np.where(n > 0, 0, np.where(covered, bits & REJECT_BITS, DQ["no_data"]))
    out_dq = np.where((n == 0) & covered & (out_dq == 0), DQ["bad_pixel"], out_dq)
    return (out_sci.astype(np.float32), out_var.astype(np.float32),
            out_dq.astype(np.uint16), n)


def combine_strip(prepared: Sequence[PreparedFrame], row0: int, row1: int, nx: int,
                  sigma: float, maxiters: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Resample every frame into output rows [row0, row1) (1-based) and combine them.

    Returns
    -------
    sci, var, dq, ncombine : ndarray (row1 - row0, nx)
        float32, float32, uint16 and uint8 (the number of inputs combined).
    """
    nf, h = len(prepared), row1 - row0
    s_sci = np.zeros((nf, h, nx), np.float32)
    s_var = np.zeros((nf, h, nx), np.float32)
    s_dq = np.zeros((nf, h, nx), np.uint16)
    s_cov = np.zeros((nf, h, nx), bool)
    for f, pf in enumerate(prepared):
        _resample_strip(pf, row0, row1, s_sci[f], s_var[f], s_dq[f], s_cov[f])
    sci, var, dq, n = _combine(s_sci, s_var, s_dq, s_cov, sigma=sigma, maxiters=maxiters)
    return sci, var, dq, n.astype(np.uint8)
