"""Where the recipes get their frames, and how they run independent pieces of work.

A recipe never opens a file: it asks a :class:`FrameSource` for the headers of its inputs
(to screen them and plan the reduction) and for their pixels when it needs them, one array
at a time if it wants.  The file-backed source lives at the edge
(:class:`gsaoi_watch.pipeline.recipes.FileSource`); :class:`MemorySource` serves frames
already in memory.  Work that may run in parallel goes through a :data:`Mapper` given by
the caller (the builtin :func:`map` runs it here, one piece after the other).
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
    """Where a recipe keeps the frames it has prepared, by name, until it is done.

    ``get`` may return copies (a store on files) or the frames themselves (in memory);
    steps never modify what they are given either way.
    """

    def __contains__(self, name: object) -> bool:
        """Whether frame ``name`` is held."""
        ...

    def put(self, name: str, frame: Frame) -> None:
        """Keep ``frame`` as ``name``."""
        ...

    def get(self, name: str, indices: tuple[int, ...] = ALL_ARRAYS) -> Frame:
        """Frame ``name`` with arrays ``indices``."""
        ...


class MemoryStore:
    """A :class:`FrameStore` in memory (small frames, tests)."""

    def __init__(self) -> None:
        self.frames: dict[str, Frame] = {}

    def __contains__(self, name: object) -> bool:
        return name in self.frames

    def put(self, name: str, frame: Frame) -> None:
        """Keep ``frame`` as ``name``."""
        self.frames[name] = frame

    def get(self, name: str, indices: tuple[int, ...] = ALL_ARRAYS) -> Frame:
        """Frame ``name`` (a shallow copy), or a view of some of its arrays."""
        frame = self.frames[name]
        if tuple(indices) == tuple(range(len(frame.arrays))):
            return frame.with_()
        return frame.with_(arrays=tuple(frame.arrays[i] for i in indices),
                           meta={**frame.meta, "indices": tuple(indices)})
