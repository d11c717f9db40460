"""The embedded default's problems: small seeded algorithmic tasks, sized for a ~1M-parameter model on a CPU.

A task is a tuple of *ops* `(kind, arg)` in one of five families: `list` (map/filter steps, then an aggregate),
`text` (string transforms, then a result), `count` (count numbers meeting conditions), `search` (first/last index,
or whether any number meets conditions) and `dp` (ways to climb stairs, a linear recurrence). From the ops come a
short statement, a numbered plan whose steps the reference code follows in order (one line per step in `list`
and `text`, a line or a loop per step elsewhere), the code itself (entry point `solve`), and "call" tests in the
SPEC's generic jsonl format (`algoforge score --benchmark jsonl` judges them). Everything is templated and regular
on purpose, so that a tiny model trained from scratch can learn the mapping in minutes.

Held-out problems generalise, not just re-seed: a task's *signature* is the kinds of its ops when it has three or
more (an unseen composition of seen operations), else its ops with their constants (an unseen operation/constant
pairing); a stable hash of the signature puts it in `train` or `heldout`, so no signature is in both. Difficulty
(1-3) counts the composed operations (steps, conditions; 2-3 for dp), so pass rates can be reported per level.

Tests: edge inputs (the empty list or string, n = 0) plus random ones, then for every single-op mutant of the
reference that differs on some random input, an input that tells them apart, so wrong programs are caught.
Generating the default 2,200 problems takes ~8 s of CPU.

Deliberately left out: natural-language variety beyond a few synonyms per phrase, and problems needing imports.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from algoforge_jax.errors import UserError
from algoforge_jax.jsonl import jsonl_text
from eval.benchmarks import load_benchmark
from eval.problems import Problem, Test
from eval.records import read_records
from eval.score import write_atomic

ENTRY_POINT = "solve"
SPLITS = ("train", "heldout")
EVAL_BENCHMARKS = {f"synthetic-{split}": split for split in SPLITS}  # `algoforge eval --benchmark` names
HELDOUT_SHARE = 0.2  # share of signatures held out
N_RANDOM_TESTS = 5
N_SEARCH = 60  # random inputs tried to separate a mutant from the reference
# How deep problems compose (the difficulty knobs): chain steps before the final op, conditions per problem.
MAX_STEPS = 3
MAX_COUNT_CONDS = 3
MAX_SEARCH_CONDS = 2

Op = tuple[str, Any]  # (kind, argument): argument is None, an int, a one-character string or a tuple of ints

# Conditions on an integer x: (phrase, Python expression), with {k} the op's constant.
CONDS = {
    "even": ("even", "x % 2 == 0"),
    "odd": ("odd", "x % 2 == 1"),
    "pos": ("positive", "x > 0"),
    "neg": ("negative", "x < 0"),
    "gt": ("greater than {k}", "x > {k}"),
    "lt": ("less than {k}", "x < {k}"),
    "div": ("divisible by {k}", "x % {k} == 0"),
}
COND_ARGS = {"gt": range(0, 10), "lt": range(0, 10), "div": range(3, 6)}

# Ops as (statement variants, plan step, code line), formatted with k (int) or c, d (characters).
LIST_MAPS = {
    "add": (("add {k} to each number", "increase every number by {k}"), "Add {k} to each element.",
            "xs = [x + {k} for x in xs]"),
    "sub": (("subtract {k} from each number", "decrease every number by {k}"), "Subtract {k} from each element.",
            "xs = [x - {k} for x in xs]"),
    "mul": (("multiply each number by {k}", "scale every number by {k}"), "Multiply each element by {k}.",
            "xs = [x * {k} for x in xs]"),
    "square": (("square each number", "replace every number by its square"), "Square each element.",
               "xs = [x * x for x in xs]"),
    "abs": (("take the absolute value of each number", "drop the sign of every number"),
            "Take the absolute value of each element.", "xs = [abs(x) for x in xs]"),
    "mod": (("replace each number by its remainder modulo {k}", "take every number modulo {k}"),
            "Replace each element x by x % {k}.", "xs = [x % {k} for x in xs]"),
}
MAP_ARGS = {"add": range(1, 10), "sub": range(1, 10), "mul": range(2, 6), "mod": range(2, 10)}
LIST_FILTERS = {
    f"keep_{kind}": ((f"keep only the numbers that are {phrase}", f"drop the numbers that are not {phrase}"),
                     f"Keep the elements x with {expr}.", f"xs = [x for x in xs if {expr}]")
    for kind, (phrase, expr) in CONDS.items()
}
LIST_AGGS = {
    "sum": (("return their sum", "return the sum of what remains"), "Return the sum.", "return sum(xs)"),
    "len": (("return how many numbers remain", "return the count of what remains"), "Return the length.",
            "return len(xs)"),
    "max": (("return the largest, or 0 if there is none", "return the maximum, or 0 if the list is empty"),
            "Return the maximum, or 0 if empty.", "return max(xs, default=0)"),
    "min": (("return the smallest, or 0 if there is none", "return the minimum, or 0 if the list is empty"),
            "Return the minimum, or 0 if empty.", "return min(xs, default=0)"),
    "list": (("return the resulting list", "return the list"), "Return the list.", "return xs"),
    "first": (("return the first number, or -1 if there is none", "return the first one, or -1 if none is left"),
              "Return the first element, or -1 if empty.", "return xs[0] if xs else -1"),
}
TEXT_STEPS = {
    "reverse": (("reverse it", "reverse the string"), "Reverse the string.", "s = s[::-1]"),
    "novowel": (("remove the vowels", "delete every vowel"), 'Keep the characters c not in "aeiou".',
                's = "".join(c for c in s if c not in "aeiou")'),
    "nospace": (("remove the spaces", "delete every space"), 'Replace " " with "".', 's = s.replace(" ", "")'),
    "nodigit": (("remove the digits", "delete every digit"), "Keep the characters c that are not digits.",
                's = "".join(c for c in s if not c.isdigit())'),
    "drop": (("remove every '{c}'", "delete each '{c}'"), 'Replace "{c}" with "".', 's = s.replace("{c}", "")'),
    "swap": (("replace every '{c}' with '{d}'", "change each '{c}' into '{d}'"), 'Replace "{c}" with "{d}".',
             's = s.replace("{c}", "{d}")'),
    "double": (("double every character", "repeat each character twice"), "Write each character twice.",
               's = "".join(c + c for c in s)'),
    "sort": (("sort its characters", "put its characters in order"), "Sort the characters.",
             's = "".join(sorted(s))'),
}
TEXT_FINALS = {
    "text": (("return the result", "return the new string"), "Return the string.", "return s"),
    "len": (("return its length", "return how long it is"), "Return the length.", "return len(s)"),
    "count": (("return how many times '{c}' occurs", "return the number of '{c}' characters"),
              'Return the count of "{c}".', 'return s.count("{c}")'),
}
LETTERS = "abcdexyz"
TEXT_ALPHABET = "aabcdeiouxyz  019"  # vowels, spaces and digits common enough for every op to matter


def _fmt(template: str, arg: Any) -> str:
    """A template filled with an op's argument: {k} an integer, {c} a character, {c} and {d} a pair of them."""
    if isinstance(arg, tuple) and len(arg) == 2 and all(isinstance(a, str) for a in arg):
        return template.format(c=arg[0], d=arg[1])
    return template.format(k=arg, c=arg)


