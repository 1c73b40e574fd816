"""PNG quick-look pictures of products: arrays mosaicked, zscale, scale bar, compass."""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.visualization import ZScaleInterval

from gsaoi_watch.data.fitsio import atomic_output, safe_output_path
from gsaoi_watch.instrument.dq import DQ
from gsaoi_watch.instrument.tables import ARRAY_BY_ID, FULL_SIZE, TILE_GAPS
from gsaoi_watch.reduction.photometry import header_pixel_scale

__all__ = ["mosaic", "picture_path", "write_picture"]

#: DQ bits shown as blank in a picture.
_BLANK = DQ["bad_pixel"] | DQ["saturated"] | DQ["no_data"] | DQ["unilluminated"]
_SECTION = re.compile(r"\[(\d+):(\d+),(\d+):(\d+)\]")


def picture_path(product: str | os.PathLike[str]) -> Path:
    """The picture of a product: its name with ``.png`` in place of ``.fits``, beside it."""
    product = Path(product)
    return product.with_name(product.name.removesuffix(".fits") + ".png")


def _section_origin(text):
    m = _SECTION.match(str(text or "").strip())
    if not m:
        return None
    x1, x2, y1, y2 = (int(v) for v in m.groups())
    return min(x1, x2) - 1, min(y1, y2) - 1


def _block_mean(data, good, factor):
    """Mean of the good pixels in factor x factor blocks (NaN where a block has none)."""
    if factor <= 1:
        return np.where(good, data, np.nan).astype(np.float32)
    ny, nx = (s // factor * factor for s in data.shape)
    d = np.where(good, data, 0.0)[:ny, :nx].astype(np.float64)
    g = good[:ny, :nx]
    shape = (ny // factor, factor, nx // factor, factor)
    total = d.reshape(shape).sum(axis=(1, 3))
    count = g.reshape(shape).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan).astype(np.float32)


def _read_planes(path):
    """SCI planes (data, good, header) of a product; unnamed image extensions for raw files."""
    planes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path, memmap=False) as hdul:
            sci = [h for h in hdul if isinstance(h, fits.ImageHDU | fits.PrimaryHDU)
                   and h.header.get("EXTNAME", "").strip().upper() == "SCI"
                   and h.header.get("NAXIS", 0) == 2]
            if not sci:
                sci = [h for h in hdul[1:] if isinstance(h, fits.ImageHDU)
                       and not h.header.get("EXTNAME", "").strip()
                       and h.header.get("NAXIS", 0) == 2]
            if not sci and hdul[0].header.get("NAXIS", 0) == 2:
                sci = [hdul[0]]
            for h in sci:
                data = np.asarray(h.data, dtype=np.float32)
                good = np.isfinite(data)
                ver = h.header.get("EXTVER", 1)
                try:
                    dq = hdul["DQ", ver].data
                except KeyError:
                    dq = None
                if dq is not None and dq.shape == data.shape:
                    good &= (np.asarray(dq) & _BLANK) == 0
                planes.append((data, good, h.header.copy()))
            phu = hdul[0].header.copy()
    return phu, planes


