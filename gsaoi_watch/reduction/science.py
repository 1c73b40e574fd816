"""The sky passes of a science sequence, built around time.

DRAGONS reduces a science sequence in two sky passes once every frame is there: pass 1
subtracts from each sky frame the median of its associated skies and detects its objects
(an object mask per array); pass 2 subtracts from each target frame the median of its
associated skies with those objects masked.  Here the same passes are pieces that can run
as the frames land:

* **Pass 1 of a sky frame** uses its ``min_skies`` skies nearest in time (DRAGONS: its full
  association, every sky within 900 s).  The mask only has to find the sky field's
  objects, and this makes it *causal*: the set is known for good as soon as a frame has
  landed that was observed at least as long after the sky as the farthest of them
  (frames land in time order), so the daemon makes each sky's mask a few frames after it
  lands, and a batch reduction of the whole sequence makes the same mask
  (:func:`settled_pass1`).
* **Pass 2 of a target frame** uses DRAGONS' association over the whole sequence; with
  the skies landed so far it gives a *provisional* product during the sequence, and with
  the whole sequence the final one, identical to a batch reduction.
* **The sky level** of each target frame follows the night (:func:`target_level`).

Everything here is pure: frames come from a loader, results go back to the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gsaoi_watch.errors import ReductionError
from gsaoi_watch.instrument.dq import DQ, FAIL_BITS
from gsaoi_watch.reduction.container import Array, Frame
from gsaoi_watch.reduction.detect import detect_array
from gsaoi_watch.reduction.sky import (
    combine_skies,
    dilate_mask,
    level_at,
    measure_background,
    sky_level,
    subtract_sky,
)
from gsaoi_watch.reduction.source import Mapper
from gsaoi_watch.reduction.standardize import mark

__all__ = ["INTERPOLATIONS", "LEVEL_SAMPLES", "SkyCorrector", "SkyOptions", "pass1_skies",
           "settled_pass1", "sky_stack_level", "target_level"]

#: ``skyCorrect:sky_interpolation`` values: how the sky level of a target frame is set.
INTERPOLATIONS = {
    "time": "interpolated in time between the skies around the frame (monotone cubic), "
            "extrapolated by at most one sky interval at the ends",
    "nearest": "the level of the sky nearest in time",
    "none": "DRAGONS: the level of the first associated sky in time order (the sky stack's "
            "reference level, zero=True)",
}

#: (array index) -> the array of a frame, loaded on demand.
ArrayLoader = Callable[[str, int], Array]


def target_level(method: str, levels: Sequence[float] | np.ndarray,
                 times: Sequence[float] | np.ndarray,
                 target_time: float) -> float:
    """The sky level of a frame observed at ``target_time``, from its associated skies.

    Parameters
    ----------
    method : {'time', 'nearest', 'none'}
        See :data:`INTERPOLATIONS`.  DRAGONS (``none``) brings the associated skies, listed
        in time order by associateSky, to the level of the first with additive offsets and
        subtracts their median: the target frame gets the level of the *earliest* of its
        skies, not of the nearest.
    levels, times : sequence of float
        Each associated sky's background level and observation time (seconds).
    target_time : float
        The target frame's observation time (seconds, same origin).
    """
    if method not in INTERPOLATIONS:
        raise ValueError(f"skyCorrect:sky_interpolation must be one of "
                         f"{', '.join(INTERPOLATIONS)}, not {method!r}")
    lv, t = np.asarray(levels, float), np.asarray(times, float)
    if method == "none":
        return float(lv[int(np.argmin(t))])
    if method == "nearest":
        return float(lv[int(np.argmin(np.abs(t - target_time)))])
    return level_at(lv, t, target_time)


@dataclass(frozen=True)
class SkyOptions:
    """The skyCorrect and detectSources choices of one sequence."""

    offset_sky: bool
    scale_sky: bool
    interpolation: str = "time"
    mask_objects: bool = True
    dilation: float = 6.0
    detect: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_params(cls, params: dict, offset: bool, scale: bool) -> SkyOptions:
        """The options from merged recipe parameters and the chosen offset/scale."""
        sc, det = params["skyCorrect"], params["detectSources"]
        if sc["sky_interpolation"] not in INTERPOLATIONS:
            raise ValueError(f"skyCorrect:sky_interpolation must be one of "
                             f"{', '.join(INTERPOLATIONS)}, not {sc['sky_interpolation']!r}")
        return cls(offset_sky=offset, scale_sky=scale, interpolation=sc["sky_interpolation"],
                   mask_objects=bool(sc["mask_objects"]), dilation=float(sc["dilation"]),
                   detect=(("detect_thresh", det["detect_thresh"]),
                           ("detect_minarea", det["detect_minarea"]),
                           ("back_size", det["back_size"])))


def pass1_skies(plan: dict, min_skies: int) -> dict[str, list[str]]:
    """The skies each sky frame is corrected with in pass 1: its ``min_skies`` nearest."""
    return {s: list(plan["sky_skies"][s][:max(1, min_skies)]) for s in plan["skies"]
            if plan["sky_skies"].get(s)}


def settled_pass1(plan: dict, when: dict[str, float], latest: float, min_skies: int,
                  *, complete: bool = False) -> dict[str, list[str]]:
    """Pass-1 sky lists that no later frame can change.

    Frames land in time order, so a frame still to come was observed after ``latest`` (the
    latest observation time landed).  A sky's list of its ``min_skies`` nearest skies is
    settled when it is full and its farthest member is no farther in time than
    ``latest`` is; with ``complete`` (the sequence is over) every list is.
    """
    out = {}
    for s, skies in pass1_skies(plan, min_skies).items():
        if complete or (len(skies) >= min_skies
                        and max(abs(when[k] - when[s]) for k in skies) <= latest - when[s]):
            out[s] = skies
    return out


#: Pixels a sky level is measured on, at least (every pixel of a smaller array).
LEVEL_SAMPLES = 400_000


def sky_stack_level(arr: Array) -> float:
    """Background level of a sky array on its unflagged pixels, for the level model.

    The level of every sky feeds the level of the target frames, so it is measured on at
    least :data:`LEVEL_SAMPLES` pixels (every 10th of a full 2048 x 2048 array, every pixel
    of a small one): with 6500 pixels (a 256-pixel array sampled every 10th) the level
    scattered by 0.03 % of the sky from frame to frame, a third of the 0.1 % budget.
    """
    n = arr.sci.size
    sampling = int(min(10, max(1, n // LEVEL_SAMPLES)))
    good = (arr.need("dq") & FAIL_BITS) == 0
    return measure_background(arr.sci, good, sampling=sampling)


class SkyCorrector:
    """Pass 1 and pass 2 of skyCorrect on frames given by a loader.

    Parameters
    ----------
    options : SkyOptions
    when : dict
        Observation time (seconds) of every frame, by name.
    load : callable
        ``load(name, i)``: array ``i`` of frame ``name``, prepared and flat-corrected.
    objmasks : dict, optional
        Pass-1 object masks already known: name -> (sky list, four masks); this object adds
        the ones it makes.
    mapper : callable
        Runs the four arrays of a frame (e.g. a thread pool's ``map``).
    """

    def __init__(self, options: SkyOptions, when: dict[str, float], load: ArrayLoader, *,
                 objmasks: dict[str, tuple[list[str], tuple[Any, ...]]] | None = None,
                 mapper: Mapper = map):
        self.opt, self.when, self.load, self.map = options, when, load, mapper
        self.objmasks = objmasks if objmasks is not None else {}
        self._dilated: dict[tuple[str, int], Any] = {}
        self._levels: dict[tuple[str, int, bool], float] = {}
        self._stacks: dict[tuple[tuple[str, ...], int, bool],
                           tuple[Array, np.ndarray, tuple[str, ...]]] = {}

    # --- skies -------------------------------------------------------------------------
    def _masked(self, name: str, i: int, use_mask: bool) -> tuple[Array, float]:
        """Sky ``name`` array ``i`` ready to stack (objects in DQ when masked) and its level."""
        arr = self.load(name, i)
        known = self.objmasks.get(name)
        if use_mask and self.opt.mask_objects and known is not None:
            key = (name, i)
            if key not in self._dilated:
                m = known[1][i]
                self._dilated[key] = None if m is None else dilate_mask(
                    np.asarray(m).astype(bool), self.opt.dilation)
            dilated = self._dilated[key]
            if dilated is not None:
                dq = arr.need("dq").copy()
                dq[dilated] |= DQ["cosmic_ray"]
                arr = arr.with_(dq=dq)
            masked = True
        else:
            masked = False
        arr = arr.with_(objmask=None)
        lkey = (name, i, masked)
        if lkey not in self._levels:
            try:
                self._levels[lkey] = sky_stack_level(arr)
            except ReductionError:  # every pixel flagged or masked
                self._levels[lkey] = float("nan")
        return arr, self._levels[lkey]

    def _sky_for(self, skies: Sequence[str], i: int, t: float, use_mask: bool,
                 cache: bool) -> Array:
        key = (tuple(sorted(skies)), i, use_mask)
        if key in self._stacks:
            stacked, levels, used = self._stacks[key]
        else:
            prepared = [(k, *self._masked(k, i, use_mask)) for k in key[0]]
            # a sky array with no pixel left to measure (objects and flags cover it) has no
            # level: it is left out of this array's stack; with none left, the unmasked skies
            kept = [(k, a, lev) for k, a, lev in prepared if np.isfinite(lev)]
            if not kept:
                if use_mask:
                    return self._sky_for(skies, i, t, False, cache)
                raise ReductionError(f"array {i + 1}: no pixel of the skies "
                                     f"{', '.join(key[0])} is left to measure their level")
            used = tuple(k for k, _, _ in kept)
            stacked, levels = combine_skies([(a, lev) for _, a, lev in kept])
            if cache:
                self._stacks[key] = (stacked, levels, used)
        level = target_level(self.opt.interpolation, levels, [self.when[k] for k in used], t)
        if level == levels[0]:
            return stacked
        return stacked.with_(sci=(stacked.sci + np.float32(level - levels[0])).astype(
            np.float32))

    def release(self, skies: Sequence[str]) -> None:
        """Forget the sky stacks of one set of skies (no target frame needs them any more)."""
        key = tuple(sorted(skies))
        for k in [k for k in self._stacks if k[0] == key]:
            del self._stacks[k]

    # --- pass 1 ------------------------------------------------------------------------
    def sky_mask(self, name: str, skies: Sequence[str]) -> tuple[Any, ...]:
        """Pass 1 for sky frame ``name``: its object masks (one per array), kept and returned.

        ``skies`` (its pass-1 skies, unmasked) are combined, brought to the level at its
        time, subtracted, and the objects of the result detected.
        """
        det = dict(self.opt.detect)

        def one(i: int) -> Any:
            arr = self.load(name, i)
            if not skies:
                return None
            sky = self._sky_for(skies, i, self.when[name], use_mask=False, cache=False)
            sub, _ = subtract_sky(arr, sky, offset_sky=self.opt.offset_sky,
                                  scale_sky=self.opt.scale_sky)
            return detect_array(sub, catalog=False, **det)[0].objmask

        masks = tuple(self.map(one, range(4)))
        self.objmasks[name] = (list(skies), masks)
        for i in range(4):
            self._dilated.pop((name, i), None)
            self._levels.pop((name, i, True), None)
        return masks

    # --- pass 2 ------------------------------------------------------------------------
    def correct(self, name: str, frame: Frame, skies: Sequence[str], *,
                cache: bool = True) -> Frame:
        """Pass 2 for target frame ``name``: sky-subtracted, sources detected (_skyCorrected).

        Skies with a pass-1 mask are stacked with their objects masked; a sky without one
        (a provisional product made before its mask) is stacked as it is.
        """
        det = dict(self.opt.detect)
        t = self.when[name]

        def one(i: int) -> tuple[Array, Any, float]:
            sky = self._sky_for(skies, i, t, use_mask=True, cache=cache)
            obj = frame.arrays[i].with_(objmask=None)
            sub, factor = subtract_sky(obj, sky, offset_sky=self.opt.offset_sky,
                                       scale_sky=self.opt.scale_sky)
            header = sub.header.copy()  # the sky level taken off, for measureBG
            level = sky_level(obj)
            if np.isfinite(level):
                header["SKYLEV"] = (round(level, 3), "Sky level before skyCorrect (e-)")
            sub, cat = detect_array(sub.with_(header=header), **det)
            return sub, cat, factor

        done = list(self.map(one, range(4)))
        out = frame.with_(arrays=tuple(d[0] for d in done))
        out.meta["catalogs"] = [d[1] for d in done]
        out.meta["sky_factors"] = [d[2] for d in done]
        phu = out.phu
        for k, s_name in enumerate(sorted(skies, key=lambda s: (self.when[s], s)), start=1):
            phu[f"SKYIM{k:03d}"] = (s_name, "Sky frame used")
        phu["SKYOFFST"] = (self.opt.offset_sky, "skyCorrect offset_sky")
        phu["SKYSCALE"] = (self.opt.scale_sky, "skyCorrect scale_sky")
        phu["SKYINTRP"] = (self.opt.interpolation, "skyCorrect sky level: time/nearest/none")
        phu["OBJFRAME"] = ("TRUE", "Object frame (separateSky)")
        times = [self.when[s] for s in skies]
        beyond = max(min(times) - t, t - max(times), 0.0)
        if self.opt.interpolation == "time":
            phu["SKYEXTRP"] = (round(beyond, 1), "[s] sky level extrapolated beyond the skies")
        unmasked = [s for s in skies if s not in self.objmasks]
        phu["SKYNOMSK"] = (len(unmasked), "Skies stacked without an object mask")
        out = mark(out, "SEPSKY", "_skySeparated", "UT time stamp for separateSky")
        out = mark(out, "ASSOCSKY", "_skyAssociated", "UT time stamp for associateSky")
        out = mark(out, "SUBSKY", "_skyCorrected", "UT time stamp for skyCorrect")
        # the second pass's detection (OBJCAT), stamped as DRAGONS' detectSources does
        return mark(out, "DETECSRC", "_skyCorrected", "UT time stamp for detectSources")
