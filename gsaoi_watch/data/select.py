"""dataselect, typewalk and showd as plain functions over files and their headers.

The expression language is :mod:`gsaoi_watch.data.expression` (parsed with ``ast`` against a
whitelist, never eval'd).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gsaoi_watch.data.expression import Selector, compile_expression
from gsaoi_watch.data.fitsio import atomic_output, read_frame_info
from gsaoi_watch.errors import FrameError

__all__ = [
    'FITS_SUFFIXES', 'Selector', 'compile_expression', 'expand_inputs', 'format_table',
    'read_list_file', 'select_data', 'show_descriptors', 'typewalk', 'write_list',
]

def read_list_file(path: str | os.PathLike[str]) -> list[str]:
    """File names from an ``@list`` file: '#' comments and blank lines ignored."""
    names = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        names += line.split()
    return names


def expand_inputs(patterns: Iterable[str]) -> list[str]:
    """Expand globs and ``@list`` files, keeping argument order (matches of a glob sorted)."""
    out = []
    for pat in patterns:
        if pat.startswith("@"):
            out += read_list_file(pat[1:])
        elif any(c in pat for c in "*?["):
            out += sorted(glob.glob(pat))
        else:
            out.append(pat)
    return out


def select_data(inputs: Iterable[str], tags: Iterable[str] = (), xtags: Iterable[str] = (),
                expression: str = "True", *,
                strict: bool = False) -> tuple[list[str], list[str]]:
    """Select files by required tags, excluded tags and an expression (DRAGONS select_data).

    Returns
    -------
    selected : list of str
        The inputs that match, in input order.
    problems : list of str
        One message per file that could not be read (those files are skipped).
    """
    selector = compile_expression(expression, strict=strict)
    tags, xtags = set(tags or ()), set(xtags or ())
    selected, problems = [], []
    for path in inputs:
        try:
            info = read_frame_info(path)
        except FrameError as exc:
            problems.append(str(exc))
            continue
        if tags <= info.tags and not (xtags & info.tags) and selector(info):
            selected.append(path)
    return selected, problems


FITS_SUFFIXES = (".fits", ".fits.gz", ".fits.bz2", ".fit")


def _is_fits_name(name):
    return name.lower().endswith(FITS_SUFFIXES) and not name.startswith(".")


def typewalk(directories: Iterable[str | os.PathLike[str]], *, recursive: bool = True,
             tags: Iterable[str] = ()) -> tuple[list[tuple[str, list[tuple[str, list[str]]]]],
                                                list[str]]:
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


def _format_value(value):
    if isinstance(value, float):
        return str(value) if len(str(value)) <= 12 else f"{value:.6g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    return str(value)


def show_descriptors(files: Iterable[str],
                     descriptors: list[str]) -> tuple[list[tuple[str, list[Any]]], list[str]]:
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


def format_table(rows: list[tuple[str, list[Any]]], descriptors: list[str], *,
                 csv: bool = False) -> str:
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


def write_list(path: str | os.PathLike[str], files: Iterable[str], *, tags: Iterable[str] = (),
               xtags: Iterable[str] = (), expression: str = "True") -> None:
    """Write a DRAGONS list file: three comment lines, then one file per line.

    Written atomically, with the permissions the process umask gives.  The name is the
    user's choice (``-o``) and is kept as given; the expression is written on one line.
    """
    path = Path(path)
    expression = " ".join(str(expression).split())
    text = (f"# Includes tags: {list(tags)}\n# Excludes tags: {list(xtags)}\n"
            f"# Descriptor expression: {expression}\n" + "".join(f"{f}\n" for f in files))
    with atomic_output(path) as fh:
        fh.write(text.encode("utf-8", "surrogateescape"))

