"""Test helper: a copy of a test whose expected output is changed, so that a correct program must fail it."""

from __future__ import annotations

import ast
import dataclasses
from typing import Any

from eval.problems import Problem, Test


def perturb_value(v: Any) -> Any:
    """A value different from `v` under ==, beyond any float tolerance and whitespace-insensitive comparison."""
    if isinstance(v, bool):
        return not v
    if isinstance(v, int | float | complex):
        return v + 1 + abs(v)
    if isinstance(v, str):
        return v + "~"
    if isinstance(v, list | tuple):
        return type(v)([*v[:-1], perturb_value(v[-1])]) if v else type(v)([0])
    if isinstance(v, set | frozenset):
        return type(v)(v | {"~perturbed~"})
    if isinstance(v, dict):
        return {**v, "~perturbed~": 0}
    return 0  # None and anything else


_WRAPPERS = {"set", "frozenset", "tuple", "list", "sorted"}


def _literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, SyntaxError, TypeError):
        return False


def _perturbed_expr(node: ast.expr) -> ast.expr | None:
    """`node` with its expected value changed: a literal, or a literal wrapped in one call like set((4, 5))."""
    if _literal(node):
        return ast.parse(repr(perturb_value(ast.literal_eval(node))), mode="eval").body
    # Only value-preserving wrappers: sys.getsizeof((1, 2)) == sys.getsizeof((1, 3)), for one.
    wrapper = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _WRAPPERS
    if wrapper and len(node.args) == 1 and not node.keywords and _literal(node.args[0]):
        return ast.Call(node.func, [_perturbed_expr(node.args[0])], [])
    return None


def perturb_assert(code: str) -> str:
    """`assert f(x) == y` with y changed; other asserts are negated (`assert not (...)`)."""
    (stmt,) = ast.parse(code).body
    test = stmt.test
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
        right = _perturbed_expr(test.comparators[0])
        if right is not None:
            stmt.test = ast.Compare(test.left, test.ops, [right])
            return ast.unparse(ast.fix_missing_locations(stmt))
    stmt.test = ast.UnaryOp(ast.Not(), test)
    return ast.unparse(ast.fix_missing_locations(stmt))


def perturb_test(test: Test) -> Test | None:
    """The test with its expected output changed; None for a whole-check test (several statements)."""
    if test.type == "call":
        return dataclasses.replace(test, expected=perturb_value(test.expected))
    if test.type == "stdio":
        return dataclasses.replace(test, output=test.output.rstrip() + "~\n")
    if len(ast.parse(test.code).body) != 1:
        return None
    return dataclasses.replace(test, code=perturb_assert(test.code))


def perturb_problem(problem: Problem) -> Problem | None:
    """`problem` with its first perturbable test's expected output changed (None when no test can be)."""
    for i, test in enumerate(problem.tests):
        changed = perturb_test(test)
        if changed is not None:
            tests = (*problem.tests[:i], changed, *problem.tests[i + 1 :])
            return dataclasses.replace(problem, tests=tests)
    return None
