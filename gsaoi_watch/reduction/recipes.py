"""Recipes: the DRAGONS GSAOI sq recipes as plain, top-to-bottom functions."""

from __future__ import annotations

import logging

import numpy as np

from gsaoi_watch.data.fitsio import load_frame
from gsaoi_watch.errors import ReductionError
from gsaoi_watch.reduction.container import Frame
from gsaoi_watch.reduction.detect import detect_array
from gsaoi_watch.reduction.flat import (
    flat_correct,
    make_lamp_flat,
    normalize_flat,
    threshold_flatfield,
)
from gsaoi_watch.reduction.sky import (
    associate_sky,
    combine_skies,
    level_at,
    mask_sky,
    separate_sky,
    sky_level,
    subtract_sky,
)
from gsaoi_watch.reduction.standardize import (
    add_dq,
    add_var,
    adu_to_electrons,
    mark,
    nonlinearity_correct,
    prepare,
)

__all__ = ["PARAMETERS", "make_processed_flat", "merge_parameters", "plan_sky", "preprocess",
           "screen_inputs",
           "reduce_images", "resolve_sky_options"]

log = logging.getLogger(__name__)


def preprocess(frame: Frame, *, bpm=None) -> Frame:
    """Prepare -> addDQ -> nonlinearityCorrect -> ADUToElectrons -> addVAR."""
    frame = prepare(frame)
    frame = add_dq(frame, bpm=bpm)
    frame = nonlinearity_correct(frame)
    frame = adu_to_electrons(frame)
    return add_var(frame, read_noise=True, poisson_noise=True)


def screen_inputs(paths, *, same_filter=True):
    """Read the headers of the inputs and set aside the frames that cannot be used.

    Returns
    -------
    usable : list of (path, FrameInfo)
    skipped : list of (file name, reason)
        Unreadable files, frames missing what prepare needs, and (``same_filter``) frames
        whose raw filter differs from the first lamp-on frame's (or the first frame's).
    """
    from gsaoi_watch.data.fitsio import read_frame_info
    from gsaoi_watch.errors import FrameError
    from gsaoi_watch.reduction.standardize import check_frame

    usable, skipped = [], []
    for path in paths:
        try:
            fi = read_frame_info(path)
        except FrameError as exc:
            skipped.append((str(path), exc.problem))
            continue
        problem = check_frame(fi)
        if problem:
            skipped.append((fi.filename, problem))
        else:
            usable.append((path, fi))
    if same_filter and usable:
        ref = next((fi for _, fi in usable if "LAMPON" in fi.tags), usable[0][1])
        keep = []
        for path, fi in usable:
            if fi.filter_name() != ref.filter_name():
                skipped.append((fi.filename, f"filter {fi.filter_name()} differs from "
                                             f"{ref.filename}'s {ref.filter_name()}"))
            else:
                keep.append((path, fi))
        usable = keep
    for name, reason in skipped:
        log.warning("frame=%s skipped: %s", name, reason)
    return usable, skipped


def make_processed_flat(paths, *, bpm=None, bpm_name=None, lower=0.01, upper=10.0) -> Frame:
    """DRAGONS ``makeProcessedFlat``: a normalised lamp-on minus lamp-off master flat.

    Streams one array at a time through prepare ... addVAR and makeLampFlat, so only one
    array of every input is in memory at once; then normalizeFlat (one median over all
    arrays) and thresholdFlatfield.  The product is named after the first lamp-on frame
    with the suffix ``_flat`` and carries PROCFLAT.
    """
    usable, skipped = screen_inputs(paths)
    if not usable:
        raise ReductionError("makeProcessedFlat: no usable input frames ("
                             + "; ".join(f"{n}: {r}" for n, r in skipped) + ")")
    paths = [p for p, _ in usable]
    stacked = []
    for i in range(4):
        frames = []
        for path in paths:
            frame = load_frame(path, indices=(i,))
            frame.meta["bpm_name"] = bpm_name
            frames.append(preprocess(frame, bpm=bpm))
        stacked.append(make_lamp_flat(frames))
    first = stacked[0]
    flat = first.with_(arrays=tuple(s.arrays[0] for s in stacked),
                       meta={**first.meta, "indices": (0, 1, 2, 3)})
    flat = normalize_flat(flat)
    flat = threshold_flatfield(flat, lower=lower, upper=upper)
    flat.phu["PROCFLAT"] = (flat.phu.get("LAMPFLAT", ""), "Processed flat")
    label = str(flat.phu.get("DATALAB", "")).strip()
    if label:
        flat.phu["DATALAB"] = f"{label}-SQ-FLAT"
    flat.phu["NCOMBINE"] = len(paths)
    flat.meta["skipped"] = skipped
    return mark(flat, "PROCFLAT", "_flat", "Processed flat")


