"""Parent-side judging: turn tests into child runs, and compare what the child produced with what was expected.

An assert such as `assert f([1, 2]) == (3, 4)` becomes a *probe* (call `f` with the literal arguments in the child,
bring back the return value as plain data) plus an expression the parent evaluates on that data with a tiny
interpreter: literals, arithmetic, comparisons, `not`/`and`/`or`, and a whitelist of pure built-ins (`abs`,
`round`, `set`, `sorted`, `len`, `math.isclose`, ...). The expected value never reaches the child, and the
comparison runs on trusted data, so an object with an always-True `__eq__` has nothing to act on. Asserts this
interpreter cannot handle (loops, helper names from the setup code, ...) return None from `parse_assert` and are
run inside the child instead (weaker; see eval/sandbox.py).

Equality keeps Python's semantics (`1 == 1.0`, `(1, 2) != [1, 2]`, `{1} == frozenset({1})`) except that floats
compare within the problem's tolerance. Values from JSON "call" tests compare in JSON's terms (tuple == list).
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from typing import Any, Callable

from eval._codec import Iterated, NdArray, Opaque

_SAFE_FUNCS: dict[str, Callable] = {
    "abs": abs, "round": round, "set": set, "frozenset": frozenset, "sorted": sorted, "list": list,
    "tuple": tuple, "len": len, "sum": sum, "min": min, "max": max, "int": int, "float": float, "bool": bool,
    "str": str, "all": all, "any": any, "dict": dict,
}
_SAFE_MATH = {"isclose": math.isclose, "fabs": math.fabs, "sqrt": math.sqrt, "floor": math.floor,
              "ceil": math.ceil, "inf": math.inf, "nan": math.nan, "pi": math.pi, "e": math.e}
_MAX_SIZE = 10_000_000  # refuse to build strings or lists larger than this in the parent
_MAX_INT_BITS = 1 << 20  # ints the parent computes with (7**20000 is 56k bits; squaring 1M bits takes ~10 ms)
_MAX_ITEMS = 1_000_000  # containers the parent sorts, hashes or sums


class Unsupported(Exception):
    """The assert uses something the parent-side interpreter does not evaluate."""


class TooLarge(ValueError):
    """A value (possibly the program's) too large for the parent to compute with in bounded time: refused
    before the work, so a returned 30 MB integer cannot stall a judging thread."""


@dataclasses.dataclass(frozen=True)
class Probe:
    """One call the child makes: `fn_name(*args, **kwargs)` with literal arguments."""

    fn_name: str
    args: tuple
    kwargs: tuple  # ((name, value), ...)


@dataclasses.dataclass(frozen=True)
class Check:
    """A parsed assert: probes to run in the child, and a parent-side predicate on their decoded results."""

    probes: tuple[Probe, ...]
    nodes: tuple[ast.Call, ...]  # where each probe sits in `expr`
    expr: ast.expr
    text: str

    def holds(self, actuals: list[Any], tol: float) -> bool:
        return bool(_Eval({id(n): v for n, v in zip(self.nodes, actuals)}, tol).eval(self.expr))


# ---------------------------------------------------------------- parsing asserts


def parse_assert(code: str, entry_point: str | None = None) -> list[Check] | None:
    """All statements of `code` as parent-judged checks, or None if any of them cannot be."""
    try:
        body = ast.parse(code).body
    except SyntaxError:
        return None
    body, alias = _unwrap_check_function(body)
    checks = []
    for stmt in body:
        if _is_noise(stmt):
            continue
        if not isinstance(stmt, ast.Assert):
            return None
        try:
            check = _parse_test(stmt.test, alias, entry_point, code)
        except Exception:  # noqa: BLE001 - Unsupported, or e.g. `f(1 // 0)`: the child runs it, meets the error
            return None
        if check is not None:
            checks.append(check)
    return checks or None


def _unwrap_check_function(body: list[ast.stmt]) -> tuple[list[ast.stmt], dict[str, str]]:
    """HumanEval's `def check(candidate): <asserts>` + `check(entry)`: the asserts, with candidate -> entry."""
    defs = [s for s in body if isinstance(s, ast.FunctionDef)]
    last = body[-1] if body else None
    if len(defs) != 1 or not (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)):
        return body, {}
    fn, call = defs[0], last.value
    if not (isinstance(call.func, ast.Name) and call.func.id == fn.name and len(call.args) == 1
            and isinstance(call.args[0], ast.Name) and len(fn.args.args) == 1 and not call.keywords):
        return body, {}
    others = [s for s in body if s is not fn and s is not last]
    if not all(_is_noise(s) for s in others):
        return body, {}
    return fn.body, {fn.args.args[0].arg: call.args[0].id}