def _cond_phrase(op: Op) -> str:
    return _fmt(CONDS[op[0]][0], op[1])


def _cond_expr(ops: tuple[Op, ...], conn: str = "and") -> str:
    return f" {conn} ".join(_fmt(CONDS[kind][1], arg) for kind, arg in ops)


def _cond(kind: str, rng: random.Random) -> Op:
    return (kind, rng.choice(COND_ARGS[kind]) if kind in COND_ARGS else None)


def random_op(family, role: str, rng: random.Random) -> Op:
    """An op of `role` in `family` (a family lists the op kinds of each role and draws an op's constant)."""
    return family.make_op(rng.choice(family.kinds(role)), rng)


def _random_ints(rng: random.Random) -> list[Any]:
    return [[rng.randint(-5, 15) for _ in range(rng.randint(1, 8))]]


def _def(arg: str, lines: list[str]) -> str:
    body = "".join(f"    {line}\n" for line in lines)
    return f"def {ENTRY_POINT}({arg}):\n{body}"


def _numbered(steps: list[str]) -> str:
    return "\n".join(f"{i}. {step}" for i, step in enumerate(steps, 1))


class ChainFamily:
    """0-3 steps that each rebind the argument, then a final expression: every op is one statement clause, one plan
    step and one code line. Subclasses give the tables and how an op's constant is drawn."""

    name: str
    arg: str  # the argument's name
    subject: str  # how the statement introduces it
    steps: dict[str, tuple]  # kind -> (statement variants, plan step, code line)
    finals: dict[str, tuple]

    def sample(self, rng: random.Random) -> tuple[Op, ...]:
        return tuple(random_op(self, "step", rng) for _ in range(rng.randint(0, MAX_STEPS))) + (
            random_op(self, "final", rng),)

    def kinds(self, role: str) -> tuple[str, ...]:
        return tuple(self.finals if role == "final" else self.steps)

    def role(self, ops: tuple[Op, ...], i: int) -> str:
        return "final" if i == len(ops) - 1 else "step"

    def render(self, ops: tuple[Op, ...], rng: random.Random) -> tuple[str, str, str]:
        tables = [self.steps] * (len(ops) - 1) + [self.finals]
        entries = [(table[kind], arg) for table, (kind, arg) in zip(tables, ops)]
        clauses = [_fmt(rng.choice(said), arg) for (said, _, _), arg in entries]
        said = ", ".join(clauses[:-1]) + ", then " + clauses[-1] if len(clauses) > 1 else clauses[-1]
        return (f"Given {self.subject}, {said}.", _numbered([_fmt(plan, arg) for (_, plan, _), arg in entries]),
                _def(self.arg, [_fmt(code, arg) for (_, _, code), arg in entries]))

    def difficulty(self, ops: tuple[Op, ...]) -> int:
        return max(1, len(ops) - 1)  # the steps; a bare final expression counts as one


