"""Job functions run in worker processes: paths and plain parameters in, product paths out.

They are picklable module-level functions, so a ``concurrent.futures`` executor (the
default process pool, or a ``dask.distributed`` Client) can run them.  They never touch the
database: the engine thread registers what they return.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

from gsaoi_watch.daemon.prepared import CacheStore, fetch, load_objmasks
from gsaoi_watch.data.fitsio import copy_product, load_bpm, load_frame, write_frame
from gsaoi_watch.data.names import safe_name
from gsaoi_watch.instrument.standards import find_standard
from gsaoi_watch.logs import log_name
from gsaoi_watch.pipeline.recipes import make_processed_flat, reduce_images
from gsaoi_watch.pipeline.stack_files import run_stack_job
from gsaoi_watch.quicklook.pictures import write_picture
from gsaoi_watch.quicklook.qaformat import qa_header, qa_log_line
from gsaoi_watch.reduction.container import Frame
from gsaoi_watch.reduction.qa import frame_qa
from gsaoi_watch.reduction.requirements import requirement_warnings

__all__ = ["measure_frame", "picture", "run_job", "run_stack"]

log = logging.getLogger(__name__)


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one reduction.

    Parameters
    ----------
    spec : dict
        ``recipe`` ('flat', 'images' or 'stack': see :func:`run_stack`), ``paths`` (raw
        frames), ``output_dir``, ``flat``
        (processed flat path or None for quick-look), ``bpm`` (path or None), ``params``
        ({primitive: {param: value}}), ``cache_dir`` (frames prepared ahead, or None),
        ``qa`` and ``pictures`` (booleans: measure the QA of each ``_skyCorrected`` frame
        into its header; write a PNG beside the master flat and each ``_skyCorrected``).

    Returns
    -------
    dict
        ``products``: list of (path, kind); ``skipped``: list of (file, reason);
        ``seconds``: run time; ``note``: a short description for the log; ``qa``: one dict
        per measured product (``file``, ``log`` and the QA values).
    """
    if spec["recipe"] == "stack":
        return run_stack(spec)
    t0 = time.perf_counter()
    out = Path(spec["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    bpm = load_bpm(spec["bpm"]) if spec.get("bpm") else None
    bpm_name = Path(spec["bpm"]).name if spec.get("bpm") else None
    if spec["recipe"] == "flat":
        flat = make_processed_flat(spec["paths"], bpm=bpm, bpm_name=bpm_name)
        path = write_frame(flat, out)
        # the copy the calibration manager serves, atomic (no half copy on a full disk)
        served = copy_product(path, out / "calibrations" / "processed_flat")
        if spec.get("pictures"):
            picture(path)
        return {"products": [(str(served), "processed_flat")], "qa": [],
                "skipped": flat.meta.get("skipped", []),
                "seconds": round(time.perf_counter() - t0, 1),
                "note": f"{path.name} from {flat.phu['NCOMBINE']} frames"}
    flat_frame = load_frame(spec["flat"]) if spec.get("flat") else None
    written: list[tuple[str, str]] = []
    measured: list[dict[str, Any]] = []

    def store(frame: Frame) -> str:
        sky_corrected = "_skyCorrected" in frame.filename
        if sky_corrected and spec.get("qa"):
            frame = measure_frame(frame, measured)
        p = write_frame(frame, out)
        written.append((str(p), "sky_corrected" if sky_corrected else "flat_corrected"))
        if sky_corrected and spec.get("pictures"):
            picture(p)
        return str(p)

    flat_name = Path(spec["flat"]).name if spec.get("flat") else None
    extra: dict[str, Any] = {}
    if spec.get("cache_dir"):  # frames prepared (and pass-1 masks made) while observed
        raw = {safe_name(Path(p).name): str(p) for p in spec["paths"]}
        extra = {"prepared": functools.partial(fetch, cache_dir=spec["cache_dir"],
                                               flat=flat_frame, bpm_name=bpm_name,
                                               flat_name=flat_name),
                 "store": CacheStore(raw, spec["cache_dir"], flat=flat_frame,
                                     flat_name=flat_name, bpm_name=bpm_name),
                 "objmasks": load_objmasks(spec["cache_dir"], raw,
                                           calibrations=(flat_name, bpm_name))}
    res = reduce_images(spec["paths"], flat=flat_frame, flat_name=flat_name, bpm=bpm,
                        bpm_name=bpm_name, params=spec.get("params") or {},
                        on_product=store, **extra)
    n_sky = len(res["sky_corrected"])
    return {"products": written, "skipped": res["skipped"], "qa": measured,
            "seconds": round(time.perf_counter() - t0, 1),
            "note": f"{n_sky} _skyCorrected" + (" (quick-look, no flat)" if flat_frame is None
                                                else "")
            + f"; skyCorrect offset_sky={res['offset_sky']} ({res['sky_reason']})"}


def measure_frame(frame: Frame, measured: list[dict[str, Any]]) -> Frame:
    """Quick-look QA of a reduced frame into its header; never fails the reduction."""
    try:
        standard = find_standard(frame.phu.get("OBJECT"), frame.phu.get("RA"),
                                 frame.phu.get("DEC"))
        result = frame_qa(frame, standard=standard)
    except Exception as exc:  # noqa: BLE001 -- QA is advisory: log it and carry on
        log.warning("frame=%s QA failed: %s", log_name(frame.filename), log_name(exc))
        return frame
    measured.append({**result.to_dict(), "file": frame.filename, "log": qa_log_line(result),
                     "warnings": requirement_warnings(log_name(frame.filename),
                                                      result.requirements)})
    return qa_header(frame, result)


def picture(path: str | Path) -> None:
    """A PNG beside a product; a failure is logged, never fatal."""
    try:
        write_picture(path)
    except Exception as exc:  # noqa: BLE001 -- pictures are advisory
        log.warning("product=%s no picture: %s", log_name(Path(path).name), log_name(exc))


def run_stack(spec: dict[str, Any]) -> dict[str, Any]:
    """Distortion-correct, align and stack ``_skyCorrected`` frames (the disco step).

    ``spec``: ``paths``, ``output_dir``, ``output_name``, ``pictures``; see
    :func:`gsaoi_watch.pipeline.stack_files.run_stack_job`.  Returns the same dict as
    :func:`run_job`.
    """
    result = run_stack_job(spec)
    if spec.get("pictures"):
        for path, _ in result["products"]:
            picture(path)
    return {**result, "qa": []}
