"""The C allocator of processes that reduce full-size frames: one arena.

glibc gives each thread that allocates its own arena and keeps memory freed there for later
use by that thread, so a reduction whose two threads each free a few hundred megabytes of
temporaries holds both sets at once.  Measured on the full-size science reduction with the
frames in a disk store: peak RSS 2158 MiB with glibc's default arenas, 1598 MiB with one
(``MALLOC_ARENA_MAX=1``), for the same products; the reduction's large arrays are
allocated in bulk, so one arena costs no measurable time.  :func:`limit_arenas` sets that
from inside the process (``mallopt(M_ARENA_MAX)``), before its threads start; where
``mallopt`` is not glibc's it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["limit_arenas"]

#: glibc's ``M_ARENA_MAX`` parameter of ``mallopt``.
M_ARENA_MAX = -8


def limit_arenas(count: int = 1) -> bool:
    """Use at most ``count`` malloc arenas in this process; True if the C library agreed.

    An explicit ``MALLOC_ARENA_MAX`` in the environment wins (glibc has read it already).
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, int(count)))
