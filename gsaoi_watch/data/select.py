"""dataselect, typewalk and showd as plain functions over files and their headers.

The expression language is parsed with ``ast`` against a whitelist, never eval'd.
"""

from __future__ import annotations

import ast
import datetime as dt
import glob
import math
import operator
import os
from pathlib import Path

from gsaoi_watch.data.descriptors import DESCRIPTORS
from gsaoi_watch.data.fitsio import read_frame_info
from gsaoi_watch.errors import ExpressionError, FrameError

__all__ = [
    'FITS_SUFFIXES', 'Selector', 'compile_expression', 'expand_inputs', 'format_table',
    'read_list_file', 'select_data', 'show_descriptors', 'typewalk', 'write_list',
]

_OPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
        ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}


_PRETTY = {"filter_name", "detector_name", "camera"}


_CLOSE = {"exposure_time": 1e-2, "central_wavelength": 1e-5}


_PARSERS = {
    "ut_date": lambda s: dt.datetime.strptime(s, "%Y-%m-%d").date(),
    "ut_time": lambda s: dt.datetime.strptime(s, "%H:%M:%S").time(),
    "local_time": lambda s: dt.datetime.strptime(s, "%H:%M:%S").time(),
    "ut_datetime": lambda s: (dt.datetime.fromisoformat(s) if "T" in s
                              else dt.datetime.strptime(s, "%Y-%m-%d %H:%M:%S")),
}


def _describe(node):
    return type(node).__name__


def _check(node):
    """Raise ExpressionError unless ``node`` only uses whitelisted constructs."""
    if isinstance(node, ast.Expression):
        return _check(node.body)
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And | ast.Or):
        for v in node.values:
            _check(v)
        return None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return _check(node.operand)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        if isinstance(node.operand, ast.Constant) and isinstance(node.operand.value,
                                                                 int | float):
            return None
        raise ExpressionError("a sign may only precede a number")
    if isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _OPS:
                raise ExpressionError(f"comparison {_describe(op)} is not allowed "
                                      "(use == != < <= > >=)")
        for operand in [node.left, *node.comparators]:
            _check(operand)
        return None
    if isinstance(node, ast.Name):
        if node.id.startswith("_"):
            raise ExpressionError(f"name {node.id!r} is not allowed")
        if node.id not in DESCRIPTORS and node.id not in ("True", "False", "None"):
            raise ExpressionError(f"unknown descriptor {node.id!r}; valid: "
                                  f"{', '.join(DESCRIPTORS)}")
        return None
    if isinstance(node, ast.Constant):
        if isinstance(node.value, str | int | float | bool) or node.value is None:
            return None
        raise ExpressionError(f"literal {node.value!r} is not allowed")
    kind = {ast.Call: "function calls", ast.Attribute: "attribute access",
            ast.Subscript: "subscripts", ast.BinOp: "arithmetic", ast.Lambda: "lambdas",
            ast.ListComp: "comprehensions", ast.GeneratorExp: "comprehensions",
            ast.JoinedStr: "f-strings", ast.NamedExpr: "assignments"}.get(type(node))
    raise ExpressionError(f"{kind or _describe(node)} not allowed in an expression")


class Selector:
    """A compiled dataselect expression; call it with a FrameInfo to get a bool."""

    def __init__(self, text: str, tree: ast.Expression, strict: bool):
        self.text = text
        self._tree = tree
        self.strict = strict

    def __repr__(self):
        return f"Selector({self.text!r}, strict={self.strict})"

    def __call__(self, info) -> bool:
        """Return True if the frame described by ``info`` matches."""
        return bool(self._eval(self._tree.body, info))

    # --- evaluation ----------------------------------------------------------------------
    def _eval(self, node, info):
        if isinstance(node, ast.BoolOp):
            if isinstance(node.op, ast.And):
                return all(self._eval(v, info) for v in node.values)
            return any(self._eval(v, info) for v in node.values)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return not self._eval(node.operand, info)
        if isinstance(node, ast.Compare):
            left = node.left
            for op, right in zip(node.ops, node.comparators):
                if not self._compare(left, type(op), right, info):
                    return False
                left = right
            return True
        return self._value(node, info)[1]

    def _value(self, node, info):
        """Return (descriptor name or None, value) of an operand."""
        if isinstance(node, ast.Name):
            if node.id in ("True", "False", "None"):
                return None, {"True": True, "False": False, "None": None}[node.id]
            return node.id, self._descriptor(node.id, info)
        if isinstance(node, ast.UnaryOp):  # signed number
            value = node.operand.value
            return None, -value if isinstance(node.op, ast.USub) else value
        return None, node.value

    def _descriptor(self, name, info):
        method = getattr(info, name)
        try:
            if name in _PRETTY and not self.strict:
                return method(pretty=True)
            return method()
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            return None

    def _compare(self, left, op, right, info):
        lname, lval = self._value(left, info)
        rname, rval = self._value(right, info)
        name = lname or rname
        if lname and rname:
            name = None  # descriptor against descriptor: plain comparison
        if lval is None or rval is None:
            return False
        if name in _PARSERS:
            try:
                if isinstance(rval, str) and rname is None:
                    rval = _PARSERS[name](rval)
                if isinstance(lval, str) and lname is None:
                    lval = _PARSERS[name](lval)
            except ValueError:
                raise ExpressionError(f"{name}: cannot read {rval if lname else lval!r} "
                                      "as a date/time") from None
        if name in _CLOSE and not self.strict and op in (ast.Eq, ast.NotEq):
            try:
                close = math.isclose(float(lval), float(rval), rel_tol=_CLOSE[name])
            except (TypeError, ValueError):
                return False
            return close if op is ast.Eq else not close
        try:
            return bool(_OPS[op](lval, rval))
        except TypeError:
            return False


def compile_expression(text: str, *, strict: bool = False) -> Selector:
    """Parse and check a dataselect expression.

    Parameters
    ----------
    text : str
        The expression, e.g. ``"filter_name=='Kshort' and exposure_time==60."``.
    strict : bool
        Compare raw filter names and exact exposure times.

    Returns
    -------
    Selector

    Raises
    ------
    ExpressionError
        Syntax errors and anything outside the whitelist; nothing is ever executed.
    """
    text = (text or "True").strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"cannot parse expression {text!r}: {exc.msg}") from None
    _check(tree)
    return Selector(text, tree, strict)


def read_list_file(path):
    """File names from an ``@list`` file: '#' comments and blank lines ignored."""
    names = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        names += line.split()
    return names


def expand_inputs(patterns):
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


def select_data(inputs, tags=(), xtags=(), expression="True", *, strict=False):
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


def write_list(path, files, *, tags=(), xtags=(), expression="True"):
    """Write a DRAGONS list file: three comment lines, then one file per line (atomic)."""
    path = Path(path)
    text = (f"# Includes tags: {list(tags)}\n# Excludes tags: {list(xtags)}\n"
            f"# Descriptor expression: {expression}\n" + "".join(f"{f}\n" for f in files))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)

