"""Distortion correction and stacking (disco_stu): align frames, resample north up, combine.

The numerical core of ``gsaoi-watch stack``: pure functions on :class:`Frame` containers,
no file or database I/O.  The chain for one array pixel is

    array pixel --static distortion--> focal plane (arcsec) --PA, pointing--> sky (RA, Dec)
    --gnomonic about the stack centre--> stack plane (east, north arcsec)
    --per-frame affine correction--> aligned stack plane --> output pixel,

and resampling runs it backwards for every output pixel (on a coarse grid, interpolated).

Modules: :mod:`.geometry` (the chain, one frame's pointing), :mod:`.align` (catalogues on
the stack plane, matching, transforms), :mod:`.grid` (the output grid), :mod:`.resample`
(preparing frames, resampling and combining strips of output rows) and :mod:`.step`
(:func:`stack_frames`, the step).
"""

from gsaoi_watch.reduction.stack.align import align_catalogs, align_frames, frame_catalog
from gsaoi_watch.reduction.stack.geometry import (
    FrameGeometry,
    frame_geometry,
    mosaic_pixel_area,
    plane_to_sky,
    sky_to_plane,
    tangent_plane,
)
from gsaoi_watch.reduction.stack.grid import PIXEL_SCALE, OutputGrid, output_grid
from gsaoi_watch.reduction.stack.resample import REJECT_BITS
from gsaoi_watch.reduction.stack.step import Mapper, stack_frames

__all__ = ["PIXEL_SCALE", "REJECT_BITS", "FrameGeometry", "Mapper", "OutputGrid",
           "align_catalogs", "align_frames", "frame_catalog", "frame_geometry",
           "mosaic_pixel_area", "output_grid", "plane_to_sky", "sky_to_plane", "stack_frames",
           "tangent_plane"]
