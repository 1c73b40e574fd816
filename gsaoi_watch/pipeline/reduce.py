"""``gsaoi-watch reduce``: DRAGONS' reduce for GSAOI, from the command line or Python.

Mirrors DRAGONS' ``Reduce`` class (files, uparms, recipename, run(), output_filenames) and
the command-line rules: ``@file`` lists (recursive, '#' comments, options allowed inside;
files named on the command line replace those of the lists), ``-p primitive:param=value``
(or ``param=value`` for every primitive having it), ``-r RECIPE``.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gsaoi_watch.calibration import db, queries
from gsaoi_watch.calibration.caldb import add_calibration
from gsaoi_watch.config import resolve_database
from gsaoi_watch.data.descriptors import FrameInfo
from gsaoi_watch.data.fitsio import (
    copy_product,
    load_bpm,
    load_frame,
    log_name,
    read_frame_info,
    write_frame,
)
from gsaoi_watch.errors import FrameError, GsaoiWatchError, ReductionError
from gsaoi_watch.pipeline.recipes import make_processed_flat, reduce_images
from gsaoi_watch.reduction.container import Frame
from gsaoi_watch.reduction.recipes import PARAMETERS

__all__ = ['RECIPES', 'Reduce', 'expand_at_files', 'find_bpm', 'parse_uparms']

log = logging.getLogger(__name__)

#: Recipes by name.  ``reduce`` stops after the second sky pass and detection here;
#: distortion correction and stacking are the separate ``stack`` step.
RECIPES = {
    "makeProcessedFlat": "flat",
    "reduce": "images",
    "reduce_nostack": "images",
}


CALDIR = Path("calibrations")


def expand_at_files(args: Iterable[str], _depth: int = 0) -> tuple[list[str], list[str]]:
    """Expand ``@file`` arguments recursively into (files, options) lists.

    Options found inside lists (tokens starting with '-') are returned separately, in order,
    so that the command line can override them.
    """
    if _depth > 20:
        raise GsaoiWatchError("@file lists nest too deeply (a loop?)")
    files, options = [], []
    for arg in args:
        if arg.startswith("@"):
            path = Path(arg[1:])
            if not path.is_file():
                raise GsaoiWatchError(f"{path}: list file not found")
            tokens = []
            for line in path.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    tokens += shlex.split(line)
            sub_files, sub_opts = _split_tokens(tokens, _depth)
            files += sub_files
            options += sub_opts
        else:
            files.append(arg)
    return files, options


def _split_tokens(tokens, depth):
    files, options = [], []
    it = iter(tokens)
    for tok in it:
        if tok.startswith("@"):
            f, o = expand_at_files([tok], depth + 1)
            files += f
            options += o
        elif tok.startswith("-"):
            options.append(tok)
            if tok in ("-p", "--param"):
                # every following token of the form a=b or a:b=c belongs to -p
                continue
            if tok in ("-r", "--recipe", "--flat", "--bpm", "-o", "--output-dir"):
                options.append(next(it, ""))
        elif "=" in tok and options and options[-1] != "":
            options.append(tok)
        else:
            files.append(tok)
    return files, options


def _convert(value: str, default, where: str):
    text = value.strip()
    if isinstance(default, bool) or default is None:
        if text.lower() in ("true", "yes", "1"):
            return True
        if text.lower() in ("false", "no", "0"):
            return False
        if default is None and text.lower() == "none":
            return None
        raise GsaoiWatchError(f"{where}: {value!r} is not a boolean (True/False)")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise GsaoiWatchError(f"{where}: {value!r} is not an integer") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise GsaoiWatchError(f"{where}: {value!r} is not a number") from None
    return text


def parse_uparms(uparms: Iterable[str] | dict | None) -> dict:
    """Validate ``primitive:param=value`` strings (or a dict) into {primitive: {param: value}}.

    A bare ``param=value`` applies to every primitive that has ``param``.

    Raises
    ------
    GsaoiWatchError
        Unknown primitive or parameter (the message lists the valid ones) or a value of the
        wrong type.
    """
    if isinstance(uparms, dict):
        items = [(f"{k}={v}" if ":" in k else k, v) for k, v in uparms.items()]
        uparms = [f"{k}={v}" if "=" not in k else k for k, v in items]
    out: dict[str, dict[str, Any]] = {}
    for item in uparms or []:
        if "=" not in item:
            raise GsaoiWatchError(f"-p {item!r}: expected primitive:parameter=value")
        key, value = item.split("=", 1)
        if ":" in key:
            prim, param = key.split(":", 1)
            if prim not in PARAMETERS:
                raise GsaoiWatchError(f"-p {item}: unknown primitive {prim!r}; valid: "
                                      f"{', '.join(sorted(PARAMETERS))}")
            if param not in PARAMETERS[prim]:
                raise GsaoiWatchError(f"-p {item}: {prim} has no parameter {param!r}; valid: "
                                      f"{', '.join(sorted(PARAMETERS[prim]))}")
            targets = [prim]
        else:
            param = key
            targets = [p for p, params in PARAMETERS.items() if param in params]
            if not targets:
                valid = sorted({q for params in PARAMETERS.values() for q in params})
                raise GsaoiWatchError(f"-p {item}: no primitive has a parameter {param!r}; "
                                      f"valid: {', '.join(valid)}")
        for prim in targets:
            out.setdefault(prim, {})[param] = _convert(value, PARAMETERS[prim][param],
                                                       f"-p {item}")
    return out


def find_bpm(info: FrameInfo, search_dirs: Iterable[str | Path]) -> Path | None:
    """A static BPM (tags BPM) valid for the frame: dated on or before it, the latest."""
    best = None
    frame_time = info.ut_datetime()
    if frame_time is None:
        return None
    for d in search_dirs:
        for path in sorted(Path(d).glob("*.fits")):
            if "bpm" not in path.name.lower():
                continue
            try:
                cal = read_frame_info(path)
            except FrameError:
                continue
            if "BPM" not in cal.tags:
                continue
            when = cal.ut_datetime()
            if when is not None and when <= frame_time and (best is None
                                                                     or when > best[0]):
                best = (when, path)
    return None if best is None else best[1]


class Reduce:
    """Reduce GSAOI files as DRAGONS' ``Reduce`` does.

    Parameters
    ----------
    files : list of str, optional
        Input files.
    uparms : list of str or dict, optional
        ``primitive:param=value`` settings.
    recipename : str, optional
        'makeProcessedFlat', 'reduce' or 'reduce_nostack'; chosen from the tags of the first
        input when None (FLAT -> makeProcessedFlat, otherwise reduce).
    flat, bpm : str, optional
        Processed flat and static BPM to use instead of looking them up in the database.
    output_dir : str, optional
        Where products are written (default: current directory).  Processed flats are also
        copied to ``calibrations/processed_flat/`` below it and registered.
    database : str, optional
        Calibration database path or URL (default: the config file's, else
        ``./cal_manager.db``; created if missing).  Every product is registered with the
        calibrations it used.
    config : str, optional
        Configuration file.

    Examples
    --------
    >>> r = Reduce()                                           # doctest: +SKIP
    >>> r.files = ["S20170505S0095.fits", "S20170505S0096.fits"]  # doctest: +SKIP
    >>> r.uparms = ["skyCorrect:offset_sky=False"]             # doctest: +SKIP
    >>> r.run()                                                # doctest: +SKIP
    >>> r.output_filenames                                     # doctest: +SKIP
    """

    def __init__(self, files=None, uparms=None, recipename=None, flat=None, bpm=None,
                 output_dir=".", database=None, config=None):
        self.files = list(files or [])
        self.uparms = uparms or []
        self.recipename = recipename
        self.flat = flat
        self.bpm = bpm
        self.output_dir = output_dir
        self.database = database
        self.config = config
        self.output_filenames = []
        self.result = None

    def _recipe(self, first):
        if self.recipename:
            if self.recipename not in RECIPES:
                raise GsaoiWatchError(f"unknown recipe {self.recipename!r}; valid: "
                                      f"{', '.join(RECIPES)}")
            return RECIPES[self.recipename]
        return "flat" if "FLAT" in first.tags else "images"

    def run(self) -> Reduce:
        """Run the recipe on ``files``; products are listed in ``output_filenames``."""
        if not self.files:
            raise GsaoiWatchError("no input files")
        params = parse_uparms(self.uparms)
        infos = [read_frame_info(f) for f in self.files]
        kind = self._recipe(infos[0])
        db.open_database(resolve_database(self.database, self.config), create=True)
        try:
            return self._run(kind, infos, params)
        finally:
            db.close_database()

    def _calibration(self, given, info, kind, fallback_dirs=()):
        """(path, Product) of the calibration to use: given, else the database, else found."""
        if given:
            path = Path(given)
            return path, add_calibration(path)
        product = queries.best_calibration(info, kind)
        if product is not None:
            return Path(product.path), product
        if kind == "processed_bpm":
            found = find_bpm(info, fallback_dirs)
            if found:
                return found, add_calibration(found)
        return None, None

    def _run(self, kind, infos, params):
        out = Path(self.output_dir)
        raw_dirs = sorted({Path(f).resolve().parent for f in self.files})
        bpm_path, bpm_row = self._calibration(self.bpm, infos[0], "processed_bpm", raw_dirs)
        bpm = load_bpm(bpm_path) if bpm_path else None
        bpm_name = bpm_path.name if bpm_path else None
        if bpm_path:
            log.info("BPM: %s", log_name(bpm_name))
        t0 = time.perf_counter()
        if kind == "flat":
            thr = params.get("thresholdFlatfield", {})
            flat = make_processed_flat(self.files, bpm=bpm, bpm_name=bpm_name,
                                       lower=thr.get("lower", 0.01), upper=thr.get("upper", 10.0))
            path = write_frame(flat, out)
            copy = copy_product(path, out / CALDIR / "processed_flat")
            used = [(bpm_row, "processed_bpm")] if bpm_row else []
            queries.register_product(copy, read_frame_info(copy), kind="processed_flat",
                                     is_calibration=True, used=used)
            self.output_filenames = [str(path)]
            self.result = flat
            log.info("makeProcessedFlat: %s from %d frames in %.1f s (registered)",
                     log_name(path.name),
                     flat.phu["NCOMBINE"], time.perf_counter() - t0)
            return self
        flat_path, flat_row = self._calibration(self.flat, infos[0], "processed_flat")
        if flat_path is None:
            raise ReductionError(f"{infos[0].filename}: no processed flat for filter "
                                 f"{infos[0].filter_name()} within 30 days in the calibration "
                                 "database; reduce the flats, 'caldb add' one, or give --flat")
        log.info("flat: %s", log_name(flat_path.name))
        flat = load_frame(flat_path)
        used = [(flat_row, "processed_flat")] + ([(bpm_row, "processed_bpm")] if bpm_row else [])

        def store(frame: Frame) -> str:
            path = write_frame(frame, out)
            product_kind = "sky_corrected" if "_skyCorrected" in path.name else "flat_corrected"
            queries.register_product(path, read_frame_info(path), kind=product_kind,
                                is_calibration=False, used=used)
            return str(path)

        res = reduce_images(self.files, flat=flat, flat_name=flat_path.name, bpm=bpm,
                            bpm_name=bpm_name, params=params, on_product=store)
        self.output_filenames = res["sky_corrected"] + res["flat_corrected"]
        self.result = res
        log.info("reduce: %d _skyCorrected, %d _flatCorrected in %.1f s (%s)",
                 len(res["sky_corrected"]), len(res["flat_corrected"]),
                 time.perf_counter() - t0, res["sky_reason"])
        return self

