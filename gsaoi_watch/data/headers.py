"""The header type of frames: astropy's FITS ``Header``, as a data structure.

Headers are data for the reduction core (keywords read and written in memory); files are
not.  The core takes the class from here, so that ``astropy.io.fits`` itself, which also
reads and writes files, is imported only by :mod:`gsaoi_watch.data.fitsio` and the edges
(pipeline, daemon, quicklook, cli).
"""

from __future__ import annotations

from astropy.io.fits import Header

__all__ = ["Header", "new_header"]


def new_header() -> Header:
    """Return an empty header."""
    return Header()
