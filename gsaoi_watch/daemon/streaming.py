"""Science while it is observed: pass-1 masks and provisional products as the frames land.

After each science frame's per-frame steps, the engine runs :func:`stream_science` on the
frames of its sequence landed so far (one task per sequence at a time).  It does what those
frames settle (see :mod:`gsaoi_watch.reduction.science`):

* adds addDQ's latency to each new frame (every earlier frame has landed) and keeps it in
  the prepared-frame cache;
* makes the pass-1 object mask of every sky frame whose nearest skies are settled, and
  keeps it beside the frame (the final reduction takes it instead of making it again);
* sky-subtracts every on-target frame that has no provisional product yet and that a
  later frame has followed, with the skies landed so far: a *provisional* ``_skyCorrected``
  frame (PHU ``PROVISNL``), with its QA and picture, under ``provisional/`` in the output
  directory.

When the sequence completes, the science job makes the *final* products in the output
directory from the same cache; the provisional files are then removed.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gsaoi_watch.daemon.jobs import measure_frame, picture
from gsaoi_watch.daemon.prepared import (
    CacheStore,
    _load_calibration,
    fetch,
    load_objmasks,
    save_objmask,
)
from gsaoi_watch.data.fitsio import write_frame
from gsaoi_watch.errors import FrameError, ReductionError
from gsaoi_watch.pipeline.recipes import FileSource, quiet_threads
from gsaoi_watch.reduction.recipes import (
    drop_unassociated,
    fill_store,
    merge_parameters,
    observation_times,
    plan_sky,
    resolve_sky_options,
    store_loader,
)
from gsaoi_watch.reduction.science import SkyCorrector, SkyOptions, settled_pass1

__all__ = ["PROVISIONAL_DIR", "provisional_path", "stream_science"]

log = logging.getLogger(__name__)

#: Sub-directory of the output directory for provisional products.
PROVISIONAL_DIR = "provisional"


def provisional_path(output_dir: str | Path, raw_name: str) -> Path:
    """Where the provisional ``_skyCorrected`` frame of raw frame ``raw_name`` is written."""
    stem = raw_name[:-5] if raw_name.endswith(".fits") else raw_name
    return Path(output_dir) / PROVISIONAL_DIR / f"{stem}_skyCorrected.fits"


def stream_science(spec: dict[str, Any]) -> dict[str, Any]:
    """Worker-pool task: what the frames of a science sequence landed so far allow.

    Parameters
    ----------
    spec : dict
        ``paths`` (the sequence's raw frames landed so far), ``cache_dir``, ``output_dir``,
        ``flat`` and ``bpm`` (paths or None), ``params`` ({primitive: {param: value}}),
        ``qa`` and ``pictures`` (booleans), ``workers`` (threads, default 2).

    Returns
    -------
    dict
        ``masks`` (sky frames whose pass-1 mask was made), ``products`` (list of (path,
        'provisional_sky_corrected')), ``qa`` (one dict per provisional product, as
        :func:`gsaoi_watch.daemon.jobs.run_job`), ``seconds``.
    """
    t0 = time.perf_counter()
    out: dict[str, Any] = {"masks": [], "products": [], "qa": [], "seconds": 0.0}
    params = merge_parameters(spec.get("params") or {})
    source = FileSource(spec["paths"])
    infos = []
    for index in range(len(source)):
        try:
            infos.append((index, source.info(index)))
        except FrameError:
            continue  # the final reduction names unusable frames; nothing to say here
    if len(infos) < 2:
        return out
    plan = plan_sky([fi for _, fi in infos], params)
    try:
        drop_unassociated(plan, params, [], quiet=True)
    except ReductionError:
        return out  # no target frame has a sky yet
    offset, scale, _ = resolve_sky_options(plan, params)
    options = SkyOptions.from_params(params, offset, scale)
    when = observation_times([fi for _, fi in infos])
    names = {fi.filename or "": index for index, fi in infos}
    raw = {name: spec["paths"][index] for name, index in names.items()}
    flat_path, bpm_path = spec.get("flat"), spec.get("bpm")
    flat = _load_calibration(flat_path, "flat") if flat_path else None
    bpm = _load_calibration(bpm_path, "bpm") if bpm_path else None
    flat_name = Path(flat_path).name if flat_path else None
    bpm_name = Path(bpm_path).name if bpm_path else None
    store = CacheStore(raw, spec["cache_dir"], flat=flat, flat_name=flat_name,
                       bpm_name=bpm_name)
    order = sorted(set(plan["objects"]) | set(plan["skies"]), key=lambda n: (when[n], n))

    def prepared(index: int) -> Any:
        return fetch(spec["paths"][index], spec["cache_dir"], flat=flat, flat_name=flat_name,
                     bpm_name=bpm_name)

    with quiet_threads(), ThreadPoolExecutor(max_workers=int(spec.get("workers", 2))) as pool:
        fill_store(store, source, [names[n] for n in order], flat=flat, flat_name=flat_name,
                   bpm=bpm, bpm_name=bpm_name, params=params, prepared=prepared,
                   mapper=pool.map)
        objmasks = load_objmasks(spec["cache_dir"], {s: raw[s] for s in plan["skies"]},
                                 calibrations=(flat_name, bpm_name))
        corrector = SkyCorrector(options, when, store_loader(store), objmasks=objmasks,
                                 mapper=pool.map)
        latest = max(when.values())
        min_skies = params["associateSky"]["min_skies"]
        for s, skies in settled_pass1(plan, when, latest, min_skies).items():
            if s in objmasks and list(objmasks[s][0]) == list(skies):
                continue
            masks = corrector.sky_mask(s, skies)
            save_objmask(spec["cache_dir"], raw[s], skies, masks,
                         calibrations=(flat_name, bpm_name))
            out["masks"].append(s)
        for o in plan["objects"]:
            target = provisional_path(spec["output_dir"], o)
            if target.exists() or not any(t > when[o] for t in when.values()):
                continue
            product = corrector.correct(o, store.get(o), plan["obj_skies"][o], cache=False)
            product.phu["PROVISNL"] = (True, "Provisional: skies landed so far; replaced")
            if flat is None:
                product.phu["QUICKLK"] = ("no flat", "Reduced without a flat field (quick-look)")
            if spec.get("qa"):
                product = measure_frame(product, out["qa"])
            path = write_frame(product, target.parent, filename=target.name)
            out["products"].append((str(path), "provisional_sky_corrected"))
            if spec.get("pictures"):
                picture(path)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out
