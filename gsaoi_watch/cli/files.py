"""``gsaoi-watch typewalk``, ``showd`` and ``dataselect``: DRAGONS' file tools."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gsaoi_watch.data.descriptors import DESCRIPTORS
from gsaoi_watch.data.select import (
    compile_expression,
    expand_inputs,
    format_table,
    select_data,
    show_descriptors,
    typewalk,
    write_list,
)
from gsaoi_watch.errors import ExpressionError

__all__ = ['run_dataselect', 'run_showd', 'run_typewalk']

def _report(problems):
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


def run_typewalk(args: argparse.Namespace) -> int:
    """Entry point of ``gsaoi-watch typewalk``."""
    tags = [t for t in (args.tags or "").split(",") if t]
    listing, problems = typewalk(args.directories or ["."], recursive=not args.no_recursion,
                                 tags=tags)
    selected = []
    for directory, rows in listing:
        print(f"directory:  {directory}")
        for name, ftags in rows:
            dots = "." * max(3, 34 - len(name))
            print(f"     {name} {dots} {' '.join(f'({t})' for t in ftags)}")
            selected.append(str(Path(directory) / name))
    print("Done DataSpider.typewalk(..)")
    if args.out:
        write_list(args.out, selected, tags=tags)
    return _report(problems)


def run_showd(args: argparse.Namespace) -> int:
    """Entry point of ``gsaoi-watch showd``."""
    descriptors = [d.strip() for d in args.descriptors.split(",") if d.strip()]
    unknown = [d for d in descriptors if d not in DESCRIPTORS]
    if unknown:
        print(f"showd: unknown descriptor(s) {', '.join(unknown)}; valid: "
              f"{', '.join(DESCRIPTORS)}", file=sys.stderr)
        return 2
    files = expand_inputs(args.files)
    if not files and not sys.stdin.isatty():
        files = [line.strip() for line in sys.stdin
                 if line.strip() and not line.lstrip().startswith("#")]
    if not files:
        print("showd: no input files", file=sys.stderr)
        return 2
    rows, problems = show_descriptors(files, descriptors)
    print(format_table(rows, descriptors, csv=args.csv))
    return _report(problems)


def run_dataselect(args: argparse.Namespace) -> int:
    """Entry point of ``gsaoi-watch dataselect``."""
    tags = [t for t in (args.tags or "").split(",") if t]
    xtags = [t for t in (args.xtags or "").split(",") if t]
    try:
        compile_expression(args.expr, strict=args.strict)
        files = expand_inputs(args.files)
        selected, problems = select_data(files, tags, xtags, args.expr, strict=args.strict)
    except ExpressionError as exc:
        print(f"dataselect: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unreadable @list file
        print(f"dataselect: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    if args.output:
        write_list(args.output, selected, tags=tags, xtags=xtags, expression=args.expr)
    if not args.output or args.verbose:
        for name in selected:
            print(name)
    return _report(problems)

