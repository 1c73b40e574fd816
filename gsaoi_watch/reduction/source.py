"""Where the recipes get their frames, and how they run independent pieces of work.

A recipe never opens a file: it asks a :class:`FrameSource` for the headers of its inputs
(to screen them and plan the reduction) and for their pixels when it needs them, one array
at a time if it wants.  The file-backed source lives at the edge
(:class:`gsaoi_watch.pipeline.recipes.FileSource`); :class:`MemorySource` serves frames
already in memory.  Work that may run in parallel goes through a :data:`Mapper` given by
the caller (the builtin :func:`map` runs it here, one piece after the other).  Frames a
recipe keeps between its passes go to a :class:`FrameStore` given by the caller: the
:class:`MemoryStore` here keeps them as they are, the disk store at the edge
(:class:`gsaoi_watch.pipeline.framestore.DiskStore`) writes their pixels to files and
hands back read-only memory maps of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from gsaoi_watch.data.descriptors import FrameInfo
from gsaoi_watch.reduction.container import Frame

__all__ = ["ALL_ARRAYS", "FrameSource", "FrameStore", "Mapper", "MemorySource", "MemoryStore"]

#: A function with the signature of the builtin ``map``: fn(item) for every item, in order.
Mapper = Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]]

#: The four arrays of a GSAOI frame.
ALL_ARRAYS = (0, 1, 2, 3)


class FrameSource(Protocol):
    """The inputs of one recipe, by position (0 .. len - 1)."""

    def __len__(self) -> int:
        """Number of inputs."""
        ...

    def info(self, index: int) -> FrameInfo:
        """Headers of input ``index``; raises FrameError if it is not a usable frame."""
        ...

    def load(self, index: int, indices: tuple[int, ...] = ALL_ARRAYS) -> Frame:
        """Pixels and headers of arrays ``indices`` (0-3) of input ``index``."""
        ...


class MemorySource:
    """A :class:`FrameSource` over frames already in memory (four arrays each).

    ``load`` returns a shallow copy (headers and ``meta`` copied, pixel arrays shared:
    steps never modify pixels in place) holding the chosen arrays.
    """

    def __init__(self, frames: Sequence[Frame]):
        self.frames = list(frames)

    def __len__(self) -> int:
        return len(self.frames)

    def info(self, index: int) -> FrameInfo:
        """Headers of frame ``index`` (its current file name as the path)."""
        frame = self.frames[index]
        return FrameInfo(frame.phu, [a.header for a in frame.arrays], path=frame.filename)

    def load(self, index: int, indices: tuple[int, ...] = ALL_ARRAYS) -> Frame:
        """Frame ``index``, or the view of some of its arrays."""
        frame = self.frames[index]
        if tuple(indices) == tuple(range(len(frame.arrays))):
            return frame.with_()
        return frame.with_(arrays=tuple(frame.arrays[i] for i in indices),
                           meta={**frame.meta, "indices": tuple(indices)})


class FrameStore(Protocol):
    """Frames kept by name while a recipe runs (the prepared frames between its passes).

    ``get`` may return copies (a store on files: read-only memory maps) or the frames
    themselves (in memory); frames got back are never to be written into (steps never
    modify pixels in place).  ``put`` may hand back another Frame than the one given, with
    the same values (a disk store returns its memory maps), or None.  The stores here also
    offer ``drop(name)`` and ``close()``.
    """

    def __contains__(self, name: object) -> bool:
        """True if a frame is kept as ``name``."""
        ...

    def put(self, name: str, frame: Frame) -> Any:
        """Keep ``frame`` as ``name`` (replacing what was there)."""
        ...

    def get(self, name: str, indices: tuple[int, ...] = ALL_ARRAYS) -> Frame:
        """The frame kept as ``name``, with arrays ``indices`` (KeyError if none)."""
        ...


class MemoryStore:
    """A :class:`FrameStore` in memory: a dict of frames, for small frames and tests.

    ``get`` returns a shallow copy (the headers copied, the pixel arrays shared), as
    :meth:`MemorySource.load` does; usable as a context manager (``close`` on exit).
    """

    def __init__(self) -> None:
        self._frames: dict[str, Frame] = {}

    def put(self, name: str, frame: Frame) -> Frame:
        """Keep ``frame`` as ``name``; return it."""
        self._frames[name] = frame
        return frame

    def get(self, name: str, indices: tuple[int, ...] = ALL_ARRAYS) -> Frame:
        """A shallow copy of the frame kept as ``name`` (or of some of its arrays)."""
        return _shallow_copy(self._frames[name], indices)

    def drop(self, name: str) -> None:
        """Forget the frame kept as ``name``."""
        del self._frames[name]

    def __contains__(self, name: object) -> bool:
        return name in self._frames

    def __len__(self) -> int:
        return len(self._frames)

    def close(self) -> None:
        """Forget every frame."""
        self._frames.clear()

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shallow_copy(frame: Frame, indices: tuple[int, ...] = ALL_ARRAYS) -> Frame:
    """``frame`` with its headers and meta copied and its pixel arrays shared.

    ``indices`` other than all of its arrays keeps those (``meta['indices']`` says which).
    """
    if tuple(indices) == tuple(range(len(frame.arrays))):
        return frame.with_(arrays=tuple(a.with_(header=a.header.copy()) for a in frame.arrays))
    return frame.with_(arrays=tuple(frame.arrays[i].with_(header=frame.arrays[i].header.copy())
                                    for i in indices),
                       meta={**frame.meta, "indices": tuple(indices)})