class ListFamily(ChainFamily):
    """Map and filter steps over a list of integers, then one aggregate."""

    name, arg, subject = "list", "xs", "a list of integers xs"
    steps, finals = {**LIST_MAPS, **LIST_FILTERS}, LIST_AGGS

    def make_op(self, kind: str, rng: random.Random) -> Op:
        if kind in LIST_FILTERS:
            return (kind, _cond(kind.removeprefix("keep_"), rng)[1])
        return (kind, rng.choice(MAP_ARGS[kind]) if kind in MAP_ARGS else None)

    def edge_args(self) -> list[list[Any]]:
        return [[[]], [[0]], [[-3, 7]]]

    random_args = staticmethod(_random_ints)


class TextFamily(ChainFamily):
    """String transforms of s, then the string, its length or a character count."""

    name, arg, subject = "text", "s", "a string s"
    steps, finals = TEXT_STEPS, TEXT_FINALS

    def make_op(self, kind: str, rng: random.Random) -> Op:
        if kind in ("drop", "count"):
            return (kind, rng.choice(LETTERS))
        if kind == "swap":
            c, d = rng.sample(LETTERS, 2)
            return (kind, (c, d))
        return (kind, None)

    def edge_args(self) -> list[list[Any]]:
        return [[""], ["a"], ["ab 1"]]

    def random_args(self, rng: random.Random) -> list[Any]:
        return ["".join(rng.choice(TEXT_ALPHABET) for _ in range(rng.randint(1, 10)))]


