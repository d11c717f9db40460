"""Loaders for the competitive-programming formats: APPS (upstream and MapCoder's selected150), DeepMind
CodeContests, xCodeEval's Codeforces program synthesis, and LiveBench coding (LiveCodeBench-style tests).

Each reads its upstream schema into `Problem`s; `eval.benchmarks` registers them. Hidden-test databases that are not
in the problem file (xCodeEval's unittest_db) are deliberately out of scope.
"""

from __future__ import annotations

import base64
import io
import json
import pathlib
import pickle
import re
import warnings
import zlib
from typing import Any

from eval.problems import Problem, Test
from eval.records import OPT_STR, Record, make_problem, make_test, read_records


# The sandbox calls module-level functions. For LeetCode-style `class Solution` problems the setup code (run before
# the program) defines this one, which calls the method; `Solution` is looked up at call time, so the tests stay
# call tests judged by the parent (an `assert Solution().f(x) == y` would be judged inside the program's process).
METHOD_CALLER = "_call_solution_method"


def _is_method(starter: str) -> bool:
    return "class Solution" in starter


def _method_setup(fn_name: str | None, starter: str) -> str:
    if not fn_name or not _is_method(starter):
        return ""
    return f"def {METHOD_CALLER}(*args):\n    return Solution().{fn_name}(*args)\n"


def _call_test(rec: Record, field: str, fn_name: str, starter: str, args: list, expected: Any) -> Test:
    name = METHOD_CALLER if _is_method(starter) else fn_name
    return make_test(rec, field, type="call", fn_name=name, args=list(args), expected=expected)


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
        return tuple(make_test(rec, "input_output", type="stdio", input=_text(i), output=_text(o))
                     for i, o in zip(inputs, outputs))
    if not all(isinstance(i, list) for i in inputs):
        raise rec.error("input_output", "call-based 'inputs' must be lists of arguments")
    return tuple(_call_test(rec, "input_output", fn_name, starter, i, _unwrap(o))
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
    return make_problem(
        rec, task_id=f"APPS/{rec.get('problem_id', (int, str))}",
        prompt=_apps_statement(rec.get("question", str), starter), tests=_apps_tests(rec, io, starter),
        entry_point=io.get("fn_name"), setup_code=_method_setup(io.get("fn_name"), starter),
        reference_solution=solutions[0] if solutions else None, time_limit_s=4.0, metadata={"difficulty": rec.get("difficulty", str, ""), "starter_code": starter},
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
        tests.append(make_test(rec, "test_list", type="stdio", input=case["input"], output=_text(case["output"])))
    description = rec.get("description", str)
    if starter.strip():
        statement = (f"{description.strip()}\n\nWrite this function:\n```python\n{starter.strip()}\n```\n"
                     "Then read its arguments from standard input, one per line, call it and print what it returns.")
    else:
        statement = _apps_statement(description, "")
    return make_problem(
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
            rec.get("description", str), "Input\n" + (rec.get("input_spec", OPT_STR, "") or ""),
            "Output\n" + (rec.get("output_spec", OPT_STR, "") or ""), _samples_text(ins, outs),
            rec.get("notes", OPT_STR, "") or "",
        ) if s.strip())
        problems.append(make_problem(
            rec, task_id=rec.get("src_uid", str), prompt=statement,
            tests=tuple(make_test(rec, "sample_inputs", type="stdio", input=i, output=o) for i, o in zip(ins, outs)),
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
    return [make_test(rec, field, type="stdio", input=i, output=o) for i, o in zip(ins, outs)]


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
        problems.append(make_problem(
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


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data only: a pickle that names any class or function (the way pickles run code) is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _decode_compressed(rec: Record, field: str, raw: str) -> str:
    # LiveCodeBench's own encoding of its private tests: base64 of zlib of a pickled JSON string. The pickle is
    # read with an unpickler that can build strings and containers but never import or call anything.
    try:
        text = _PlainUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(raw.encode())))).load()
    except Exception as e:  # noqa: BLE001 - any failure here means the field is malformed
        raise rec.error(field, f"neither JSON nor LiveCodeBench's compressed encoding ({type(e).__name__})") from None
    if not isinstance(text, str):
        raise rec.error(field, f"compressed test cases hold {type(text).__name__}, expected a JSON string")
    return text


def _livebench_test(rec: Record, case: dict, fn_name: str | None, starter: str) -> Test:
    if case.get("testtype", "stdin") == "stdin":
        return make_test(rec, "test_cases", type="stdio", input=case["input"], output=case["output"])
    if not fn_name:
        raise rec.error("original_json", "a functional test case needs metadata.func_name")
    try:  # one JSON value per line, one line per argument
        args = [json.loads(line) for line in case["input"].split("\n") if line.strip()]
        expected = json.loads(case["output"])
    except json.JSONDecodeError:
        raise rec.error("test_cases", "functional input/output is not JSON") from None
    return _call_test(rec, "test_cases", fn_name, starter, args, expected)


def _livebench_meta(rec: Record) -> tuple[dict, str]:
    original = rec.json_field("original_json", {})
    if not isinstance(original, dict):
        raise rec.error("original_json", f"expected an object, got {type(original).__name__}")
    meta = original.get("metadata") or rec.data.get("metadata") or {}
    if isinstance(meta, str):
        try:
            meta = json.loads(meta) if meta.strip() else {}
        except json.JSONDecodeError as e:
            raise rec.error("metadata", f"not valid JSON ({e.msg})") from None
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
        problems.append(make_problem(
            rec, task_id=str(rec.get("question_id", (str, int))), prompt=turns[0],
            tests=tuple(_livebench_test(rec, c, meta.get("func_name"), starter) for c in cases),
            entry_point=meta.get("func_name"), setup_code=_method_setup(meta.get("func_name"), starter),
            metadata={"task": rec.get("task", str, ""), "partial_solution": rec.get("partial_solution", OPT_STR, "") or "",
                      "title": rec.get("question_title", str, "")},
        ))
    return problems
