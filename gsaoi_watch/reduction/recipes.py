"""Recipes: the DRAGONS GSAOI sq recipes as plain, top-to-bottom functions.

A recipe takes its inputs from a :class:`~gsaoi_watch.reduction.source.FrameSource` (headers
first, pixels when needed) and hands its products to the caller; it opens no file.  The
recipes on files are :mod:`gsaoi_watch.pipeline.recipes`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gsaoi_watch.data.descriptors import FrameInfo
from gsaoi_watch.errors import FrameError, ReductionError
from gsaoi_watch.reduction.container import Array, Frame
from gsaoi_watch.reduction.detect import detect_array
from gsaoi_watch.reduction.flat import (
    flat_correct,
    make_lamp_flat,
    normalize_flat,
    threshold_flatfield,
)
from gsaoi_watch.reduction.latency import apply_latency
from gsaoi_watch.reduction.sky import (
    associate_sky,
    combine_skies,
    level_at,
    mask_sky,
    separate_sky,
    sky_level,
    subtract_sky,
)
from gsaoi_watch.reduction.source import FrameSource, Mapper
from gsaoi_watch.reduction.standardize import (
    add_dq,
    add_var,
    adu_to_electrons,
    check_frame,
    mark,
    nonlinearity_correct,
    prepare,
    required,
)

__all__ = ["PARAMETERS", "make_processed_flat", "merge_parameters", "plan_sky", "preprocess",
           "reduce_images", "resolve_sky_options", "screen_inputs"]

log = logging.getLogger(__name__)

#: (file name, reason) of an input that was not used.
Skipped = list[tuple[str, str]]


def _skip_text(skipped: Skipped) -> str:
    return "; ".join(f"{n}: {r}" for n, r in skipped)


def preprocess(frame: Frame, *, bpm: Any = None) -> Frame:
    """Prepare -> addDQ -> nonlinearityCorrect -> ADUToElectrons -> addVAR."""
    frame = prepare(frame)
    frame = add_dq(frame, bpm=bpm)
    frame = nonlinearity_correct(frame)
    frame = adu_to_electrons(frame)
    return add_var(frame, read_noise=True, poisson_noise=True)


def screen_inputs(source: FrameSource, *, same_filter: bool = True
                  ) -> tuple[list[tuple[int, FrameInfo]], Skipped]:
    """Read the headers of the inputs and set aside the frames that cannot be used.

    Returns
    -------
    usable : list of (index in the source, FrameInfo)
    skipped : list of (file name, reason)
        Unreadable files, frames missing what prepare needs, and (``same_filter``) frames
        whose raw filter differs from the first lamp-on frame's (or the first frame's).
    """
    usable, skipped = [], []
    for index in range(len(source)):
        try:
            fi = source.info(index)
        except FrameError as exc:
            skipped.append((exc.path, exc.problem))
            continue
        problem = check_frame(fi)
        if problem:
            skipped.append((str(fi.filename), problem))
        else:
            usable.append((index, fi))
    if same_filter and usable:
        ref = next((fi for _, fi in usable if "LAMPON" in fi.tags), usable[0][1])
        keep = []
        for index, fi in usable:
            if fi.filter_name() != ref.filter_name():
                skipped.append((str(fi.filename), f"filter {fi.filter_name()} differs from "
                                             f"{ref.filename}'s {ref.filter_name()}"))
            else:
                keep.append((index, fi))
        usable = keep
    for name, reason in skipped:
        log.warning("frame=%s skipped: %s", name, reason)
    return usable, skipped


def make_processed_flat(source: FrameSource, *, bpm: Any = None, bpm_name: str | None = None,
                        lower: float = 0.01, upper: float = 10.0) -> Frame:
    """DRAGONS ``makeProcessedFlat``: a normalised lamp-on minus lamp-off master flat.

    Streams one array at a time through prepare ... addVAR (with addDQ's latency: DQ bit 8
    where an input that started less than 900 s earlier was saturated or non-linear) and
    makeLampFlat, so only one array of every input is in memory at once; then
    normalizeFlat (one median over all arrays) and thresholdFlatfield.  The product is
    named after the first lamp-on frame with the suffix ``_flat`` and carries PROCFLAT.
    """
    usable, skipped = screen_inputs(source)
    if not usable:
        raise ReductionError(f"makeProcessedFlat: no usable input frames ({_skip_text(skipped)})")
    stacked = []
    for i in range(4):
        frames = []
        for index, _ in usable:
            frame = source.load(index, (i,))
            frame.meta["bpm_name"] = bpm_name
            frames.append(preprocess(frame, bpm=bpm))
        stacked.append(make_lamp_flat(apply_latency(frames)))
    first = stacked[0]
    flat = first.with_(arrays=tuple(s.arrays[0] for s in stacked),
                       meta={**first.meta, "indices": (0, 1, 2, 3)})
    flat = normalize_flat(flat)
    flat = threshold_flatfield(flat, lower=lower, upper=upper)
    flat.phu["PROCFLAT"] = (flat.phu.get("LAMPFLAT", ""), "Processed flat")
    label = str(flat.phu.get("DATALAB", "")).strip()
    if label:
        flat.phu["DATALAB"] = f"{label}-SQ-FLAT"
    flat.phu["NCOMBINE"] = len(usable)
    flat.meta["skipped"] = skipped
    return mark(flat, "PROCFLAT", "_flat", "Processed flat")


#: User-settable parameters per primitive, with their defaults (GSAOI sq values).
#: ``None`` as skyCorrect's offset_sky/scale_sky means "decide from the data" (see reduce_images).
PARAMETERS: dict[str, dict[str, Any]] = {
    "separateSky": {"frac_FOV": 0.9, "ref_obj": "", "ref_sky": ""},
    "associateSky": {"distance": 1.0, "time": 900.0, "min_skies": 3, "max_skies": 0},
    "skyCorrect": {"offset_sky": None, "scale_sky": None, "mask_objects": True,
                   "dilation": 6.0, "sky_interpolation": "time"},
    "detectSources": {"detect_thresh": 1.5, "detect_minarea": 20, "back_size": 256},
    "thresholdFlatfield": {"lower": 0.01, "upper": 10.0},
}


def plan_sky(infos: Sequence[FrameInfo], params: dict) -> dict:
    """Run separateSky and associateSky on a list of FrameInfo (headers only).

    Returns
    -------
    dict
        ``objects`` and ``skies`` (file names), ``obj_skies`` (object -> skies, pass 2),
        ``sky_skies`` (sky -> other skies, pass 1), ``reasons``.
    """
    sep = params["separateSky"]
    ref_obj = [r for r in str(sep["ref_obj"]).split(",") if r]
    ref_sky = [r for r in str(sep["ref_sky"]).split(",") if r]
    objects, skies, reasons = separate_sky(infos, frac_fov=sep["frac_FOV"], ref_obj=ref_obj,
                                           ref_sky=ref_sky)
    a = params["associateSky"]
    kw = dict(distance=a["distance"], time=a["time"], min_skies=a["min_skies"],
              max_skies=a["max_skies"] or None)
    return {
        "objects": [o.filename for o in objects],
        "skies": [s.filename for s in skies],
        "obj_skies": associate_sky(objects, skies, **kw),
        "sky_skies": associate_sky(skies, skies, **kw),
        "reasons": reasons,
    }


def resolve_sky_options(plan: dict, params: dict) -> tuple[bool, bool, str]:
    """Choose offset_sky / scale_sky: explicit user values win; else a smart default.

    When the object and sky frames are different frames (an offset-to-sky sequence) the
    target may fill the field, so the background of the target frames is not sky: both
    offset_sky and scale_sky are turned off (the tutorial's advice).  Otherwise (dithers on
    target serve as skies) the GSAOI default applies: offset_sky on, scale_sky off.

    Returns
    -------
    offset_sky, scale_sky : bool
    reason : str
    """
    sc = params["skyCorrect"]
    dedicated = bool(plan["skies"]) and not set(plan["objects"]) & set(plan["skies"])
    if sc["offset_sky"] is None and sc["scale_sky"] is None and dedicated:
        return False, False, ("dedicated offset-sky frames: offset_sky and scale_sky off "
                              "(the target may fill the field)")
    offset = True if sc["offset_sky"] is None else bool(sc["offset_sky"])
    scale = False if sc["scale_sky"] is None else bool(sc["scale_sky"])
    if offset and scale:
        return False, True, "both offset_sky and scale_sky requested: scale_sky wins"
    return offset, scale, "user parameters" if sc["offset_sky"] is not None or \
        sc["scale_sky"] is not None else "GSAOI default (offset_sky on)"


class _SkyPasses:
    """The two sky passes of :func:`reduce_images` over one observation's frames.

    Pass 1 (:meth:`sky_pass`): each sky frame is sky-subtracted with the other skies and
    its objects are detected (an object mask per array).  Pass 2 (:meth:`object_pass`):
    each object frame is sky-subtracted with its masked skies and its sources detected.
    """

    def __init__(self, plan: dict, params: dict, offset: bool, scale: bool,
                 when: dict[str, float], mapper: Mapper):
        self.plan, self.offset, self.scale, self.when, self.map = plan, offset, scale, when, mapper
        self.sc, det = params["skyCorrect"], params["detectSources"]
        self.interp = self.sc["sky_interpolation"] == "time"
        self.det_kw = dict(detect_thresh=det["detect_thresh"],
                           detect_minarea=det["detect_minarea"], back_size=det["back_size"])
        self.masked: dict = {}
        self.stacks: dict = {}
        self.remaining: dict = {}

    def _subtract(self, arr: Array, sky: Array) -> tuple[Array, float]:
        return subtract_sky(arr, sky, offset_sky=self.offset, scale_sky=self.scale)

    def sky_pass(self, load: Callable[[str], Frame]) -> dict[str, Frame]:
        """Load the sky frames and give each an object mask (pass 1); return them by name."""
        plan, when = self.plan, self.when
        skies = dict(zip(plan["skies"], self.map(load, plan["skies"])))
        # each sky's level is measured once, not again in every other sky's model
        keys = [(n, i) for n in plan["skies"] for i in range(4)]
        unmasked = dict(zip(keys, self.map(
            lambda k: mask_sky(skies[k[0]].arrays[k[1]], mask_objects=False), keys)))

        def pass1(name: str, i: int) -> Array:
            sl = plan["sky_skies"].get(name)
            arr = skies[name].arrays[i]
            if not sl:
                return arr
            sky, levels = combine_skies([unmasked[(k, i)] for k in sl])
            if self.interp:  # the level interpolated in time, else the nearest sky's
                shift = level_at(levels, [when[k] for k in sl], when[name]) - levels[0]
                sky = sky.with_(sci=(sky.sci + np.float32(shift)).astype(np.float32))
            sub, _ = self._subtract(arr, sky)
            return arr.with_(objmask=detect_array(sub, catalog=False, **self.det_kw)[0].objmask)

        for name in plan["skies"]:
            arrays = tuple(self.map(functools.partial(pass1, name), range(4)))
            skies[name] = skies[name].with_(arrays=arrays)
        unmasked.clear()  # the frames are kept in skies; free the copies
        self.masked = dict(zip(keys, self.map(
            lambda k: mask_sky(skies[k[0]].arrays[k[1]], mask_objects=self.sc["mask_objects"],
                               dilation=self.sc["dilation"]), keys)))
        # one sky stack per *set* of skies: frames with the same skies in another order of
        # nearness share it, since the median does not depend on the order and the level is
        # set afterwards (the nearest sky's, or interpolated in time)
        for o in plan["objects"]:
            self.remaining[self._sky_set(o)] = self.remaining.get(self._sky_set(o), 0) + 1
        return skies

    def _sky_set(self, o: str) -> tuple[str, ...]:
        return tuple(sorted(self.plan["obj_skies"][o]))

    def _object_array(self, o: str, frame: Frame, i: int) -> tuple[Array, Any, float]:
        key = self._sky_set(o)
        if (key, i) not in self.stacks:
            self.stacks[(key, i)] = combine_skies([self.masked[(k, i)] for k in key])
        stacked, levels = self.stacks[(key, i)]  # at the level of the set's first sky
        if self.interp:
            target = level_at(levels, [self.when[k] for k in key], self.when[o])
        else:  # DRAGONS: the level of the nearest sky
            target = levels[key.index(self.plan["obj_skies"][o][0])]
        sky = stacked
        if target != levels[0]:
            sky = stacked.with_(sci=(stacked.sci + np.float32(target - levels[0])).astype(
                np.float32))
        obj = frame.arrays[i].with_(objmask=None)
        sub, factor = self._subtract(obj, sky)
        header = sub.header.copy()  # the sky level taken off, for measureBG
        level = sky_level(obj)
        if np.isfinite(level):
            header["SKYLEV"] = (round(level, 3), "Sky level before skyCorrect (e-)")
        sub, cat = detect_array(sub.with_(header=header), **self.det_kw)
        return sub, cat, factor

    def object_pass(self, o: str, frame: Frame) -> Frame:
        """Sky-subtract object frame ``o`` and detect its sources (pass 2): _skyCorrected."""
        done = list(self.map(lambda i: self._object_array(o, frame, i), range(4)))
        key = self._sky_set(o)
        self.remaining[key] -= 1
        if not self.remaining[key]:
            for i in range(4):
                self.stacks.pop((key, i), None)
        out = frame.with_(arrays=tuple(d[0] for d in done))
        out.meta["catalogs"] = [d[1] for d in done]
        out.meta["sky_factors"] = [d[2] for d in done]
        for k, s_name in enumerate(self.plan["obj_skies"][o], start=1):
            out.phu[f"SKYIM{k:03d}"] = (s_name, "Sky frame used")
        out.phu["SKYOFFST"] = (self.offset, "skyCorrect offset_sky")
        out.phu["SKYSCALE"] = (self.scale, "skyCorrect scale_sky")
        out.phu["SKYINTRP"] = (self.sc["sky_interpolation"], "Sky level interpolated in time")
        out.phu["OBJFRAME"] = ("TRUE", "Object frame (separateSky)")
        out = mark(out, "SEPSKY", "_skySeparated", "UT time stamp for separateSky")
        out = mark(out, "ASSOCSKY", "_skyAssociated", "UT time stamp for associateSky")
        return mark(out, "SUBSKY", "_skyCorrected", "UT time stamp for skyCorrect")


def _drop_unassociated(plan: dict, params: dict, skipped: Skipped) -> None:
    """Take object frames without any sky out of the plan (into ``skipped``)."""
    for o in [o for o in plan["objects"] if o not in plan["obj_skies"]]:
        skipped.append((o, "no sky frames could be associated (need matching frames more "
                           f"than {params['associateSky']['distance']}\" away)"))
        log.warning("frame=%s skipped: %s", o, skipped[-1][1])
        plan["objects"].remove(o)
    if not plan["objects"]:
        raise ReductionError(_skip_text(skipped))


def reduce_images(source: FrameSource, *, flat: Frame | None, flat_name: str | None = None,
                  bpm: Any = None, bpm_name: str | None = None, params: dict | None = None,
                  on_product: Callable[[Frame], Any] | None = None,
                  prepared: Callable[[int], Frame | None] | None = None,
                  mapper: Mapper | None = None) -> dict:
    """DRAGONS ``reduce`` for GSAOI images up to the second sky pass and detectSources.

    prepare ... addVAR and flatCorrect on every frame; separateSky and associateSky from the
    headers; skyCorrect of the sky frames without object masks and detectSources on them
    (pass 1, giving each sky an object mask); then each object frame in turn: skyCorrect
    with the masked skies and detectSources (pass 2).  The sky frames stay in memory; the
    object frames are streamed, one at a time, and handed to ``on_product`` as soon as they
    are done.

    Parameters
    ----------
    source : FrameSource
        Raw frames of one observation (objects and skies).
    flat : Frame or None
        The processed flat (full frame; cropped for ROI frames).  None reduces without a
        flat for quick-look; the products carry QUICKLK.
    params : dict, optional
        {primitive: {parameter: value}} overriding :data:`PARAMETERS`.
    on_product : callable, optional
        Called with each finished Frame (object frames, suffix _skyCorrected, with a
        catalogue per array in ``meta['catalogs']``; pure sky frames, suffix _flatCorrected).
        Without it, the frames are collected in the result.
    prepared : callable, optional
        ``prepared(index)`` returns input ``index`` already prepared and flat-corrected
        with ``flat`` (done while the sequence was observed), or None to prepare it here.
    mapper : callable, optional
        Runs the independent pieces of work (frames to load, the four arrays of a frame):
        a function with the signature of the builtin ``map`` (the default), such as a
        thread pool's ``map``.

    Returns
    -------
    dict
        ``sky_corrected`` and ``flat_corrected`` (Frames, or file names returned by
        ``on_product``), ``plan`` (see :func:`plan_sky`), ``offset_sky``, ``scale_sky``,
        ``sky_reason``, ``skipped`` (file name, reason) for frames that could not be used.
    """
    params = merge_parameters(params)
    usable, skipped = screen_inputs(source, same_filter=False)
    infos = [fi for _, fi in usable]
    index_of = {i.filename or "": k for k, i in usable}
    if not infos:
        raise ReductionError(f"reduce: no usable input frames ({_skip_text(skipped)})")
    plan = plan_sky(infos, params)
    _drop_unassociated(plan, params, skipped)
    offset, scale, why = resolve_sky_options(plan, params)
    log.info("skyCorrect: offset_sky=%s scale_sky=%s (%s)", offset, scale, why)
    stamps = {i.filename or "": required(i.ut_datetime(), i, "DATE-OBS/UT") for i in infos}
    t0 = min(stamps.values())
    when = {name: (t - t0).total_seconds() for name, t in stamps.items()}
    emit = on_product or (lambda frame: frame)

    def load(name: str) -> Frame:
        frame = prepared(index_of[name]) if prepared is not None else None
        if frame is None:
            frame = source.load(index_of[name])
            frame.meta["bpm_name"] = bpm_name
            frame = preprocess(frame, bpm=bpm)
            if flat is not None:
                return flat_correct(frame, flat, flat_name=flat_name)
        if flat is None:  # quick-look: no flat yet
            frame.phu["QUICKLK"] = ("no flat", "Reduced without a flat field (quick-look)")
        return frame

    passes = _SkyPasses(plan, params, offset, scale, when, mapper or map)
    skies = passes.sky_pass(load)
    sky_corrected = []
    for o in plan["objects"]:
        frame = skies[o] if o in skies else load(o)
        if not any((a.dq == 0).any() for a in frame.arrays):
            skipped.append((o, "every pixel is flagged bad"))
            log.warning("frame=%s skipped: every pixel is flagged bad", o)
            continue
        sky_corrected.append(emit(passes.object_pass(o, frame)))
    flat_corrected = []
    for name in plan["skies"]:
        if name in plan["objects"]:
            continue
        out = skies.pop(name)
        out.phu["SKYFRAME"] = ("TRUE", "Sky frame (separateSky)")
        flat_corrected.append(emit(out))
    return {"sky_corrected": sky_corrected, "flat_corrected": flat_corrected, "plan": plan,
            "offset_sky": offset, "scale_sky": scale, "sky_reason": why, "skipped": skipped}


def merge_parameters(user: dict | None = None) -> dict:
    """Defaults of :data:`PARAMETERS` overridden by ``user`` {primitive: {param: value}}."""
    merged = {prim: dict(values) for prim, values in PARAMETERS.items()}
    for prim, values in (user or {}).items():
        merged.setdefault(prim, {}).update(values)
    return merged
