"""`data.filter`: keep only the rows of a log that pass conditions on their own fields.

A small expression language, parsed with Python's `ast` and interpreted here node by node (never
`eval`): a condition is a comparison (`==`, `!=`, `<`, `<=`, `>`, `>=`, `in`, `not in`, chained),
`and` / `or` / `not`, a field name (`rating`; nested objects with dots: `feedback.rating`),
a string, number, `true` / `false` / `null`, and the functions `len(x)` and `lower(x)`. Nothing
else parses: no attribute of a Python object is ever looked up, nothing is called but those two.

    data:
      filter: ["rating >= 4", "latency_ms < 5000", "len(answer) > 50", "not edited"]

Semantics made for logs, where CSV gives every value as text and fields go missing:
- a number compared with text compares with the text read as a number ("4" >= 4 is true);
  booleans likewise ("false", "no", "0" are false; "true", "yes", "1" are true);
- a missing or null field is null: any order comparison with null is false (so the row is
  dropped), `== null` / `!= null` test for it, `not null` is true, `len(null)` is 0;
- besides the row's own fields, `prompt` (the user's text) and `reply` (the last assistant turn)
  are there for any row format, unless the row has fields of those names.

A string holding `a and b` is split into its conditions, each counted on its own: each removed row
is counted against the first condition it fails (`edgeft data check` prints the funnel).
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgeft.core.errors import ConfigError, shown

FUNCTIONS = ("len", "lower")
CONSTANTS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
PSEUDO_FIELDS = ("prompt", "reply")
_TRUE = {"true", "yes", "y", "1"}
_FALSE = {"false", "no", "n", "0", ""}
_ORDER = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}
# A condition is a line or two; these bound what a hostile one can make the parser and the checks
# do (900 `not`s, 10,000 `-`s and a 20,000-part field name all ran out of stack, a 5,000-digit
# number out of int-to-text digits).
MAX_CHARS = 4000
MAX_DEPTH = 32  # nested operators, calls and dotted-name parts
MAX_NUMBER = 2**63  # a number beyond any field value a log holds


class _Missing(Exception):
    """A comparison that cannot hold (null, or values of kinds that do not compare)."""


@dataclass(frozen=True)
class Condition:
    text: str
    node: ast.expr
    fields: tuple[str, ...]  # the field names it reads (for "missing in N rows")


@dataclass
class FilterCounts:
    """What one file's rows did under the filter."""

    conditions: list[str]
    rows: int = 0
    kept: int = 0
    removed: list[int] = field(default_factory=list)  # per condition: rows it was the first to fail
    missing: dict[str, int] = field(default_factory=dict)  # field → rows where it was absent or null

    def __post_init__(self) -> None:
        self.removed = self.removed or [0] * len(self.conditions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "kept": self.kept,
            "dropped": self.rows - self.kept,
            "removed_by": [
                {"condition": c, "rows": n} for c, n in zip(self.conditions, self.removed, strict=True)
            ],
            "missing_fields": dict(sorted(self.missing.items())),
        }


