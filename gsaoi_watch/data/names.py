"""Safe file names: what products, pictures and pages may be called (pure, no file access).

Names of products come from the names of the files gsaoi_watch read; this module makes them
safe: only :data:`SAFE_NAME_CHARACTERS`, no leading dot, bounded length, and distinct for
distinct inputs.  :func:`gsaoi_watch.data.fitsio.safe_output_path` applies it to every write.
"""

from __future__ import annotations

import hashlib
import re

from gsaoi_watch.errors import UnsafePathError

__all__ = ["MAX_NAME_LENGTH", "ROOT_NAME_LENGTH", "SAFE_NAME_CHARACTERS", "safe_name",
           "split_extension"]

#: The characters a product, picture or page name may hold (a regular-expression class);
#: any other character becomes ``_``.
SAFE_NAME_CHARACTERS = "A-Za-z0-9._+-"

#: Longest name written (characters; file systems allow 255 bytes).
MAX_NAME_LENGTH = 200

#: Longest name given to a frame read from a file, leaving room for the suffixes the
#: reduction steps add (``_nonlinearityCorrected`` ...), so products stay under
#: :data:`MAX_NAME_LENGTH` and are never renamed on writing.
ROOT_NAME_LENGTH = 160

_UNSAFE = re.compile(f"[^{SAFE_NAME_CHARACTERS}]")
_EXTENSIONS = (".fits.gz", ".fits.bz2", ".fits.fz", ".fits", ".fit", ".png", ".html")


def split_extension(name: str) -> tuple[str, str]:
    """(root, extension) of a file name, the extension one of the known FITS/PNG/HTML ones."""
    lower = name.lower()
    for ext in _EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext):]
    return name, ""


def safe_name(name: str, *, limit: int = MAX_NAME_LENGTH) -> str:
    """A file name made of :data:`SAFE_NAME_CHARACTERS` only, at most ``limit`` long.

    A name that is already safe is returned unchanged.  Otherwise every other character
    (``/``, spaces, control characters, non-ASCII letters, undecodable bytes ...) becomes
    ``_``, a leading dot becomes ``_`` (no hidden files, no ``..``), the name is cut to fit
    ``limit``, and ``-`` plus 8 hex digits of the SHA-1 of the original name is put before
    the extension, so that two different names never give the same safe name.

    Examples
    --------
    >>> safe_name("S20170505S0095.fits")
    'S20170505S0095.fits'
    >>> safe_name("../../x.fits")
    '_._.._x-22ca9e0c.fits'
    """
    if not isinstance(name, str) or not name:
        raise UnsafePathError(f"{name!r}: not a file name")
    cleaned = _UNSAFE.sub("_", name)
    if cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]
    if cleaned == name and len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    root, ext = split_extension(cleaned)
    keep = max(1, limit - len(ext) - len(digest) - 1)
    return f"{root[:keep]}-{digest}{ext}"