#: User-settable parameters per primitive, with their defaults (GSAOI sq values).
#: ``None`` as skyCorrect's offset_sky/scale_sky means "decide from the data" (see reduce_images).
PARAMETERS = {
    "separateSky": {"frac_FOV": 0.9, "ref_obj": "", "ref_sky": ""},
    "associateSky": {"distance": 1.0, "time": 900.0, "min_skies": 3, "max_skies": 0},
    "skyCorrect": {"offset_sky": None, "scale_sky": None, "mask_objects": True,
                   "dilation": 6.0, "sky_interpolation": "time"},
    "detectSources": {"detect_thresh": 1.5, "detect_minarea": 20, "back_size": 256},
    "thresholdFlatfield": {"lower": 0.01, "upper": 10.0},
}


def _seconds(info, t0):
    return (info.ut_datetime() - t0).total_seconds()


def plan_sky(infos, params):
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


def resolve_sky_options(plan, params):
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


def reduce_images(paths, *, flat, flat_name=None, bpm=None, bpm_name=None, params=None,
                  on_product=None, workers=2, prepared=None):
    """DRAGONS ``reduce`` for GSAOI images up to the second sky pass and detectSources.

    prepare ... addVAR and flatCorrect on every frame; separateSky and associateSky from the
    headers; skyCorrect of the sky frames without object masks and detectSources on them
    (pass 1, giving each sky an object mask); then each object frame in turn: skyCorrect
    with the masked skies and detectSources (pass 2).  The sky frames stay in memory; the
    object frames are streamed, one at a time, and handed to ``on_product`` as soon as they
    are done; the four arrays of a frame are processed by ``workers`` threads.

    Parameters
    ----------
    paths : list of str
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
        ``prepared(path)`` returns the frame of ``path`` already prepared and flat-corrected
        with ``flat`` (done while the sequence was observed), or None to prepare it here.

    Returns
    -------
    dict
        ``sky_corrected`` and ``flat_corrected`` (Frames, or file names returned by
        ``on_product``), ``plan`` (see :func:`plan_sky`), ``offset_sky``, ``scale_sky``,
        ``sky_reason``, ``skipped`` (file name, reason) for frames that could not be used.
    """
    from concurrent.futures import ThreadPoolExecutor

    params = merge_parameters(params)
    usable, skipped = screen_inputs(paths, same_filter=False)
    infos = [fi for _, fi in usable]
    by_name = {i.filename: i for i in infos}
    path_of = {i.filename: p for p, i in usable}
    if not infos:
        raise ReductionError("reduce: no usable input frames ("
                             + "; ".join(f"{n}: {r}" for n, r in skipped) + ")")
    plan = plan_sky(infos, params)
    for o in [o for o in plan["objects"] if o not in plan["obj_skies"]]:
        skipped.append((o, "no sky frames could be associated (need matching frames more "
                           f"than {params['associateSky']['distance']}\" away)"))
        log.warning("frame=%s skipped: %s", o, skipped[-1][1])
        plan["objects"].remove(o)
    if not plan["objects"]:
        raise ReductionError("; ".join(f"{n}: {r}" for n, r in skipped))
    offset, scale, why = resolve_sky_options(plan, params)
    log.info("skyCorrect: offset_sky=%s scale_sky=%s (%s)", offset, scale, why)
    t0 = min(i.ut_datetime() for i in infos)
    when = {n: _seconds(i, t0) for n, i in by_name.items()}
    sc, det = params["skyCorrect"], params["detectSources"]
    interp = sc["sky_interpolation"] == "time"
    det_kw = dict(detect_thresh=det["detect_thresh"], detect_minarea=det["detect_minarea"],
                  back_size=det["back_size"])
    emit = on_product or (lambda frame: frame)

    def load(name):
        frame = prepared(path_of[name]) if prepared is not None else None
        if frame is not None:
            if flat is None:
                frame.phu["QUICKLK"] = ("no flat", "Reduced without a flat field (quick-look)")
            return frame
        frame = load_frame(path_of[name])
        frame.meta["bpm_name"] = bpm_name
        frame = preprocess(frame, bpm=bpm)
        if flat is None:  # quick-look: no flat yet
            frame.phu["QUICKLK"] = ("no flat", "Reduced without a flat field (quick-look)")
            return frame
        return flat_correct(frame, flat, flat_name=flat_name)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        skies = dict(zip(plan["skies"], pool.map(load, plan["skies"])))

        # pass 1: sky-subtract each sky frame with the other skies, detect its objects
        # (each sky's level is measured once, not again in every other sky's model)
        keys = [(n, i) for n in plan["skies"] for i in range(4)]
        unmasked = dict(zip(keys, pool.map(
            lambda k: mask_sky(skies[k[0]].arrays[k[1]], mask_objects=False), keys)))

        def pass1(name, i):
            sl = plan["sky_skies"].get(name)
            arr = skies[name].arrays[i]
            if not sl:
                return arr
            sky, levels = combine_skies([unmasked[(k, i)] for k in sl])
            if interp:  # as sky_model: the level interpolated in time, else the nearest's
                shift = level_at(levels, [when[k] for k in sl], when[name]) - levels[0]
                sky = sky.with_(sci=(sky.sci + np.float32(shift)).astype(np.float32))
            sub, _ = subtract_sky(arr, sky, offset_sky=offset, scale_sky=scale)
            return arr.with_(objmask=detect_array(sub, catalog=False, **det_kw)[0].objmask)

        for name in plan["skies"]:
            arrays = tuple(pool.map(lambda i, n=name: pass1(n, i), range(4)))
            skies[name] = skies[name].with_(arrays=arrays)
        unmasked.clear()  # the frames are kept in skies; free the copies
        masked = dict(zip(keys, pool.map(
            lambda k: mask_sky(skies[k[0]].arrays[k[1]], mask_objects=sc["mask_objects"],
                               dilation=sc["dilation"]), keys)))

        # pass 2: object frames, streamed
        # one sky stack per *set* of skies: frames with the same skies in another order of
        # nearness share it, since the median does not depend on the order and the level is
        # set afterwards (the nearest sky's, or interpolated in time)
        def sky_set(o):
            return tuple(sorted(plan["obj_skies"][o]))

        remaining = {}
        for o in plan["objects"]:
            remaining[sky_set(o)] = remaining.get(sky_set(o), 0) + 1
        stacks = {}

        def pass2(o, frame, i):
            key = sky_set(o)
            if (key, i) not in stacks:
                stacks[(key, i)] = combine_skies([masked[(k, i)] for k in key])
            stacked, levels = stacks[(key, i)]  # at the level of the set's first sky
            if interp:
                target = level_at(levels, [when[k] for k in key], when[o])
            else:  # DRAGONS: the level of the nearest sky
                target = levels[key.index(plan["obj_skies"][o][0])]
            sky = stacked
            if target != levels[0]:
                sky = stacked.with_(sci=(stacked.sci + np.float32(target - levels[0])).astype(
                    np.float32))
            obj = frame.arrays[i].with_(objmask=None)
            sub, factor = subtract_sky(obj, sky, offset_sky=offset, scale_sky=scale)
            header = sub.header.copy()  # the sky level taken off, for measureBG
            level = sky_level(obj)
            if np.isfinite(level):
                header["SKYLEV"] = (round(level, 3), "Sky level before skyCorrect (e-)")
            sub, cat = detect_array(sub.with_(header=header), **det_kw)
            return sub, cat, factor

        sky_corrected = []
        for o in plan["objects"]:
            frame = skies[o] if o in skies else load(o)
            if not any((a.dq == 0).any() for a in frame.arrays):
                skipped.append((o, "every pixel is flagged bad"))
                log.warning("frame=%s skipped: every pixel is flagged bad", o)
                continue
            done = list(pool.map(lambda i, o=o, f=frame: pass2(o, f, i), range(4)))
            key = sky_set(o)
            remaining[key] -= 1
            if not remaining[key]:
                for i in range(4):
                    stacks.pop((key, i), None)
            out = frame.with_(arrays=tuple(d[0] for d in done))
            out.meta["catalogs"] = [d[1] for d in done]
            out.meta["sky_factors"] = [d[2] for d in done]
            for k, s_name in enumerate(plan["obj_skies"][o], start=1):
                out.phu[f"SKYIM{k:03d}"] = (s_name, "Sky frame used")
            out.phu["SKYOFFST"] = (offset, "skyCorrect offset_sky")
            out.phu["SKYSCALE"] = (scale, "skyCorrect scale_sky")
            out.phu["SKYINTRP"] = (sc["sky_interpolation"], "Sky level interpolated in time")
            out.phu["OBJFRAME"] = ("TRUE", "Object frame (separateSky)")
            out = mark(out, "SEPSKY", "_skySeparated", "UT time stamp for separateSky")
            out = mark(out, "ASSOCSKY", "_skyAssociated", "UT time stamp for associateSky")
            out = mark(out, "SUBSKY", "_skyCorrected", "UT time stamp for skyCorrect")
            sky_corrected.append(emit(out))
    flat_corrected = []
    for name in plan["skies"]:
        if name in plan["objects"]:
            continue
        out = skies.pop(name)
        out.phu["SKYFRAME"] = ("TRUE", "Sky frame (separateSky)")
        flat_corrected.append(emit(out))
    return {"sky_corrected": sky_corrected, "flat_corrected": flat_corrected, "plan": plan,
            "offset_sky": offset, "scale_sky": scale, "sky_reason": why, "skipped": skipped}


def _select(frame, index):
    """The single-array view of a 4-array frame (for per-array streaming)."""
    return frame.with_(arrays=(frame.arrays[index],), meta={**frame.meta, "indices": (index,)})


def merge_parameters(user=None):
    """Defaults of :data:`PARAMETERS` overridden by ``user`` {primitive: {param: value}}."""
    merged = {prim: dict(values) for prim, values in PARAMETERS.items()}
    for prim, values in (user or {}).items():
        merged.setdefault(prim, {}).update(values)
    return merged
