"""Job functions run in worker processes: paths and plain parameters in, product paths out.

They are picklable module-level functions, so a ``concurrent.futures`` executor (the
default process pool, or a ``dask.distributed`` Client) can run them.  They never touch the
database: the engine thread registers what they return.
"""

from __future__ import annotations

import functools
import shutil
import time
from pathlib import Path

from gsaoi_watch.prepared import fetch
from gsaoi_watch.products import load_bpm, load_frame, write_frame
from gsaoi_watch.reduction.recipes import make_processed_flat, reduce_images

__all__ = ["run_job"]


def run_job(spec: dict) -> dict:
    """Run one reduction.

    Parameters
    ----------
    spec : dict
        ``recipe`` ('flat' or 'images'), ``paths`` (raw frames), ``output_dir``, ``flat``
        (processed flat path or None for quick-look), ``bpm`` (path or None), ``params``
        ({primitive: {param: value}}).

    Returns
    -------
    dict
        ``products``: list of (path, kind); ``skipped``: list of (file, reason);
        ``seconds``: run time; ``note``: a short description for the log.
    """
    t0 = time.perf_counter()
    out = Path(spec["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    bpm = load_bpm(spec["bpm"]) if spec.get("bpm") else None
    bpm_name = Path(spec["bpm"]).name if spec.get("bpm") else None
    if spec["recipe"] == "flat":
        flat = make_processed_flat(spec["paths"], bpm=bpm, bpm_name=bpm_name)
        path = write_frame(flat, out)
        caldir = out / "calibrations" / "processed_flat"
        caldir.mkdir(parents=True, exist_ok=True)
        tmp = caldir / f".{path.name}.tmp"
        shutil.copyfile(path, tmp)
        tmp.replace(caldir / path.name)
        return {"products": [(str(caldir / path.name), "processed_flat")],
                "skipped": flat.meta.get("skipped", []),
                "seconds": round(time.perf_counter() - t0, 1),
                "note": f"{path.name} from {flat.phu['NCOMBINE']} frames"}
    flat = load_frame(spec["flat"]) if spec.get("flat") else None
    written = []

    def store(frame):
        p = write_frame(frame, out)
        written.append((str(p), "sky_corrected" if "_skyCorrected" in p.name
                        else "flat_corrected"))
        return str(p)

    prepared = None
    if spec.get("cache_dir"):  # frames prepared while the sequence was observed
        prepared = functools.partial(
            fetch, cache_dir=spec["cache_dir"], flat=flat, bpm_name=bpm_name,
            flat_name=Path(spec["flat"]).name if spec.get("flat") else None)
    res = reduce_images(spec["paths"], flat=flat,
                        flat_name=Path(spec["flat"]).name if spec.get("flat") else None,
                        bpm=bpm, bpm_name=bpm_name, params=spec.get("params") or {},
                        on_product=store, prepared=prepared)
    n_sky = len(res["sky_corrected"])
    return {"products": written, "skipped": res["skipped"],
            "seconds": round(time.perf_counter() - t0, 1),
            "note": f"{n_sky} _skyCorrected" + (" (quick-look, no flat)" if flat is None else "")
            + f"; skyCorrect offset_sky={res['offset_sky']} ({res['sky_reason']})"}