def _is_noise(stmt: ast.stmt) -> bool:
    """Statements that do not test anything: docstrings, imports, `METADATA = {...}`, `assert True`."""
    if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.Pass)):
        return True
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
        return True
    if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) and t.id == "METADATA" for t in stmt.targets):
        return True
    return isinstance(stmt, ast.Assert) and isinstance(stmt.test, ast.Constant) and stmt.test.value is True


def _parse_test(test: ast.expr, alias: dict[str, str], entry_point: str | None, code: str) -> Check | None:
    found: list[tuple[ast.Call, Probe]] = []
    _find_probes(ast.Expr(value=test), alias, entry_point, found)
    if not found:
        raise Unsupported("no call of the program's function")
    _Eval({id(n): None for n, _ in found}, 0.0, dry=True).eval(test)
    nodes, probes = zip(*found)
    return Check(probes, nodes, test, ast.get_source_segment(code, test) or ast.unparse(test))


def _find_probes(node: ast.AST, alias: dict[str, str], entry_point: str | None, out: list) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Call) and _is_program_call(child, alias, entry_point):
            name = alias.get(child.func.id, child.func.id)
            if any(isinstance(a, ast.Starred) for a in child.args) or any(k.arg is None for k in child.keywords):
                raise Unsupported("starred arguments")
            args = tuple(literal(a) for a in child.args)
            kwargs = tuple((k.arg, literal(k.value)) for k in child.keywords)
            out.append((child, Probe(name, args, kwargs)))
        else:
            _find_probes(child, alias, entry_point, out)


def _is_program_call(node: ast.Call, alias: dict[str, str], entry_point: str | None) -> bool:
    if not isinstance(node.func, ast.Name):
        return False
    name = alias.get(node.func.id, node.func.id)
    return name == entry_point or node.func.id in alias or name not in _SAFE_FUNCS


def literal(node: ast.expr) -> Any:
    """A probe-free expression's value, evaluated by the parent-side interpreter (literals and safe calls)."""
    return _Eval({}, 0.0).eval(node)


# ---------------------------------------------------------------- the parent-side interpreter