def _field_name(node: ast.expr) -> str | None:
    """`a` or `a.b.c` as a dotted field name; None for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _field_name(node.value)
        return f"{head}.{node.attr}" if head else None
    return None


def _check(node: ast.expr, text: str, key: str, names: list[str]) -> None:
    """Refuse any syntax outside the language (before a row is ever seen)."""

    def bad(what: str) -> ConfigError:
        return ConfigError(
            f"{key}: {shown(text)}: {what} is not part of a filter; use comparisons (== != < <= > >= "
            f"in), and/or/not, field names, strings, numbers, true/false/null, len() and lower()"
        )

    if isinstance(node, ast.BoolOp):
        for v in node.values:
            _check(v, text, key, names)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.Not, ast.USub)):
            raise bad(f"the operator {type(node.op).__name__}")
        _check(node.operand, text, key, names)
    elif isinstance(node, ast.Compare):
        for part in (node.left, *node.comparators):
            _check(part, text, key, names)
        for op in node.ops:
            if not isinstance(op, (*_ORDER, ast.Eq, ast.NotEq, ast.In, ast.NotIn)):
                raise bad(f"the comparison {type(op).__name__}")
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            raise bad(f"calling {ast.unparse(node.func)!r}")
        if len(node.args) != 1 or node.keywords:
            raise ConfigError(f"{key}: {shown(text)}: {node.func.id}() takes one argument")
        _check(node.args[0], text, key, names)
    elif isinstance(node, ast.Constant):
        if not isinstance(node.value, (str, int, float, bool)) and node.value is not None:
            raise bad(f"the constant {shown(node.value)}")
        if isinstance(node.value, int) and not isinstance(node.value, bool) and abs(node.value) >= MAX_NUMBER:
            raise bad(f"a number of {node.value.bit_length()} bits")
    elif isinstance(node, (ast.Name, ast.Attribute)):
        name = _field_name(node)
        if name is None:
            raise bad(f"{ast.unparse(node)!r}")
        if name not in CONSTANTS:
            names.append(name)
    elif isinstance(node, (ast.List, ast.Tuple)):  # x in ["a", "b"]
        for v in node.elts:
            _check(v, text, key, names)
    else:
        raise bad(f"{ast.unparse(node)!r}")


def compile_filter(spec: str | list[str] | None, key: str = "data.filter") -> list[Condition]:
    """The conditions of `data.filter` (a string or a list of strings), checked; [] for none."""
    if spec is None:
        return []
    items = [spec] if isinstance(spec, str) else spec
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise ConfigError(f"{key}: expected a condition or a list of conditions (strings)")
    out: list[Condition] = []
    for i, text in enumerate(items):
        where = key if isinstance(spec, str) else f"{key}[{i}]"
        if len(text) > MAX_CHARS:
            raise ConfigError(
                f"{where}: a condition of {len(text):,} characters (at most {MAX_CHARS:,}); write "
                f'shorter conditions, e.g. "rating >= 4 and not edited"'
            )
        try:
            tree = ast.parse(text.strip(), mode="eval").body
        except SyntaxError as e:
            raise ConfigError(
                f"{where}: {shown(text)} is not a condition ({e.msg}); write e.g. "
                f'"rating >= 4 and not edited"'
            ) from None
        except (RecursionError, MemoryError):
            raise ConfigError(
                f"{where}: {shown(text)} is nested too deeply to be a condition (at most {MAX_DEPTH} levels)"
            ) from None
        if _depth(tree) > MAX_DEPTH:
            raise ConfigError(
                f"{where}: {shown(text)} is nested more than {MAX_DEPTH} levels deep (operators, "
                f"calls, parts of a field name): split it into conditions of its own"
            )
        # Top-level `and` parts are counted as conditions of their own.
        parts = tree.values if isinstance(tree, ast.BoolOp) and isinstance(tree.op, ast.And) else [tree]
        for part in parts:
            names: list[str] = []
            _check(part, text, where, names)
            out.append(Condition(ast.unparse(part), part, tuple(dict.fromkeys(names))))
    return out


def _depth(tree: ast.AST) -> int:
    """How deeply `tree` nests (without recursion: a hostile tree is deeper than Python's stack)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_DEPTH:  # deeper is refused anyway
            stack.extend(
                (child, depth + 1)
                for child in ast.iter_child_nodes(node)
                if not isinstance(child, (ast.expr_context, ast.cmpop, ast.boolop, ast.unaryop))
            )
    return deepest


def lookup(row: dict[str, Any], name: str, extra: Callable[[str], Any] | None = None) -> Any:
    """A row's field by (dotted) name; None when absent. `extra` gives the pseudo-fields."""
    head, *rest = name.split(".")
    value: Any = row[head] if head in row else (extra(head) if extra and head in PSEUDO_FIELDS else None)
    for part in rest:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise _Missing from None
    return value


def _truth(value: Any) -> bool:
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    return bool(value)


def _same_kind(a: Any, b: Any) -> tuple[Any, Any]:
    """Text read as the number or boolean it is compared with (CSV cells are text)."""
    if isinstance(a, bool) != isinstance(b, bool):
        if isinstance(a, bool) and isinstance(b, str):
            return a, _truth(b)
        if isinstance(b, bool) and isinstance(a, str):
            return _truth(a), b
    numeric = (int, float)
    if isinstance(a, numeric) and isinstance(b, str):
        return a, _number(b)
    if isinstance(b, numeric) and isinstance(a, str):
        return _number(a), b
    return a, b


class _Eval:
    def __init__(self, row: dict[str, Any], extra: Callable[[str], Any]):
        self.row, self.extra = row, extra

    def value(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.Name, ast.Attribute)):
            name = _field_name(node)
            assert name is not None
            return CONSTANTS[name] if name in CONSTANTS else lookup(self.row, name, self.extra)
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self.value(v) for v in node.elts]
        if isinstance(node, ast.Call) and isinstance(
            node.func, ast.Name
        ):  # len() or lower(): _check saw to it
            arg = self.value(node.args[0])
            if node.func.id == "len":
                return 0 if arg is None else len(arg) if isinstance(arg, (str, list, dict)) else len(str(arg))
            return arg.lower() if isinstance(arg, str) else arg
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -_number(self.value(node.operand))
        return self.truth(node)

    def truth(self, node: ast.expr) -> bool:
        if isinstance(node, ast.BoolOp):
            parts = (self.truth(v) for v in node.values)
            return all(parts) if isinstance(node.op, ast.And) else any(parts)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return not self.truth(node.operand)
        if isinstance(node, ast.Compare):
            left = self.value(node.left)
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                right = self.value(right_node)
                if not self.compare(op, left, right):
                    return False
                left = right
            return True
        return _truth(self.value(node))

    @staticmethod
    def compare(op: ast.cmpop, a: Any, b: Any) -> bool:
        if isinstance(op, (ast.Eq, ast.NotEq)):
            try:
                a, b = _same_kind(a, b)
            except _Missing:
                return isinstance(op, ast.NotEq)
            return (a == b) == isinstance(op, ast.Eq)
        if isinstance(op, (ast.In, ast.NotIn)):
            if b is None or a is None:
                return False
            try:
                inside = a in b if isinstance(b, (str, list, dict)) else False
            except TypeError:  # a number in a string
                inside = str(a) in b
            return inside == isinstance(op, ast.In)
        if a is None or b is None:
            return False
        try:
            a, b = _same_kind(a, b)
            return bool(_ORDER[type(op)](a, b))
        except (_Missing, TypeError):
            return False


def first_failed(conditions: list[Condition], row: dict[str, Any], extra: Callable[[str], Any]) -> int | None:
    """The index of the first condition the row fails, or None when it passes them all."""
    ev = _Eval(row, extra)
    for i, c in enumerate(conditions):
        try:
            passed = ev.truth(c.node)
        except (_Missing, TypeError):  # e.g. -x of a missing x: a condition that cannot hold
            passed = False
        if not passed:
            return i
    return None


def missing_fields(
    conditions: list[Condition], row: dict[str, Any], extra: Callable[[str], Any]
) -> list[str]:
    """The fields the conditions read that this row lacks (absent or null)."""
    names = dict.fromkeys(n for c in conditions for n in c.fields)
    return [n for n in names if lookup(row, n, extra) is None]
