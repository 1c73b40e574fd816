"""The dataselect expression language: parsed with ``ast`` against a whitelist, never eval'd.

An expression compares descriptors with literals (``filter_name=='Kshort' and
exposure_time==60.``) joined by ``and``, ``or``, ``not`` and parentheses.  Everything is
checked when the expression is compiled, so that a bad expression is one
:class:`~gsaoi_watch.errors.ExpressionError` before any file is read: syntax, names, length
(:data:`MAX_LENGTH` characters) and nesting (:data:`MAX_DEPTH`), date and time literals, and
the types on both sides of every comparison (a number descriptor against a string, a date
against a number, a per-array list against anything, ...).
"""

from __future__ import annotations

import ast
import datetime as dt
import math
import operator
from collections.abc import Callable
from typing import Any

from gsaoi_watch.data.descriptors import DESCRIPTORS
from gsaoi_watch.errors import ExpressionError

__all__ = ["MAX_DEPTH", "MAX_LENGTH", "Selector", "compile_expression"]

#: Longest expression accepted (characters).
MAX_LENGTH = 4000

#: Deepest nesting of parentheses, ``not`` and comparisons accepted.
MAX_DEPTH = 50

_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
    ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}

_PRETTY = {"filter_name", "detector_name", "camera"}

_CLOSE = {"exposure_time": 1e-2, "central_wavelength": 1e-5}

_PARSERS: dict[str, Callable[[str], Any]] = {
    "ut_date": lambda s: dt.datetime.strptime(s, "%Y-%m-%d").date(),
    "ut_time": lambda s: dt.datetime.strptime(s, "%H:%M:%S").time(),
    "local_time": lambda s: dt.datetime.strptime(s, "%H:%M:%S").time(),
    "ut_datetime": lambda s: (dt.datetime.fromisoformat(s) if "T" in s
                              else dt.datetime.strptime(s, "%Y-%m-%d %H:%M:%S")),
}

_FORMATS = {"ut_date": "YYYY-MM-DD", "ut_time": "HH:MM:SS", "local_time": "HH:MM:SS",
            "ut_datetime": "YYYY-MM-DD HH:MM:SS or YYYY-MM-DDTHH:MM:SS"}

#: What each descriptor returns, for the type check of comparisons ("list": one per array).
_NUMBER = ("airmass azimuth central_wavelength coadds dec detector_x_bin detector_x_offset "
           "detector_y_bin detector_y_offset effective_wavelength elevation exposure_time lnrs "
           "pixel_scale position_angle ra target_dec target_ra telescope_x_offset "
           "telescope_y_offset wcs_dec wcs_ra")
_TEXT = ("binning camera data_label detector_name detector_roi_setting filter_name group_id "
         "instrument object observation_class observation_id observation_type program_id "
         "qa_state read_mode read_speed_setting telescope wavefront_sensor")
_KINDS = {**{n: "number" for n in _NUMBER.split()}, **{n: "text" for n in _TEXT.split()},
          "is_ao": "bool", "is_coadds_summed": "bool", "ut_date": "date",
          "ut_time": "time", "local_time": "time", "ut_datetime": "datetime"}
_KIND_TEXT = {"number": "a number", "text": "text", "bool": "true or false",
              "date": "a date", "time": "a time", "datetime": "a date and time",
              "list": "a per-array list", "none": "None"}
_CONSTANTS = {"True": True, "False": False, "None": None}
_DISALLOWED = {ast.Call: "function calls", ast.Attribute: "attribute access",
               ast.Subscript: "subscripts", ast.BinOp: "arithmetic", ast.Lambda: "lambdas",
               ast.ListComp: "comprehensions", ast.GeneratorExp: "comprehensions",
               ast.JoinedStr: "f-strings", ast.NamedExpr: "assignments"}


def _describe(node: ast.AST) -> str:
    return type(node).__name__


def _check(node: ast.AST, depth: int = 0) -> None:
    """Raise ExpressionError unless ``node`` only uses whitelisted constructs."""
    if depth > MAX_DEPTH:
        raise ExpressionError(f"expression nested more than {MAX_DEPTH} levels deep")
    if isinstance(node, ast.Expression):
        return _check(node.body, depth)
    if isinstance(node, ast.BoolOp):  # and, or: the only two BoolOps
        for v in node.values:
            _check(v, depth + 1)
        return None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return _check(node.operand, depth + 1)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        if isinstance(node.operand, ast.Constant) and _kind_of_value(node.operand.value) \
                == "number":
            return None
        raise ExpressionError("a sign may only precede a number")
    if isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _OPS:
                raise ExpressionError(f"comparison {_describe(op)} is not allowed "
                                      "(use == != < <= > >=)")
        for operand in [node.left, *node.comparators]:
            _check(operand, depth + 1)
        _check_types(node)
        return None
    if isinstance(node, ast.Name):
        if node.id.startswith("_"):
            raise ExpressionError(f"name {node.id!r} is not allowed")
        if node.id not in DESCRIPTORS and node.id not in _CONSTANTS:
            raise ExpressionError(f"unknown descriptor {node.id!r}; valid: "
                                  f"{', '.join(DESCRIPTORS)}")
        return None
    if isinstance(node, ast.Constant):
        if isinstance(node.value, str | int | float | bool) or node.value is None:
            return None
        raise ExpressionError(f"literal {node.value!r} is not allowed")
    kind = _DISALLOWED.get(type(node))
    raise ExpressionError(f"{kind or _describe(node)} not allowed in an expression")


def _kind_of_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "text"


