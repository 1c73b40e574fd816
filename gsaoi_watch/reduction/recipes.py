"""Recipes: the DRAGONS GSAOI sq recipes as plain, top-to-bottom functions.

A recipe takes its inputs from a :class:`~gsaoi_watch.reduction.source.FrameSource` (headers
first, pixels when needed) and hands its products to the caller; it opens no file.  The
recipes on files are :mod:`gsaoi_watch.pipeline.recipes`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gsaoi_watch.data.descriptors import FrameInfo
from gsaoi_watch.errors import FrameError, ReductionError
from gsaoi_watch.reduction.container import Array, Frame
from gsaoi_watch.reduction.flat import (
    flat_correct,
    make_lamp_flat,
    normalize_flat,
    threshold_flatfield,
)
from gsaoi_watch.reduction.latency import add_latency_to_dq, apply_latency, latency_mask
from gsaoi_watch.reduction.science import SkyCorrector, SkyOptions, pass1_skies
from gsaoi_watch.reduction.sky import associate_sky, separate_sky
from gsaoi_watch.reduction.source import FrameSource, FrameStore, Mapper, MemoryStore
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

__all__ = ["PARAMETERS", "drop_unassociated", "fill_store", "make_processed_flat",
           "merge_parameters",
           "observation_times", "plan_sky", "preprocess", "quicklook_marker", "reduce_images",
           "resolve_sky_options", "screen_inputs", "store_loader", "with_objmasks"]

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
        frames = apply_latency(frames)  # the frames without latency go (their DQ planes)
        stacked.append(make_lamp_flat(frames))
        del frames
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
    "addDQ": {"latency": True, "time": 900.0, "non_linear": True},
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


def drop_unassociated(plan: dict, params: dict, skipped: Skipped, *,
                      quiet: bool = False) -> None:
    """Take object frames without any sky out of the plan (into ``skipped``).

    Raises ReductionError when no object frame is left; ``quiet`` logs nothing.
    """
    for o in [o for o in plan["objects"] if o not in plan["obj_skies"]]:
        skipped.append((o, "no sky frames could be associated (need matching frames more "
                           f"than {params['associateSky']['distance']}\" away)"))
        if not quiet:
            log.warning("frame=%s skipped: %s", o, skipped[-1][1])
        plan["objects"].remove(o)
    if not plan["objects"]:
        raise ReductionError(_skip_text(skipped))


def reduce_images(source: FrameSource, *, flat: Frame | None, flat_name: str | None = None,
                  bpm: Any = None, bpm_name: str | None = None, params: dict | None = None,
                  on_product: Callable[[Frame], Any] | None = None,
                  prepared: Callable[[int], Frame | None] | None = None,
                  mapper: Mapper | None = None, store: FrameStore | None = None,
                  objmasks: dict | None = None) -> dict:
    """DRAGONS ``reduce`` for GSAOI images up to the second sky pass and detectSources.

    prepare ... addVAR (with addDQ's latency: pixels saturated or non-linear in an earlier
    frame within 900 s are flagged) and flatCorrect on every frame, in time order, into
    ``store``; separateSky and associateSky from the headers; pass 1 (each sky frame
    corrected with its nearest skies, its objects detected: see
    :mod:`gsaoi_watch.reduction.science`); then each object frame in turn: skyCorrect with
    the masked skies, the sky level following the night, and detectSources (pass 2).  The
    frames live in ``store`` (memory, or files at the edge); only the arrays a step needs
    are loaded.  Products are handed to ``on_product`` as soon as they are done.

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
        Runs the independent pieces of work (frames to prepare, the four arrays of a
        frame): a function with the signature of the builtin ``map`` (the default), such as
        a thread pool's ``map``.
    store : FrameStore, optional
        Where the prepared frames are kept (default: in memory).  A store that already
        holds a frame (same name, same raw stamp) is not filled again.
    objmasks : dict, optional
        Pass-1 object masks already made (name -> (sky list, four masks)), used where the
        sky list is the one this reduction would use; the dict receives the ones made here.

    Returns
    -------
    dict
        ``sky_corrected`` and ``flat_corrected`` (Frames, or file names returned by
        ``on_product``), ``plan`` (see :func:`plan_sky`), ``offset_sky``, ``scale_sky``,
        ``sky_reason``, ``skipped`` (file name, reason) for frames that could not be used,
        ``masks_made`` (names of the sky frames whose pass-1 mask was made here).
    """
    params = merge_parameters(params)
    usable, skipped = screen_inputs(source, same_filter=False)
    infos = [fi for _, fi in usable]
    if not infos:
        raise ReductionError(f"reduce: no usable input frames ({_skip_text(skipped)})")
    plan = plan_sky(infos, params)
    drop_unassociated(plan, params, skipped)
    offset, scale, why = resolve_sky_options(plan, params)
    options = SkyOptions.from_params(params, offset, scale)
    log.info("skyCorrect: offset_sky=%s scale_sky=%s (%s)", offset, scale, why)
    when = observation_times(infos)
    mapper = mapper or map
    store = store if store is not None else MemoryStore()
    index_of = {i.filename or "": k for k, i in usable}
    names = sorted(set(plan["objects"]) | set(plan["skies"]), key=lambda n: (when[n], n))
    fill_store(store, source, [index_of[n] for n in names], flat=flat, flat_name=flat_name,
               bpm=bpm, bpm_name=bpm_name, params=params, prepared=prepared, mapper=mapper)
    emit = quicklook_marker(flat, on_product or (lambda frame: frame))
    objmasks = objmasks if objmasks is not None else {}
    corrector = SkyCorrector(options, when, store_loader(store), objmasks=objmasks,
                             mapper=mapper)
    made = []
    for s, sl in pass1_skies(plan, params["associateSky"]["min_skies"]).items():
        known = objmasks.get(s)
        if known is None or list(known[0]) != list(sl):
            corrector.sky_mask(s, sl)
            made.append(s)
    uses = Counter(tuple(sorted(plan["obj_skies"][o])) for o in plan["objects"])
    sky_corrected = []
    for o in plan["objects"]:
        frame = store.get(o)
        key = tuple(sorted(plan["obj_skies"][o]))
        if not any((a.dq == 0).any() for a in frame.arrays):
            skipped.append((o, "every pixel is flagged bad"))
            log.warning("frame=%s skipped: every pixel is flagged bad", o)
        else:
            sky_corrected.append(emit(corrector.correct(o, frame, plan["obj_skies"][o])))
        uses[key] -= 1
        if not uses[key]:
            corrector.release(key)
    flat_corrected = []
    for name in plan["skies"]:
        if name in plan["objects"]:
            continue
        out = with_objmasks(store.get(name), objmasks.get(name))
        out.phu["SKYFRAME"] = ("TRUE", "Sky frame (separateSky)")
        flat_corrected.append(emit(out))
    return {"sky_corrected": sky_corrected, "flat_corrected": flat_corrected, "plan": plan,
            "offset_sky": offset, "scale_sky": scale, "sky_reason": why, "skipped": skipped,
            "masks_made": made}


def quicklook_marker(flat: Frame | None, emit: Callable[[Frame], Any]
                     ) -> Callable[[Frame], Any]:
    """``emit``, marking each product QUICKLK first when there is no flat."""
    if flat is not None:
        return emit

    def marked(frame: Frame) -> Any:
        frame.phu["QUICKLK"] = ("no flat", "Reduced without a flat field (quick-look)")
        return emit(frame)
    return marked


def observation_times(infos: Sequence[FrameInfo]) -> dict[str, float]:
    """Observation time of every frame, seconds from the first, by file name."""
    stamps = {i.filename or "": required(i.ut_datetime(), i, "DATE-OBS/UT") for i in infos}
    t0 = min(stamps.values())
    return {name: (t - t0).total_seconds() for name, t in stamps.items()}


def store_loader(store: FrameStore) -> Callable[[str, int], Array]:
    """``load(name, i)``: array ``i`` of a frame in ``store``."""
    def load(name: str, i: int) -> Array:
        return store.get(name, (i,)).arrays[0]
    return load


def with_objmasks(frame: Frame, known: tuple[list[str], tuple[Any, ...]] | None) -> Frame:
    """``frame`` with its pass-1 object masks (when it has them) on its arrays."""
    if known is None:
        return frame
    return frame.with_(arrays=tuple(a if m is None else a.with_(objmask=np.asarray(m))
                                    for a, m in zip(frame.arrays, known[1])))


def fill_store(store: FrameStore, source: FrameSource, indices: Sequence[int], *,
               flat: Frame | None, flat_name: str | None, bpm: Any, bpm_name: str | None,
               params: dict, prepared: Callable[[int], Frame | None] | None = None,
               mapper: Mapper = map, chunk: int = 2) -> None:
    """Prepare the inputs ``indices`` (in time order) into ``store``, with addDQ's latency.

    Frames the store does not hold yet are prepared ``chunk`` at a time (through
    ``mapper``), so at most that many are in memory besides the store.  Latency: every pixel
    that was saturated or non-linear in an earlier input within ``addDQ:time`` seconds is
    flagged (DQ bit 8), as DRAGONS' addLatencyToDQ does; the record of each frame comes
    from the store when it keeps them (``record``/``keep_record``), else from its DQ.
    """
    lat = params["addDQ"]
    non_linear = bool(lat["non_linear"])
    names = [source.info(i).filename or "" for i in indices]
    held = [n in store for n in names]
    keep = getattr(store, "keep_record", None)
    recall = getattr(store, "record", None)

    def load(index: int) -> Frame:
        frame = prepared(index) if prepared is not None else None
        if frame is None:
            frame = source.load(index)
            frame.meta["bpm_name"] = bpm_name
            frame = preprocess(frame, bpm=bpm)
            if flat is not None:
                frame = flat_correct(frame, flat, flat_name=flat_name)
        return frame

    earlier: list[Any] = []
    k = 0
    while k < len(names):
        if held[k]:
            if not all(held[k + 1:]):  # a frame still to prepare may need its record
                record = recall(names[k]) if recall is not None else None
                if record is None:
                    record = latency_mask(store.get(names[k]))
                    if keep is not None:
                        keep(names[k], record)
                earlier.append(record)
            k += 1
            continue
        todo: list[int] = []
        while k < len(names) and not held[k] and len(todo) < max(1, chunk):
            todo.append(k)
            k += 1
        for pos, frame in zip(todo, mapper(load, [indices[p] for p in todo])):
            record = latency_mask(frame)
            if lat["latency"]:
                frame = add_latency_to_dq(frame, earlier, time=float(lat["time"]),
                                          non_linear=non_linear)
            earlier.append(record)
            if keep is not None:
                keep(names[pos], record)
            store.put(names[pos], frame)


def merge_parameters(user: dict | None = None) -> dict:
    """Defaults of :data:`PARAMETERS` overridden by ``user`` {primitive: {param: value}}."""
    merged = {prim: dict(values) for prim, values in PARAMETERS.items()}
    for prim, values in (user or {}).items():
        merged.setdefault(prim, {}).update(values)
    return merged