class CountFamily:
    """Count the numbers of xs that meet one to three conditions joined by "and" or "or"."""

    name = "count"

    def sample(self, rng: random.Random) -> tuple[Op, ...]:
        conds = tuple(random_op(self, "cond", rng) for _ in range(rng.randint(1, MAX_COUNT_CONDS)))
        conn = random_op(self, "conn", rng) if len(conds) > 1 else ("and", None)  # one spelling per problem
        return (conn,) + conds

    def kinds(self, role: str) -> tuple[str, ...]:
        return ("and", "or") if role == "conn" else tuple(CONDS)

    def make_op(self, kind: str, rng: random.Random) -> Op:
        return _cond(kind, rng) if kind in CONDS else (kind, None)

    def role(self, ops: tuple[Op, ...], i: int) -> str:
        return "conn" if i == 0 else "cond"

    def render(self, ops: tuple[Op, ...], rng: random.Random) -> tuple[str, str, str]:
        conn, conds = ops[0][0], ops[1:]
        phrase = f" {conn} ".join(_cond_phrase(c) for c in conds)
        expr = _cond_expr(conds, conn)
        said = rng.choice((f"count the numbers that are {phrase}", f"return how many numbers are {phrase}"))
        plan = _numbered(["Set count to 0.", f"For each x in xs, if {expr}, add 1 to count.", "Return count."])
        code = _def("xs", ["count = 0", "for x in xs:", f"    if {expr}:", "        count += 1", "return count"])
        return f"Given a list of integers xs, {said}.", plan, code

    def difficulty(self, ops: tuple[Op, ...]) -> int:
        return len(ops) - 1  # the conditions

    edge_args = ListFamily.edge_args
    random_args = staticmethod(_random_ints)


SEARCH_MODES = {
    "first": ("return the index of the first number that is {phrase}, or -1 if there is none",
              ["For each index i and number x in xs, if {expr}, return i.", "Return -1."],
              ["for i, x in enumerate(xs):", "    if {expr}:", "        return i", "return -1"]),
    "last": ("return the index of the last number that is {phrase}, or -1 if there is none",
             ["Set found to -1.", "For each index i and number x in xs, if {expr}, set found to i.", "Return found."],
             ["found = -1", "for i, x in enumerate(xs):", "    if {expr}:", "        found = i", "return found"]),
    "any": ("return True if some number is {phrase}, else False",
            ["For each x in xs, if {expr}, return True.", "Return False."],
            ["for x in xs:", "    if {expr}:", "        return True", "return False"]),
}


class SearchFamily:
    """The first or last index of a number meeting conditions, or whether any number does."""

    name = "search"

    def sample(self, rng: random.Random) -> tuple[Op, ...]:
        mode = random_op(self, "mode", rng)
        return (mode, *(random_op(self, "cond", rng) for _ in range(rng.randint(1, MAX_SEARCH_CONDS))))

    def kinds(self, role: str) -> tuple[str, ...]:
        return tuple(SEARCH_MODES) if role == "mode" else tuple(CONDS)

    make_op = CountFamily.make_op

    def role(self, ops: tuple[Op, ...], i: int) -> str:
        return "mode" if i == 0 else "cond"

    def render(self, ops: tuple[Op, ...], rng: random.Random) -> tuple[str, str, str]:
        said, plan, code = SEARCH_MODES[ops[0][0]]
        phrase, expr = " and ".join(_cond_phrase(c) for c in ops[1:]), _cond_expr(ops[1:])
        return (f"Given a list of integers xs, {said.format(phrase=phrase)}.",
                _numbered([s.format(expr=expr) for s in plan]), _def("xs", [c.format(expr=expr) for c in code]))

    def difficulty(self, ops: tuple[Op, ...]) -> int:
        return len(ops) - 1 + (ops[0][0] != "first")  # the conditions, plus one for a flag or a running index

    edge_args = ListFamily.edge_args
    random_args = staticmethod(_random_ints)


