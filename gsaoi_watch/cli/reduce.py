"""``gsaoi-watch reduce``, ``stack`` and ``qa``: reductions of files named on the command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from gsaoi_watch.config import resolve_database
from gsaoi_watch.errors import GsaoiWatchError
from gsaoi_watch.pipeline.reduce import Reduce, expand_at_files
from gsaoi_watch.pipeline.stack_files import stack_files
from gsaoi_watch.quicklook.pictures import write_picture
from gsaoi_watch.quicklook.summary import qa_for_product

__all__ = ['run_stack', 'run_qa', 'run_reduce']

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
    print(f"wrote {path} from {len(result.meta['used'])} frames")
    return 1 if result.meta["skipped"] else 0


def run_qa(args: argparse.Namespace) -> int:
    """Entry point of ``gsaoi-watch qa``: one QA line per file, optionally pictures."""
    status = 0
    for name in args.files:
        path = Path(name)
        try:
            result = qa_for_product(path)
        except Exception as exc:  # noqa: BLE001 - report the file and go on
            print(f"{path.name}: QA failed: {exc}", file=sys.stderr)
            status = 1
            continue
        print(result.get("log") or f"{result['file']}: {result['skipped']}")
        if args.png:
            try:
                print(f"  picture {write_picture(path)}")
            except (OSError, ValueError) as exc:
                print(f"{path.name}: no picture: {exc}", file=sys.stderr)
                status = 1
    return status