class _Eval:
    """Evaluates a whitelisted expression; probe nodes take the values the child returned."""

    def __init__(self, actuals: dict[int, Any], tol: float, dry: bool = False):
        self.actuals, self.tol, self.dry = actuals, tol, dry

    def eval(self, node: ast.expr) -> Any:
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            raise Unsupported(type(node).__name__)
        try:
            return method(node)
        except Unsupported:
            raise
        except Exception:  # noqa: BLE001 - e.g. len() of an int the program returned: the check fails
            if self.dry:
                return None
            raise

    def _Constant(self, n):
        return n.value

    def _Tuple(self, n):
        return tuple(self.eval(e) for e in n.elts)

    def _List(self, n):
        return [self.eval(e) for e in n.elts]

    def _Set(self, n):
        return None if self.dry else {self.eval(e) for e in n.elts}

    def _Dict(self, n):
        if any(k is None for k in n.keys):
            raise Unsupported("dict unpacking")
        return {} if self.dry else {self.eval(k): self.eval(v) for k, v in zip(n.keys, n.values)}

    def _UnaryOp(self, n):
        ops = {ast.Not: lambda v: not v, ast.USub: lambda v: -v, ast.UAdd: lambda v: +v, ast.Invert: lambda v: ~v}
        v = self.eval(n.operand)
        return None if self.dry else ops[type(n.op)](v)

    def _BinOp(self, n):
        ops = {ast.Add: _add, ast.Sub: lambda a, b: a - b, ast.Mult: _mul, ast.Div: lambda a, b: a / b,
               ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b, ast.Pow: _pow}
        if type(n.op) not in ops:
            raise Unsupported(type(n.op).__name__)
        a, b = self.eval(n.left), self.eval(n.right)
        if self.dry:
            return None
        _check_operands(type(n.op), a, b)
        return ops[type(n.op)](a, b)

    def _BoolOp(self, n):
        values = [self.eval(v) for v in n.values]  # no short-circuit: every probe runs anyway
        return None if self.dry else (all(values) if isinstance(n.op, ast.And) else any(values))

    def _Compare(self, n):
        values = [self.eval(n.left)] + [self.eval(c) for c in n.comparators]
        if self.dry:
            return None
        return all(self._compare(op, a, b) for op, a, b in zip(n.ops, values, values[1:]))

    def _compare(self, op: ast.cmpop, a: Any, b: Any) -> bool:
        tol = self.tol
        table = {
            ast.Eq: lambda: values_equal(a, b, tol), ast.NotEq: lambda: not values_equal(a, b, tol),
            ast.Lt: lambda: a < b, ast.LtE: lambda: a <= b, ast.Gt: lambda: a > b, ast.GtE: lambda: a >= b,
            ast.Is: lambda: a is b, ast.IsNot: lambda: a is not b,
            ast.In: lambda: any(values_equal(a, x, tol) for x in b) if not isinstance(b, str) else a in b,
            ast.NotIn: lambda: not (any(values_equal(a, x, tol) for x in b) if not isinstance(b, str) else a in b),
        }
        return table[type(op)]()

    def _Call(self, n):
        if id(n) in self.actuals:
            return self.actuals[id(n)]
        fn = self._function(n.func)
        args = [self.eval(a) for a in n.args]
        kwargs = {k.arg: self.eval(k.value) for k in n.keywords}
        if any(k is None for k in kwargs) or any(isinstance(a, ast.Starred) for a in n.args):
            raise Unsupported("starred arguments")
        if self.dry:
            return None
        if fn not in (len, bool, abs):  # constant or linear work whatever the size
            for value in (*args, *kwargs.values()):
                _check_size(value)
        if fn is round and len(args) == 2 and isinstance(args[1], int) and abs(args[1]) > 10_000:
            raise TooLarge("round() to more than 10000 digits")  # round(n, -k) computes 10**k
        return fn(*args, **kwargs)

    def _function(self, func: ast.expr) -> Callable:
        if isinstance(func, ast.Name) and func.id in _SAFE_FUNCS:
            return _SAFE_FUNCS[func.id]
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "math":
            if callable(_SAFE_MATH.get(func.attr)):
                return _SAFE_MATH[func.attr]
        raise Unsupported("call of a function outside the whitelist")

    def _Attribute(self, n):
        if isinstance(n.value, ast.Name) and n.value.id == "math" and n.attr in _SAFE_MATH:
            return _SAFE_MATH[n.attr]
        raise Unsupported("attribute")

    def _Subscript(self, n):
        value, index = self.eval(n.value), self.eval(n.slice)
        return None if self.dry else value[index]

    def _Slice(self, n):
        parts = [None if p is None else self.eval(p) for p in (n.lower, n.upper, n.step)]
        return slice(*parts)


def _check_size(value: Any) -> None:
    """Refuse an operand that is too big to work with: O(1), checked before any operation."""
    if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
        raise TooLarge(f"an int of {value.bit_length()} bits")
    if isinstance(value, (str, bytes)) and len(value) > _MAX_SIZE:
        raise TooLarge(f"a {type(value).__name__} of {len(value)} items")
    if isinstance(value, (list, tuple, set, frozenset, dict)) and len(value) > _MAX_ITEMS:
        raise TooLarge(f"a {type(value).__name__} of {len(value)} items")