class DPFamily:
    """Dynamic programming over n: ways to climb stairs with given moves, or a linear recurrence."""

    name = "dp"

    def sample(self, rng: random.Random) -> tuple[Op, ...]:
        return (random_op(self, "dp", rng),)

    def kinds(self, role: str) -> tuple[str, ...]:
        return ("stairs", "seq")

    def make_op(self, kind: str, rng: random.Random) -> Op:
        if kind == "stairs":
            return ("stairs", tuple(sorted(rng.sample(range(1, 6), rng.randint(2, 3)))))
        return ("seq", (rng.randint(0, 3), rng.randint(0, 3), rng.randint(1, 3), rng.randint(1, 3)))

    def role(self, ops: tuple[Op, ...], i: int) -> str:
        return "dp"

    def render(self, ops: tuple[Op, ...], rng: random.Random) -> tuple[str, str, str]:
        kind, arg = ops[0]
        return self._stairs(arg) if kind == "stairs" else self._seq(*arg)

    def _stairs(self, moves: tuple[int, ...]) -> tuple[str, str, str]:
        said = ", ".join(map(str, moves[:-1])) + f" or {moves[-1]}"
        plan = _numbered(["Set ways to n + 1 zeros, with ways[0] = 1.",
                          f"For i from 1 to n, for each move s in {moves} with s <= i, add ways[i - s] to ways[i].",
                          "Return ways[n]."])
        code = _def("n", ["ways = [1] + [0] * n", "for i in range(1, n + 1):", f"    for s in {moves}:",
                          "        if s <= i:", "            ways[i] += ways[i - s]", "return ways[n]"])
        return f"Given n, count the ways to climb n stairs when each move climbs {said} stairs.", plan, code

    def _seq(self, a: int, b: int, p: int, q: int) -> tuple[str, str, str]:
        said = (f"Given n, return term n (counting from 0) of the sequence that starts {a}, {b} and where each "
                f"later term is {p} times the previous term plus {q} times the term before it.")
        rule = f"{p} * seq[i - 1] + {q} * seq[i - 2]"
        plan = _numbered([f"Start seq = [{a}, {b}].", f"For i from 2 to n, append {rule}.", "Return seq[n]."])
        code = _def("n", [f"seq = [{a}, {b}]", "for i in range(2, n + 1):", f"    seq.append({rule})",
                          "return seq[n]"])
        return said, plan, code

    def difficulty(self, ops: tuple[Op, ...]) -> int:
        return 3 if ops[0][0] == "stairs" else 2

    def edge_args(self) -> list[list[Any]]:
        return [[0], [1], [2]]

    def random_args(self, rng: random.Random) -> list[Any]:
        return [rng.randint(3, 12)]


FAMILIES = {f.name: f for f in (ListFamily(), TextFamily(), CountFamily(), SearchFamily(), DPFamily())}

# A second teacher's habit: one-line sketches that name the kind of procedure and none of its constants,
# conditions or letters. They are correct descriptions (the reference code does what they say), but a Coder must
# take every detail from the statement. `embedded.build_embedded(sketches=...)` mixes them into the Planner's
# dataset only (see the README: what collaborative RL has to fix).
SKETCHES = {
    "list": "1. Apply the statement's steps to xs in order.\n2. Return the result.",
    "text": "1. Apply the statement's changes to s in order.\n2. Return the result.",
    "count": "1. Count the numbers that meet the conditions.\n2. Return the count.",
    "search": "1. Scan xs for the numbers that meet the conditions.\n2. Return what the statement asks for.",
    "dp": "1. Build the answer up from small n.\n2. Return the value for n.",
}


def is_sketch(plan: str) -> bool:
    """Whether `plan` is one of the SKETCHES (as a Planner wrote it: surrounding whitespace ignored)."""
    return plan.strip() in _SKETCH_TEXTS


_SKETCH_TEXTS = frozenset(SKETCHES.values())


# ---------------------------------------------------------------- tasks, tests and splits


@dataclasses.dataclass(frozen=True)
class Task:
    """A synthetic problem (with its tests and reference code) plus the reference plan and its parameters."""

    problem: Problem
    plan: str
    family: str
    difficulty: int
    ops: tuple[Op, ...]

    @property
    def code(self) -> str:
        return self.problem.reference_solution

    def to_json(self) -> dict[str, Any]:
        """The SPEC's generic problem, plus the fields only synthetic tasks have."""
        p = self.problem
        tests = [{"type": "call", "fn_name": t.fn_name, "args": list(t.args), "expected": t.expected} for t in p.tests]
        return {"task_id": p.task_id, "prompt": p.prompt, "entry_point": p.entry_point, "tests": tests,
                "reference_solution": p.reference_solution, "plan": self.plan, "family": self.family,
                "difficulty": self.difficulty, "ops": _to_json(self.ops)}


