"""The dataselect expression language: parsed with ``ast`` against a whitelist, never eval'd.

An expression combines comparisons of descriptor names with literals using ``and``, ``or``,
``not`` and parentheses, e.g. ``'(observation_class=="science" and exposure_time==60.)'``.
Semantics follow DRAGONS' dataselect:

- ``filter_name`` (also ``detector_name``, ``camera``) is compared in its pretty form
  ('Kshort') unless ``strict`` (then 'Kshort_G1105&Clear');
- ``exposure_time == v`` is true within 1 % (``math.isclose``, rel_tol=1e-2) unless strict,
  ``central_wavelength == v`` within 1e-5;
- ``ut_date`` compares with 'YYYY-MM-DD', ``ut_time``/``local_time`` with 'HH:MM:SS',
  ``ut_datetime`` with 'YYYY-MM-DD HH:MM:SS' (or ISO 'T');
- a descriptor that has no value (None) makes its comparison false.

Deliberate difference: DRAGONS skips its special rules for the first term inside a
parenthesis (a regex artefact); here the rules apply to every comparison alike.
Anything else -- calls, attributes, subscripts, arithmetic, comprehensions, lambdas,
unknown or underscore names -- is rejected with :class:`ExpressionError` before any file
is read.
"""

from __future__ import annotations

import ast
import datetime as dt
import glob
import math
import operator
from pathlib import Path

from gsaoi_watch.errors import ExpressionError, FrameError
from gsaoi_watch.frames import DESCRIPTORS, read_frame_info

__all__ = ["Selector", "compile_expression", "expand_inputs", "read_list_file", "select_data"]

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
