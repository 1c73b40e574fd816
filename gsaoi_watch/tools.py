"""typewalk, showd and dataselect: DRAGONS' file tools, as plain functions and CLI runners.

The plain functions return data; the ``run_*`` functions print and return an exit status:
0 when every file was read, 1 when some were skipped (each with one line on standard error
naming the file and the problem), 2 for a usage error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gsaoi_watch.errors import ExpressionError, FrameError
from gsaoi_watch.frames import DESCRIPTORS, read_frame_info
from gsaoi_watch.select import compile_expression, expand_inputs, select_data

__all__ = ["FITS_SUFFIXES", "format_table", "run_dataselect", "run_showd", "run_typewalk",
           "show_descriptors", "typewalk", "write_list"]

FITS_SUFFIXES = (".fits", ".fits.gz", ".fits.bz2", ".fit")


def _is_fits_name(name):
    return name.lower().endswith(FITS_SUFFIXES) and not name.startswith(".")


def typewalk(directories, *, recursive=True, tags=()):
    """Walk directories and classify every FITS file.

    Returns
    -------
    list of (directory, [(filename, tags)])
        Per directory (sorted), the files (sorted) with their sorted tags; files that do
        not carry all of ``tags`` are left out.
    problems : list of str
        One message per file that could not be read.
    """
    wanted = set(tags or ())
    listing, problems = [], []
    for top in directories:
        top = Path(top)
        if not top.is_dir():
            problems.append(f"{top}: not a directory")
            continue
        walker = os.walk(top) if recursive else [(str(top), [], os.listdir(top))]
        for dirpath, dirnames, filenames in walker:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rows = []
            for name in sorted(filenames):
                if not _is_fits_name(name):
                    continue
                path = Path(dirpath) / name
                try:
                    info = read_frame_info(path)
                except FrameError as exc:
                    problems.append(str(exc))
                    continue
                if wanted <= info.tags:
                    rows.append((name, sorted(info.tags)))
            if rows:
                listing.append((str(Path(dirpath).resolve()), rows))
    return listing, problems


def _report(problems):
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


def run_typewalk(args) -> int:
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


def _format_value(value):
    if isinstance(value, float):
        return str(value) if len(str(value)) <= 12 else f"{value:.6g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    return str(value)


def show_descriptors(files, descriptors):
    """Descriptor values of files.

    Returns
    -------
    rows : list of (filename, [values])
    problems : list of str
    """
    rows, problems = [], []
    for path in files:
        try:
            info = read_frame_info(path)
        except FrameError as exc:
            problems.append(str(exc))
            continue
        values = []
        for name in descriptors:
            try:
                values.append(getattr(info, name)())
            except (KeyError, TypeError, ValueError, IndexError):
                values.append(None)
        rows.append((path, values))
    return rows, problems


def format_table(rows, descriptors, *, csv=False):
    """Lay out showd rows as DRAGONS does (a dashed rule, filename column, value columns)."""
    header = ["filename", *descriptors]
    body = [[str(name), *(_format_value(v) for v in values)] for name, values in rows]
    if csv:
        return "\n".join(",".join(r) for r in [header, *body])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = "-" * (sum(widths) + 3 * (len(widths) - 1))

    def fmt(r):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        return "   ".join(cells)

    return "\n".join([line, fmt(header), line, *(fmt(r) for r in body)])


def run_showd(args) -> int:
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


def write_list(path, files, *, tags=(), xtags=(), expression="True"):
    """Write a DRAGONS list file: three comment lines, then one file per line (atomic)."""
    path = Path(path)
    text = (f"# Includes tags: {list(tags)}\n# Excludes tags: {list(xtags)}\n"
            f"# Descriptor expression: {expression}\n" + "".join(f"{f}\n" for f in files))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_dataselect(args) -> int:
    """Entry point of ``gsaoi-watch dataselect``."""
    tags = [t for t in (args.tags or "").split(",") if t]
    xtags = [t for t in (args.xtags or "").split(",") if t]
    try:
        compile_expression(args.expr, strict=args.strict)
    except ExpressionError as exc:
        print(f"dataselect: {exc}", file=sys.stderr)
        return 2
    files = expand_inputs(args.files)
    selected, problems = select_data(files, tags, xtags, args.expr, strict=args.strict)
    if args.output:
        write_list(args.output, selected, tags=tags, xtags=xtags, expression=args.expr)
    if not args.output or args.verbose:
        for name in selected:
            print(name)
    return _report(problems)
