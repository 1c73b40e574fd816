"""The recipes on files: raw frames read through :mod:`gsaoi_watch.data.fitsio`.

:class:`FileSource` is the file-backed :class:`~gsaoi_watch.reduction.source.FrameSource`;
:func:`make_processed_flat` and :func:`reduce_images` run the pure recipes of
:mod:`gsaoi_watch.reduction.recipes` on a list of paths, the four arrays of a frame in a
pool of threads.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import FITSFixedWarning
from photutils.utils.exceptions import NoDetectionsWarning

from gsaoi_watch.data.descriptors import FrameInfo
from gsaoi_watch.data.fitsio import load_frame, read_frame_info
from gsaoi_watch.pipeline.framestore import DiskStore
from gsaoi_watch.reduction import recipes
from gsaoi_watch.reduction.container import Frame
from gsaoi_watch.reduction.source import ALL_ARRAYS

__all__ = ["FileSource", "make_processed_flat", "quiet_threads", "reduce_images"]

PathLike = str | os.PathLike


class FileSource:
    """A :class:`~gsaoi_watch.reduction.source.FrameSource` over FITS files."""

    def __init__(self, paths: Sequence[PathLike]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def info(self, index: int) -> FrameInfo:
        """Headers of file ``index`` (FrameError if it is not a complete GSAOI frame)."""
        return read_frame_info(self.paths[index])

    def load(self, index: int, indices: tuple[int, ...] = ALL_ARRAYS) -> Frame:
        """Arrays ``indices`` of file ``index``."""
        return load_frame(self.paths[index], indices=indices)


def make_processed_flat(paths: Sequence[PathLike], **kwargs: Any) -> Frame:
    """:func:`gsaoi_watch.reduction.recipes.make_processed_flat` on files."""
    return recipes.make_processed_flat(FileSource(paths), **kwargs)


def reduce_images(paths: Sequence[PathLike], *, workers: int = 2,
                  prepared: Callable[[PathLike], Frame | None] | None = None,
                  store_dir: PathLike | None = None, **kwargs: Any) -> dict:
    """:func:`gsaoi_watch.reduction.recipes.reduce_images` on files.

    Parameters
    ----------
    paths : list of str or Path
        Raw frames of one observation (objects and skies).
    workers : int
        Threads processing the four arrays of a frame (and loading frames).
    prepared : callable, optional
        ``prepared(path)`` returns the frame of ``path`` already prepared and flat-corrected
        (done while the sequence was observed), or None to prepare it here.
    store_dir : str or Path, optional
        Where the prepared frames are kept while the recipe runs, as files read back as
        memory maps (:class:`~gsaoi_watch.pipeline.framestore.DiskStore`, removed at the
        end; default: the system's temporary directory), unless ``store`` is given.
    **kwargs
        The other keyword arguments of the recipe (``flat``, ``flat_name``, ``bpm``,
        ``bpm_name``, ``params``, ``on_product``, ``store``, ``objmasks``).
    """
    source = FileSource(paths)
    by_index = None
    if prepared is not None:
        def by_index(index: int) -> Frame | None:
            return prepared(source.paths[index])
    with contextlib.ExitStack() as stack:
        if kwargs.get("store") is None:
            kwargs["store"] = stack.enter_context(
                DiskStore(store_dir if store_dir is not None else tempfile.gettempdir()))
        stack.enter_context(quiet_threads())
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=max(1, workers)))
        return recipes.reduce_images(source, prepared=by_index, mapper=pool.map, **kwargs)


#: What the steps silence inside their own ``warnings.catch_warnings`` blocks.
_EXPECTED_WARNINGS = (AstropyUserWarning, FITSFixedWarning, NoDetectionsWarning, RuntimeWarning)


@contextlib.contextmanager
def quiet_threads() -> Iterator[None]:
    """Silence, for the whole threaded run, the warnings the steps silence themselves.

    ``warnings.catch_warnings`` is not thread-safe: a thread leaving its block restores the
    filters it saved, which can undo another thread's "ignore" while that one is still
    inside, so an expected warning escapes (and fails a run under ``-W error``; seen once in
    about twenty test runs).  With the same categories ignored here, in the calling thread,
    before the threads start and until they end, every state a thread restores still
    ignores them.
    """
    with warnings.catch_warnings():
        for category in _EXPECTED_WARNINGS:
            warnings.simplefilter("ignore", category)
        yield
