"""``gsaoi-watch reduce``, ``stack`` and ``qa``: reductions of files named on the command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from gsaoi_watch.config import resolve_database
from gsaoi_watch.errors import GsaoiWatchError
from gsaoi_watch.logs import log_name
from gsaoi_watch.pipeline.reduce import Reduce, expand_at_files
from gsaoi_watch.pipeline.stack_files import stack_files
from gsaoi_watch.quicklook.pictures import write_picture
from gsaoi_watch.quicklook.summary import qa_for_product

__all__ = ['run_qa', 'run_reduce', 'run_stack', 'verdict_lines']

log = logging.getLogger(__name__)


def run_reduce(args: argparse.Namespace) -> int:
    """Entry point of ``gsaoi-watch reduce``."""
    params = [p for group in (args.param or []) for p in group]
    # argparse gives ``-p a=b FILE`` the FILE too: anything without '=' is an input
    inputs = list(args.inputs) + [p for p in params if "=" not in p]
    params = [p for p in params if "=" in p]
    try:
        resolve_database(args.database, args.config)  # a bad configuration fails first
        listed, list_opts = expand_at_files([a for a in inputs if a.startswith("@")])
        named = [a for a in inputs if not a.startswith("@")]
        files = named or listed  # files on the command line replace those of @lists
        uparms = _params_from_options(list_opts) + params  # command line wins
        recipe = args.recipe or _option(list_opts, ("-r", "--recipe"))
        r = Reduce(files=files, uparms=uparms, recipename=recipe, flat=args.flat,
                   bpm=args.bpm, output_dir=args.output_dir, database=args.database,
                   config=args.config)
        r.run()
    except (GsaoiWatchError, FileNotFoundError) as exc:
        print(f"gsaoi-watch reduce: {exc}", file=sys.stderr)
        return 2
    for name in r.output_filenames:
        print(name)
    return 0


def _option(options, names):
    for k, tok in enumerate(options[:-1]):
        if tok in names:
            return options[k + 1]
    return None


def _params_from_options(options):
    out, grab = [], False
    for tok in options:
        if tok in ("-p", "--param"):
            grab = True
        elif tok.startswith("-"):
            grab = False
        elif grab:
            out.append(tok)
    return out


def run_stack(args: argparse.Namespace) -> int:
    """Entry point of ``gsaoi-watch stack``."""
    from gsaoi_watch.pipeline.reduce import expand_at_files

    try:
        files, _ = expand_at_files(args.inputs)
        if not files:
            print("gsaoi-watch stack: no input files", file=sys.stderr)
            return 2
        path, result = stack_files(files, args.output, reference_catalog=args.refcat)
    except GsaoiWatchError as exc:
        print(f"gsaoi-watch stack: {exc}", file=sys.stderr)
        return 1
    for name, reason in result.meta["skipped"]:
        print(f"left out {name}: {reason}", file=sys.stderr)
    astrometry = result.meta.get("astrometry") or {}
    if astrometry.get("kind") == "absolute":
        how = (f"absolute astrometry on {astrometry['catalog']}: {astrometry['n_stars']} "
               f"stars, rms {astrometry['rms']:.4f}\"")
    else:
        how = str(astrometry.get("note") or "relative astrometry")
    print(f"wrote {path} from {len(result.meta['used'])} frames; {how}")
    return 1 if result.meta["skipped"] else 0


def verdict_lines(requirements: dict) -> list[str]:
    """One line per requirement of a QA result's ``requirements`` (as the database keeps it).

    ``IQ  NOT MET       0.63 arcsec +- 0.04: IQ70, requested IQ20 (P(requested) 0.000)``
    """
    lines = []
    for metric in ("iq", "cc", "bg", "wv"):
        v = requirements.get(metric)
        if not v:
            continue
        state = str(v.get("state", "undetermined")).upper()
        head = f"{metric.upper()}  {state:<12}"
        if v.get("met") is None:
            asked = f" (requested {v['requested']})" if v.get("requested") else ""
            lines.append(f"{head} {v.get('reason') or 'undetermined'}{asked}")
            continue
        digits = 3 if metric == "cc" else 2
        err = f" +- {v['error']:.{digits}f}" if v.get("error") else ""
        prob = f" (P(requested) {v['probability']:.3f})" if v.get("probability") is not None \
            else ""
        lines.append(f"{head} {v['value']:.{digits}f} {v['unit']}{err}: {v['band']}, requested "
                     f"{v['requested']}{prob}")
    return lines


def run_qa(args: argparse.Namespace) -> int:
    """Entry point of ``gsaoi-watch qa``: QA line and verdicts per file, optionally pictures.

    For each file: the QA line, then one line per requirement (IQ, CC, BG: met, not met or
    undetermined, the value, the achieved and the requested band), then the warnings (on
    standard error).  ``--json`` prints one JSON object per file instead.
    """
    status = 0
    for name in args.files:
        path = Path(name)
        try:
            result = qa_for_product(path)
        except Exception as exc:  # noqa: BLE001 - report the file and go on
            problem = getattr(exc, "problem", None) or exc  # a FrameError names the file
            print(f"{log_name(path.name)}: QA failed: {log_name(problem)}", file=sys.stderr)
            status = 1
            continue
        if getattr(args, "json", False):
            print(json.dumps(result, sort_keys=True))
        else:
            print(log_name(result.get("log") or f"{result['file']}: {result['skipped']}"))
            for line in verdict_lines(result.get("requirements") or {}):
                print("  " + log_name(line))
        for line in result.get("warnings") or ():
            print(f"WARNING {log_name(line)}", file=sys.stderr)
        if args.png:
            try:
                print(f"  picture {write_picture(path)}")
            except (OSError, ValueError) as exc:
                print(f"{path.name}: no picture: {exc}", file=sys.stderr)
                status = 1
    return status