def _operand(node: ast.AST) -> tuple[str | None, str, Any]:
    """(descriptor name or None, kind, literal value) of an operand."""
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            value = _CONSTANTS[node.id]
            return None, _kind_of_value(value), value
        return node.id, _KINDS.get(node.id, "list"), None
    if isinstance(node, ast.UnaryOp):  # a signed number (checked by _check)
        value = node.operand.value  # type: ignore[attr-defined]
        return None, "number", -value if isinstance(node.op, ast.USub) else value
    value = node.value  # type: ignore[attr-defined]
    return None, _kind_of_value(value), value


def _show(name: str | None, value: Any) -> str:
    return name if name is not None else repr(value)


def _check_pair(left: ast.AST, op: ast.cmpop, right: ast.AST) -> None:
    """Reject a comparison whose two sides can never be compared meaningfully."""
    lname, lkind, lval = _operand(left)
    rname, rkind, rval = _operand(right)
    symbol = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">",
              ast.GtE: ">="}[type(op)]
    text = f"{_show(lname, lval)} {symbol} {_show(rname, rval)}"
    ordering = not isinstance(op, ast.Eq | ast.NotEq)
    if "none" in (lkind, rkind):
        if ordering:
            raise ExpressionError(f"{text}: None can only be compared with == or !=")
        return
    for name, kind, other, value in ((lname, lkind, rname, rval), (rname, rkind, lname, lval)):
        if name in _PARSERS and other is None and isinstance(value, str):
            try:
                _PARSERS[name](value)
            except ValueError:
                raise ExpressionError(f"{text}: cannot read {value!r} as {_KIND_TEXT[kind]} "
                                      f"({_FORMATS[name]})") from None
            return
    if lkind != rkind or lkind == "list":
        raise ExpressionError(f"{text}: cannot compare {_KIND_TEXT[lkind]} with "
                              f"{_KIND_TEXT[rkind]}")
    if ordering and lkind == "bool":
        raise ExpressionError(f"{text}: true/false can only be compared with == or !=")


def _check_types(node: ast.Compare) -> None:
    left = node.left
    for op, right in zip(node.ops, node.comparators, strict=True):
        _check_pair(left, op, right)
        left = right


class Selector:
    """A compiled dataselect expression; call it with a FrameInfo to get a bool."""

    def __init__(self, text: str, tree: ast.Expression, strict: bool):
        self.text = text
        self._tree = tree
        self.strict = strict

    def __repr__(self) -> str:
        return f"Selector({self.text!r}, strict={self.strict})"

    def __call__(self, info: Any) -> bool:
        """Return True if the frame described by ``info`` matches.

        A descriptor the frame has no value for (or a malformed one) makes its comparison
        false, never an error.
        """
        return bool(self._eval(self._tree.body, info))

    # --- evaluation ----------------------------------------------------------------------
    def _eval(self, node: ast.AST, info: Any) -> Any:
        if isinstance(node, ast.BoolOp):
            if isinstance(node.op, ast.And):
                return all(self._eval(v, info) for v in node.values)
            return any(self._eval(v, info) for v in node.values)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return not self._eval(node.operand, info)
        if isinstance(node, ast.Compare):
            left = node.left
            for op, right in zip(node.ops, node.comparators, strict=True):
                if not self._compare(left, type(op), right, info):
                    return False
                left = right
            return True
        return self._value(node, info)[1]

    def _value(self, node: ast.AST, info: Any) -> tuple[str | None, Any]:
        """Return (descriptor name or None, value) of an operand."""
        if isinstance(node, ast.Name):
            if node.id in _CONSTANTS:
                return None, _CONSTANTS[node.id]
            return node.id, self._descriptor(node.id, info)
        return None, _operand(node)[2]

    def _descriptor(self, name: str, info: Any) -> Any:
        method = getattr(info, name)
        try:
            if name in _PRETTY and not self.strict:
                return method(pretty=True)
            return method()
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError):
            return None

    def _compare(self, left: ast.AST, op: type, right: ast.AST, info: Any) -> bool:
        lname, lval = self._value(left, info)
        rname, rval = self._value(right, info)
        if lval is None or rval is None:  # no value: no match (DRAGONS)
            return False
        name = None if lname and rname else (lname or rname)
        if name in _PARSERS:  # literals were checked at compile time
            if isinstance(rval, str) and rname is None:
                rval = _PARSERS[name](rval)
            if isinstance(lval, str) and lname is None:
                lval = _PARSERS[name](lval)
        if name in _CLOSE and not self.strict and op in (ast.Eq, ast.NotEq):
            try:
                close = math.isclose(float(lval), float(rval), rel_tol=_CLOSE[name])
            except (TypeError, ValueError, OverflowError):
                return False
            return close if op is ast.Eq else not close
        try:
            return bool(_OPS[op](lval, rval))
        except TypeError:  # a malformed header value: no match
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
        One line for anything the language cannot handle: a syntax error, a construct
        outside the whitelist, an expression longer than :data:`MAX_LENGTH` or nested
        deeper than :data:`MAX_DEPTH`, a bad date or time literal, a comparison of
        incompatible types.  Nothing is ever executed.
    """
    text = (text or "True").strip() or "True"
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression too long ({len(text)} characters; at most "
                              f"{MAX_LENGTH})")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"cannot parse expression {_short(text)}: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise ExpressionError(f"expression nested too deeply to parse ({_short(text)})") \
            from None
    except ValueError as exc:  # NUL bytes, integer literals too long to convert
        raise ExpressionError(f"cannot parse expression {_short(text)}: {exc}") from None
    try:
        _check(tree)
    except RecursionError:
        raise ExpressionError(f"expression nested more than {MAX_DEPTH} levels deep") \
            from None
    return Selector(text, tree, strict)


def _short(text: str, limit: int = 80) -> str:
    """The expression for an error line: repr'd (no raw newlines), cut to ``limit``."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."
