"""Frame stores at the edge: a recipe's kept frames as .npy files read back as memory maps.

:class:`DiskStore` is the :class:`~gsaoi_watch.reduction.source.FrameStore` on files: ``put``
writes a frame's pixel arrays (SCI, VAR, DQ and OBJMASK of each array) as .npy files and
returns the frame with those arrays replaced by read-only memory maps of the files, so a
recipe keeping seven full-size sky frames between its passes holds none of their pixels in
its own memory: the kernel pages them in when a step reads them, and out again when memory
is needed (they are clean pages of files).  Headers and ``meta`` stay in memory.

The pages of a map that a step has read count in the process's resident size (RssFile,
and so in ``ru_maxrss``) for as long as the map lives: a recipe bounded in memory gets a
frame when it needs its pixels and lets it go after (a ``get`` costs a few file opens),
rather than holding every frame it got.
:class:`~gsaoi_watch.reduction.source.MemoryStore` (re-exported here) keeps frames as they are.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gsaoi_watch.reduction.container import Frame
from gsaoi_watch.reduction.source import ALL_ARRAYS, MemoryStore

__all__ = ["DiskStore", "MemoryStore"]

#: The pixel planes of an Array that a store writes (those that are not None).
PLANES = ("sci", "var", "dq", "objmask")


@dataclass(frozen=True)
class _Entry:
    """What a store keeps in memory of one frame: all but the pixels, and where they are."""

    directory: Path
    frame: Frame  # arrays with every plane None (headers, names and meta only)
    planes: tuple[tuple[str, ...], ...]  # per array, the planes written


class _Sink:
    """A file with only ``write``, so that a full disk comes out as an OSError with ENOSPC.

    numpy's ``write_array`` then writes through ``write`` (in chunks of 16 MiB) instead of
    ``tofile``, which reports a full disk as "n requested and m written" without an errno.
    """

    def __init__(self, fh: Any) -> None:
        self._fh = fh

    def write(self, data: Any) -> int:
        return int(self._fh.write(data))


class DiskStore:
    """A :class:`~gsaoi_watch.reduction.source.FrameStore` writing pixels to .npy files.

    Parameters
    ----------
    directory : str or os.PathLike
        Where the store makes its own new directory (``framestore-<pid>-*``, see
        :attr:`path`), which :meth:`close` removes with everything in it (so does the
        garbage collection of the store, or the end of the process).

    Notes
    -----
    Each ``put`` writes into a hidden temporary directory renamed into place when every file
    is written, so a frame is either stored whole or not at all; a full disk raises an
    :class:`OSError` with ``errno.ENOSPC`` naming the frame and the file, and leaves nothing
    behind.  A plane that is itself a memory map this store handed out (a frame got back,
    given a new OBJMASK and put again) is hard-linked, not written again.  The memory maps
    stay valid after their frame is dropped or the store closed (the files are unlinked,
    their pages live while mapped).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        parent = Path(directory)
        parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f"framestore-{os.getpid()}-", dir=parent))
        self._entries: dict[str, _Entry] = {}
        self._ids = itertools.count()
        # memory maps handed out: id -> (weak reference, file), to link instead of copying
        self._handed: dict[int, tuple[weakref.ref[np.ndarray], Path]] = {}
        self._lock = threading.Lock()  # puts and gets may come from a recipe's threads
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)

    # --- the FrameStore interface ---------------------------------------------------------
    def put(self, name: str, frame: Frame) -> Frame:
        """Write the pixel arrays of ``frame`` as ``name``; return it with memory maps.

        Raises
        ------
        OSError
            With the errno of the failed write (ENOSPC on a full disk) and the file's path;
            nothing of the frame is left on disk then, and a frame kept before as ``name``
            is still there.
        """
        self._check_open()
        key = next(self._ids)
        final = self.path / f"{key}"
        tmp = self.path / f".{key}.tmp"
        tmp.mkdir()
        target = tmp
        try:
            planes = []
            for i, arr in enumerate(frame.arrays):
                written = []
                for plane in PLANES:
                    value = getattr(arr, plane)
                    if value is None:
                        continue
                    target = tmp / f"{i}.{plane}.npy"
                    self._write(value, target)
                    written.append(plane)
                planes.append(tuple(written))
            os.rename(tmp, final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            code = exc.errno if exc.errno is not None else errno.EIO
            raise OSError(code, f"{os.strerror(code)} writing frame {name!r} to the frame "
                                f"store", str(target)) from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        skeleton = frame.with_(arrays=tuple(
            a.with_(sci=None, var=None, dq=None, objmask=None) for a in frame.arrays))
        with self._lock:
            old = self._entries.get(name)
            self._entries[name] = _Entry(final, skeleton, tuple(planes))
        if old is not None:
            shutil.rmtree(old.directory, ignore_errors=True)
        return self.get(name)

    def get(self, name: str, indices: tuple[int, ...] = ALL_ARRAYS) -> Frame:
        """The frame kept as ``name`` (arrays ``indices``): headers copied, pixels maps."""
        self._check_open()
        with self._lock:
            entry = self._entries[name]
        arrays = []
        for i, (arr, planes) in enumerate(zip(entry.frame.arrays, entry.planes)):
            if i not in indices:
                continue
            values = {}
            for plane in planes:
                path = entry.directory / f"{i}.{plane}.npy"
                value = np.load(path, mmap_mode="r")
                with self._lock:
                    self._handed[id(value)] = (weakref.ref(value), path)
                values[plane] = value
            arrays.append(arr.with_(header=arr.header.copy(), **values))
        self._prune()
        if tuple(indices) == tuple(range(len(entry.frame.arrays))):
            return entry.frame.with_(arrays=tuple(arrays))
        return entry.frame.with_(arrays=tuple(arrays),
                                 meta={**entry.frame.meta, "indices": tuple(indices)})

    def drop(self, name: str) -> None:
        """Remove the files of the frame kept as ``name`` (its memory maps stay valid)."""
        self._check_open()
        with self._lock:
            entry = self._entries.pop(name)
        shutil.rmtree(entry.directory, ignore_errors=True)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        """Remove the store's directory and everything in it; the store is then closed."""
        self._entries.clear()
        self._handed.clear()
        self._finalizer()

    def __enter__(self) -> DiskStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return not self._finalizer.alive

    def nbytes(self) -> int:
        """Bytes of the files the store holds now (hard links counted once)."""
        seen, total = set(), 0
        for p in self.path.rglob("*.npy"):
            st = p.stat()
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
        return total

    # --- helpers --------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"frame store {self.path} is closed")

    def _write(self, value: np.ndarray, target: Path) -> None:
        source = self._mapped_file(value)
        if source is not None:
            os.link(source, target)
            return
        with open(target, "wb") as fh:
            np.lib.format.write_array(_Sink(fh), np.asanyarray(value), allow_pickle=False)

    def _mapped_file(self, value: np.ndarray) -> Path | None:
        """The store's file that ``value`` maps whole, if any (and still there).

        ``value`` is a memory map this store handed out, or a view of one with the same
        layout (as ``np.asarray`` makes).
        """
        obj: Any = value
        while obj is not None:
            with self._lock:
                handed = self._handed.get(id(obj))
            if handed is not None and handed[0]() is obj:
                break
            obj = getattr(obj, "base", None)
        if obj is None or handed is None:
            return None
        same = (value.dtype == obj.dtype and value.shape == obj.shape
                and value.strides == obj.strides
                and value.__array_interface__["data"][0] == obj.__array_interface__["data"][0])
        path = handed[1]
        return path if same and path.exists() else None

    def _prune(self) -> None:
        """Forget the memory maps handed out that are gone."""
        with self._lock:
            if len(self._handed) > 64:
                self._handed = {k: v for k, v in self._handed.items() if v[0]() is not None}