def mosaic(planes: list[Any], *, max_pixels: int = 1024) -> tuple[np.ndarray, int, Any]:
    """Place the planes of a product in one image, block-averaged to at most ``max_pixels``.

    Four GSAOI arrays go where their DETSEC puts them, with the tile gaps (scaled to the
    array size) between them; a single plane (a stack) is used as it is.

    Parameters
    ----------
    planes : list of (ndarray, ndarray of bool, Header)
        Data, good-pixel mask and header of each SCI extension.
    max_pixels : int
        Largest side of the output image.

    Returns
    -------
    image : ndarray of float32
        NaN where there are no data (gaps, flagged pixels).
    factor : int
        Block-averaging factor (output pixel = factor x factor input pixels).
    header : Header
        Header of the plane that defines the orientation (the first one).
    """
    if len(planes) == 1:
        data, good, header = planes[0]
        factor = max(1, math.ceil(max(data.shape) / max_pixels))
        return _block_mean(data, good, factor), factor, header
    places = []
    for k, (_, _, header) in enumerate(planes):
        spec = ARRAY_BY_ID.get(str(header.get("ARRAYID", "")).strip())
        col, row = spec.position if spec is not None else (k % 2, k // 2)
        size = FULL_SIZE
        ccdsize = _SECTION.match(str(header.get("CCDSIZE", "")).strip())
        if ccdsize:
            size = int(ccdsize.group(2))
        origin = _section_origin(header.get("DETSEC"))
        if origin is None:
            origin = (col * size, row * size)
        gx, gy = (round(g * size / FULL_SIZE) for g in TILE_GAPS)
        places.append((origin[0] + col * gx, origin[1] + row * gy))
    x0 = min(p[0] for p in places)
    y0 = min(p[1] for p in places)
    width = max(p[0] + d[0].shape[1] for p, d in zip(places, planes)) - x0
    height = max(p[1] + d[0].shape[0] for p, d in zip(places, planes)) - y0
    factor = max(1, math.ceil(max(width, height) / max_pixels))
    image = np.full((math.ceil(height / factor), math.ceil(width / factor)), np.nan, np.float32)
    for (px, py), (data, good, _) in zip(places, planes):
        small = _block_mean(data, good, factor)
        ox, oy = (px - x0) // factor, (py - y0) // factor
        h, w = small.shape
        h, w = min(h, image.shape[0] - oy), min(w, image.shape[1] - ox)
        image[oy:oy + h, ox:ox + w] = small[:h, :w]
    return image, factor, planes[0][2]


def _compass(header, phu):
    """Unit vectors (in image x, y) pointing North and East."""
    try:
        cd = np.array([[header["CD1_1"], header["CD1_2"]], [header["CD2_1"], header["CD2_2"]]],
                      float)
        inv = np.linalg.inv(cd)
    except (KeyError, np.linalg.LinAlgError):
        # GSAOI: +x East, +y North at PA = 0; the sky turns by PA on the detector
        pa = math.radians(float(phu.get("PA", 0.0) or 0.0))
        inv = np.array([[math.cos(pa), math.sin(pa)], [-math.sin(pa), math.cos(pa)]])
    north = inv @ np.array([0.0, 1.0])
    east = inv @ np.array([1.0, 0.0])
    return north / np.hypot(*north), east / np.hypot(*east)


def _nice_length(arcsec):
    """A round scale-bar length not longer than ``arcsec``."""
    for step in (100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1):
        if step <= arcsec:
            return step
    return arcsec


def write_picture(product: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None,
                  size_px: int = 800, max_pixels: int = 1024) -> Path:
    """Write a PNG quick-look of a product file (flat, reduced frame or stack).

    The four arrays are mosaicked in place (one plane for a stack), block-averaged, shown
    with a zscale stretch (flagged pixels and gaps blank), with a scale bar in arcsec,
    North and East arrows from the WCS (else the PA keyword) and the file name as title.
    The PNG is written atomically, its name made safe (:func:`safe_output_path`).

    Parameters
    ----------
    product : str or os.PathLike
        The FITS product.
    out : str or os.PathLike, optional
        Where to write (default :func:`picture_path`, beside the product).
    size_px : int
        Width and height of the PNG in pixels.
    max_pixels : int
        Largest side of the block-averaged image that is drawn.

    Returns
    -------
    pathlib.Path
        The PNG written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    product = Path(product)
    wanted = Path(out) if out is not None else picture_path(product)
    target = safe_output_path(wanted.parent, wanted.name)
    phu, planes = _read_planes(product)
    if not planes:
        raise ValueError(f"{product.name}: no 2-D image extension to draw")
    image, factor, header = mosaic(planes, max_pixels=max_pixels)
    finite = image[np.isfinite(image)]
    vmin, vmax = (ZScaleInterval().get_limits(finite) if finite.size > 10 else (0.0, 1.0))
    dpi = 100
    fig = Figure(figsize=(size_px / dpi, size_px / dpi), dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.92))
    ax.set_facecolor("#202040")
    ax.imshow(image, origin="lower", cmap="gray", vmin=vmin, vmax=vmax,
              interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(product.name, color="white", fontsize=12, y=0.985)
    ny, nx = image.shape
    scale = header_pixel_scale(header, phu) * factor  # arcsec per displayed pixel
    bar = _nice_length(0.2 * nx * scale)
    bar_px = bar / scale
    x1, yb = 0.05 * nx, 0.05 * ny
    ax.plot([x1, x1 + bar_px], [yb, yb], color="yellow", lw=3)
    ax.text(x1 + bar_px / 2, yb + 0.015 * ny, f'{bar:g}"', color="yellow", ha="center",
            va="bottom", fontsize=11)
    north, east = _compass(header, phu)
    length = 0.1 * min(nx, ny)
    cx, cy = 0.82 * nx, 0.16 * ny
    for vec, label in ((north, "N"), (east, "E")):
        ax.annotate("", xy=(cx + vec[0] * length, cy + vec[1] * length), xytext=(cx, cy),
                    arrowprops=dict(arrowstyle="->", color="cyan", lw=2))
        ax.text(cx + vec[0] * length * 1.3, cy + vec[1] * length * 1.3, label, color="cyan",
                ha="center", va="center", fontsize=11, clip_on=False)
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(-0.5, ny - 0.5)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(target) as fh:
        fig.savefig(fh, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    return target