def _to_json(value: Any) -> Any:
    return [_to_json(v) for v in value] if isinstance(value, tuple) else value


def _from_json(value: Any) -> Any:
    return tuple(_from_json(v) for v in value) if isinstance(value, list) else value


def signature(family: str, ops: tuple[Op, ...]) -> tuple:
    """What the train/held-out split is decided on: the op kinds of a composition of three or more ops, else the
    ops with their constants."""
    return (family, tuple(kind for kind, _ in ops)) if len(ops) >= 3 else (family, ops)


def unit_hash(text: str) -> float:
    """A stable number in [0, 1) for `text` (sha256; the same in every process and Python version)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def split_of(family: str, ops: tuple[Op, ...]) -> str:
    """`heldout` for a stable HELDOUT_SHARE of signatures, `train` for the rest (independent of any seed)."""
    return "heldout" if unit_hash(repr(signature(family, ops))) < HELDOUT_SHARE else "train"


@functools.lru_cache(maxsize=4096)
def compile_solution(code: str) -> Callable[..., Any]:
    """The entry point of a *reference* program (our own generated code: run in-process, never model output)."""
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    return namespace[ENTRY_POINT]


@functools.lru_cache(maxsize=4096)
def _line_function(arg: str, expr: str) -> Callable[[Any], Any]:
    return eval(f"lambda {arg}: {expr}")  # a line of our own generated code, like compile_solution's


def fast_solution(code: str) -> Callable[..., Any]:
    """`compile_solution(code)`, but for straight-line programs (every line `v = EXPR` or `return EXPR` on the one
    argument, as in the list and text families) a chain of per-line functions: compiling whole programs dominates
    test generation, while lines recur across tasks and are compiled once."""
    head, *body = code.rstrip("\n").split("\n")
    arg = head[len(f"def {ENTRY_POINT}("):-2]
    exprs = [line.strip().removeprefix(f"{arg} = ").removeprefix("return ") for line in body]
    if not all(line.startswith((f"    {arg} = ", "    return ")) for line in body):
        return compile_solution(code)
    steps = [_line_function(arg, e) for e in exprs]

    def run(value):
        for step in steps:
            value = step(value)
        return value

    return run


def _outcome(fn: Callable[..., Any], args: list[Any]) -> Any:
    # No generated program mutates its argument (each step rebinds the name), so inputs are shared, not copied.
    try:
        return ("ok", fn(*args))
    except Exception as e:  # a mutant may fail where the reference does not: that tells them apart
        return ("error", type(e).__name__)


def mutants(family: str, ops: tuple[Op, ...], rng: random.Random) -> list[tuple[Op, ...]]:
    """Single-op changes of `ops`: each op replaced by one of every kind of its role (a fresh constant where the
    kind takes one; for `dp` a few fresh draws), and each integer constant moved by 1 either way."""
    fam, out = FAMILIES[family], []
    for i, (kind, arg) in enumerate(ops):
        kinds = fam.kinds(fam.role(ops, i)) * (3 if family == "dp" else 1)
        out += [ops[:i] + (alt,) + ops[i + 1:] for alt in (fam.make_op(k, rng) for k in kinds) if alt != ops[i]]
        if isinstance(arg, int) and not isinstance(arg, bool):
            out += [ops[:i] + ((kind, arg + d),) + ops[i + 1:] for d in (-1, 1)]
    return out


@functools.cache
def _search_pool(family: str) -> tuple[list[Any], ...]:
    """N_SEARCH fixed random inputs of a family, shared by all its tasks, to look for mutant-catching inputs in."""
    rng = random.Random(f"search:{family}")
    return tuple(FAMILIES[family].random_args(rng) for _ in range(N_SEARCH))


def make_tests(family: str, ops: tuple[Op, ...], code: str, rng: random.Random) -> tuple[Test, ...]:
    """Edge and random inputs, plus, for each mutant none of them catches, the first search-pool input that does
    (a mutant no such input catches is taken as equivalent); expected values from the reference."""
    fam, ref, pool = FAMILIES[family], compile_solution(code), _search_pool(family)
    inputs = fam.edge_args()
    for args in (fam.random_args(rng) for _ in range(10 * N_RANDOM_TESTS)):
        if len(inputs) < len(fam.edge_args()) + N_RANDOM_TESTS and args not in inputs:
            inputs.append(args)
    outcomes, pool_outcomes = [_outcome(ref, a) for a in inputs], [_outcome(ref, a) for a in pool]
    for mutant_ops in mutants(family, ops, rng):
        mutant = fast_solution(fam.render(mutant_ops, random.Random(0))[2])
        if all(_outcome(mutant, a) == o for a, o in zip(inputs, outcomes)):
            caught = next((i for i, a in enumerate(pool) if _outcome(mutant, a) != pool_outcomes[i]), None)
            if caught is not None:
                inputs.append(pool[caught])
                outcomes.append(pool_outcomes[caught])
    unique = {json.dumps(a): (a, o) for a, o in zip(inputs, outcomes)}
    return tuple(Test("call", fn_name=ENTRY_POINT, args=a, expected=o[1]) for a, o in unique.values())


def make_task(task_id: str, family: str, ops: tuple[Op, ...], seed: int) -> Task:
    """The task of `ops`; its wording and tests depend only on (seed, family, ops)."""
    rng = random.Random(f"{seed}:{family}:{ops!r}")
    fam = FAMILIES[family]
    prompt, plan, code = fam.render(ops, rng)
    problem = Problem(task_id, prompt, make_tests(family, ops, code, rng), entry_point=ENTRY_POINT,
                      reference_solution=code)
    return Task(problem, plan, family, fam.difficulty(ops), ops)


def generate(seed: int, n_train: int, n_heldout: int) -> dict[str, list[Task]]:
    """`n_train` and `n_heldout` distinct tasks, families drawn uniformly; deterministic in all three arguments."""
    rng, want = random.Random(seed), {"train": n_train, "heldout": n_heldout}
    out: dict[str, list[Task]] = {"train": [], "heldout": []}
    seen: set[tuple] = set()
    for _ in range(200 * (n_train + n_heldout) + 1000):
        if all(len(out[s]) >= want[s] for s in SPLITS):
            return out
        family = rng.choice(sorted(FAMILIES))
        ops = FAMILIES[family].sample(rng)
        split = split_of(family, ops)
        if (family, ops) in seen or len(out[split]) >= want[split]:
            continue
        seen.add((family, ops))
        out[split].append(make_task(f"synthetic-{split}/{len(out[split]):05d}", family, ops, seed))
    raise UserError(f"could not draw {n_train} train and {n_heldout} held-out distinct synthetic problems "
                    f"(got {len(out['train'])} and {len(out['heldout'])}); ask for fewer")


def write_problems(out_dir, seed: int, n_train: int, n_heldout: int) -> dict[str, Path]:
    """Writes `train.jsonl` and `heldout.jsonl` (the SPEC's generic problems, with plan, family, difficulty and
    ops) under `out_dir`; returns their paths by split."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, tasks in generate(seed, n_train, n_heldout).items():
        paths[split] = out_dir / f"{split}.jsonl"
        write_atomic(paths[split], jsonl_text(t.to_json() for t in tasks))  # a killed run leaves no half file
    return paths


def read_tasks(path) -> list[Task]:
    """Tasks from a file `write_problems` wrote; the problem is read by the generic jsonl loader, the synthetic
    fields are checked with errors naming file, line and field."""
    problems = load_benchmark("jsonl", path)
    tasks = []
    for problem, rec in zip(problems, read_records(Path(path))):
        family = rec.get("family", str)
        if family not in FAMILIES:
            raise rec.error("family", f"expected one of {', '.join(FAMILIES)}, got {family!r}")
        if problem.entry_point != ENTRY_POINT:
            raise rec.error("entry_point", f"expected {ENTRY_POINT!r}, got {problem.entry_point!r}")
        rec.get("reference_solution", str)  # present: the task's code is its reference
        tasks.append(Task(problem, rec.get("plan", str), family, rec.get("difficulty", int),
                          _from_json(rec.get("ops", list))))
    return tasks