def _check_operands(op: type, a: Any, b: Any) -> None:
    """Sizes before arithmetic: each operand, and the result's size (or the work) for the operations that grow
    faster than their inputs."""
    _check_size(a)
    _check_size(b)
    if not (isinstance(a, int) and isinstance(b, int)):
        return
    bits_a, bits_b = a.bit_length(), b.bit_length()
    if op is ast.Mult and bits_a + bits_b > _MAX_INT_BITS:
        raise TooLarge(f"a product of {bits_a + bits_b} bits")
    if op is ast.Pow and b > 0 and bits_a > 1 and (bits_a - 1) * b > _MAX_INT_BITS:
        raise TooLarge(f"a power of more than {_MAX_INT_BITS} bits")
    if op in (ast.Div, ast.FloorDiv, ast.Mod) and bits_a * bits_b > 1 << 34:  # schoolbook division: their product
        raise TooLarge(f"a division of {bits_a}-bit by {bits_b}-bit ints")


def _add(a, b):
    if isinstance(a, (str, list, tuple, bytes)) and len(a) + len(b) > _MAX_SIZE:
        raise ValueError("too large")
    return a + b


def _mul(a, b):
    for seq, k in ((a, b), (b, a)):
        if isinstance(seq, (str, list, tuple, bytes)) and isinstance(k, int) and len(seq) * k > _MAX_SIZE:
            raise ValueError("too large")
    return a * b


def _pow(a, b):
    if isinstance(a, int) and isinstance(b, int) and abs(b) > 10_000:
        raise ValueError("exponent too large")
    return a**b


# ---------------------------------------------------------------- equality


def values_equal(actual: Any, expected: Any, tol: float, json_mode: bool = False) -> bool:
    """Python equality on plain data, floats within `tol`; json_mode also equates tuples with lists."""
    if isinstance(actual, (Iterated, NdArray, Opaque)) or isinstance(expected, (Iterated, NdArray, Opaque)):
        return False  # a lazy iterator, an array or an unknown object equals no literal
    if _is_float_pair(actual, expected):
        return actual == expected or math.isclose(actual, expected, rel_tol=tol, abs_tol=tol)
    seq = (list, tuple)
    if isinstance(actual, seq) and isinstance(expected, seq):
        if not json_mode and type(actual) is not type(expected):
            return False
        return len(actual) == len(expected) and all(
            values_equal(a, e, tol, json_mode) for a, e in zip(actual, expected))
    if isinstance(actual, dict) and isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(
            values_equal(actual[k], expected[k], tol, json_mode) for k in actual)
    try:
        return bool(actual == expected)
    except Exception:  # noqa: BLE001
        return False


def _is_float_pair(a: Any, b: Any) -> bool:
    number = (int, float)
    return isinstance(a, number) and isinstance(b, number) and (isinstance(a, float) or isinstance(b, float))


def to_json_value(x: Any) -> Any:
    """Tuples to lists, recursively: how a JSON "call" test's expected value was written."""
    if isinstance(x, (list, tuple)) and not isinstance(x, (Iterated, NdArray)):
        return [to_json_value(v) for v in x]
    if isinstance(x, dict):
        return {k: to_json_value(v) for k, v in x.items()}
    return x


# ---------------------------------------------------------------- stdio output


_INT = re.compile(r"[+-]?\d+\Z")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\Z")


def outputs_match(actual: str, expected: str, tol: float) -> bool:
    """Token-wise, whitespace-insensitive; integers exact, other numbers within `tol`, the rest as strings."""
    got, want = actual.split(), expected.split()
    return len(got) == len(want) and all(_tokens_match(g, w, tol) for g, w in zip(got, want))


def _tokens_match(got: str, want: str, tol: float) -> bool:
    if got == want:
        return True
    if _INT.match(want) or not (_FLOAT.match(want) and _FLOAT.match(got)):
        return False
    return math.isclose(float(got), float(want), rel_tol=tol, abs_tol=tol)
