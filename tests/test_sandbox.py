"""The sandbox on legitimate programs: verdict categories, output comparison, assert parsing, dedup, the codec."""

import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from eval import _codec
from eval.judge import outputs_match, parse_assert, values_equal
from eval.problems import Problem, Verdict
from eval.problems import Test as Case  # not "Test*": pytest would try to collect it
from eval import sandbox as eval_sandbox
from eval._jail import memory_cgroup_bases
from eval.sandbox import Sandbox, SandboxError, allocate_uid, release_uid


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=2) as sb:
        yield sb


def stdio(inp="", out="", **kw):
    return Problem("stdio", "", (Case("stdio", input=inp, output=out),), **kw)


def asserts(*codes, **kw):
    return Problem("asserts", "", tuple(Case("assert", code=c) for c in codes), entry_point="f", **kw)


def verdicts(sb, jobs):
    return [j.verdict for j in sb.judge(jobs)]


# ---------------------------------------------------------------- legitimate programs pass


LEGIT_STDIO = {
    "exit after print": "print(int(input()) * 2)\nimport sys\nsys.exit(0)",
    "main guard": "def main():\n    print(int(input()) * 2)\nif __name__ == '__main__':\n    main()",
    "stdin.buffer": "import sys\nprint(int(sys.stdin.buffer.read().split()[0]) * 2)",
    "open(0)": "print(int(open(0).read()) * 2)",
    "os.write": "import os\nos.write(1, str(int(input()) * 2).encode() + b'\\n')",
    "atexit flush": "import atexit, io, os, sys\nbuf = io.StringIO()\n"
                    "atexit.register(lambda: os.write(1, buf.getvalue().encode()))\nbuf.write(str(int(input()) * 2))",
    "deep recursion in a thread": (
        "import sys, threading\nsys.setrecursionlimit(10**6)\nthreading.stack_size(256 << 20)\n"
        "def depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n"
        "def main():\n    n = int(input())\n    print(depth(n * 10000) // 10000 * 2)\n"
        "t = threading.Thread(target=main)\nt.start()\nt.join()"),
    "numpy": "import numpy as np\nn = int(input())\nprint(int(np.full(3, n).sum() - n))",
}


def test_legit_stdio_programs_pass(sandbox):
    problem = stdio("21\n", "42\n")
    judgements = sandbox.judge([(problem, src) for src in LEGIT_STDIO.values()])
    failed = {name: j.tests for name, j in zip(LEGIT_STDIO, judgements) if not j.passed}
    assert not failed


def test_huge_ints_print_and_return(sandbox):
    big = 7**20000  # far past Python's 4300-digit int-to-str limit, in both directions
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        text = str(big)
    finally:
        sys.set_int_max_str_digits(limit)
    call = Problem("c", "", (Case("call", fn_name="f", args=[20000], expected=big),), entry_point="f")
    js = sandbox.judge([(stdio("", text), "print(7**20000)"), (call, "def f(n):\n    return 7**n"),
                        (call, "def f(n):\n    return 7**n + 1")])
    assert [j.verdict for j in js] == [Verdict.PASS, Verdict.PASS, Verdict.WA]


def test_verdict_categories(sandbox):
    fast = stdio("", "ok", time_limit_s=1, memory_limit_mb=128)
    got = verdicts(sandbox, [
        (fast, "print('ok')"),
        (fast, "print('no')"),
        (fast, "def f(:\n  pass"),
        (fast, "while True:\n    pass"),
        (fast, "import time\ntime.sleep(30)"),
        (fast, "import ctypes\nctypes.string_at(0)"),
        (fast, "raise ValueError('boom')"),
        (fast, "import sys\nprint('ok')\nsys.exit(3)"),
        (fast, "x = bytearray(1 << 30)\nprint('ok')"),
        (fast, "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)"),
        (fast, "   \n"),
    ])
    assert got == [Verdict.PASS, Verdict.WA, Verdict.CE, Verdict.TLE, Verdict.TLE, Verdict.RE, Verdict.RE,
                   Verdict.RE, Verdict.MLE, Verdict.OLE, Verdict.NO_CODE]


def test_outcomes_carry_time_and_memory(sandbox):
    [j] = sandbox.judge([(stdio("", "ok"), "x = [0] * 10**7\nprint('ok')")])
    [t] = j.tests
    assert j.passed and t.time_s > 0 and t.wall_s >= t.time_s * 0.5 and t.peak_mem_mb > 70


def test_each_run_starts_fresh_environment_cwd_and_signals():
    """A scrubbed environment, an empty temp dir as cwd whatever the previous run left there, PYTHONHASHSEED=0,
    and default signal dispositions even when our own process ignores one (as under nohup)."""
    from eval._worker import CHILD_ENV

    program = ("import os, signal\nprint(sorted(os.environ))\nprint(os.getcwd() == os.environ['TMPDIR'], os.listdir('.'))\n"
               "print(signal.getsignal(signal.SIGHUP) == signal.SIG_DFL, signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)\n"
               "print(hash('algoforge'))\nopen('left-behind', 'w').write('x')\n")
    seeded = subprocess.run([sys.executable, "-c", "print(hash('algoforge'))"], env={"PYTHONHASHSEED": "0"},
                            capture_output=True, text=True, check=True).stdout
    expected = f"{sorted([*CHILD_ENV, 'TMPDIR'])}\nTrue []\nTrue True\n{seeded}"
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with Sandbox(workers=1) as sb:
            judgements = sb.judge([(stdio("", expected), program + f"# run {i}") for i in range(3)])
    finally:
        signal.signal(signal.SIGHUP, old)
    assert [j.verdict for j in judgements] == [Verdict.PASS] * 3, [j.tests[0].detail for j in judgements]


def test_fast_programs_still_get_their_counters(sandbox):
    # A child that exits before its result frame is read leaves a zombie whose /proc entry has no memory
    # counters; those frames must take the counters of wait4 instead of reporting zeros.
    jobs = [(asserts(f"assert f(1) == {i + 1}", f"assert f(2) == {i + 2}"), f"def f(x):\n    return x + {i}")
            for i in range(60)]
    outcomes = [t for j in sandbox.judge(jobs) for t in j.tests]
    assert len(outcomes) == 120 and all(t.verdict is Verdict.PASS for t in outcomes)
    assert all(t.peak_mem_mb > 0 and t.time_s >= 0 for t in outcomes), [t for t in outcomes if t.peak_mem_mb <= 0]


def test_a_worker_killed_mid_job_is_replaced_and_the_job_judged_again():

    with Sandbox(workers=1) as sb:
        slow = (asserts("assert f(1) == 1", time_limit_s=1.0), "def f(x):\n    while True:\n        pass")
        quick = [(asserts(f"assert f(1) == {i + 1}"), f"def f(x):\n    return x + {i}") for i in range(3)]
        pid = sb._workers[0].proc.pid
        threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()  # the worker dies while `slow` runs
        with pytest.warns(RuntimeWarning, match="restarted after.*judging the job again"):
            verdicts_ = verdicts(sb, [slow, *quick])
        assert verdicts_ == [Verdict.TLE] + [Verdict.PASS] * 3  # judged again on a fresh worker: its own verdict
        assert sb._workers[0].proc.pid != pid  # a fresh worker took over
        assert verdicts(sb, quick) == [Verdict.PASS] * 3
        uids = {w.uid for w in sb._workers}
    # The killed worker's child died with it (parent-death signal); the machine's init reaps the zombie soon.
    deadline = time.monotonic() + 20
    while _processes_of(uids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_of(uids) == []


def _processes_of(uids) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid in uids:
                pids.append(int(pid))
        except OSError:
            pass
    return pids


def test_an_assert_whose_arguments_raise_runs_in_the_child(sandbox):
    assert parse_assert("assert f(1 // 0) == 1", "f") is None
    [j] = sandbox.judge([(asserts("assert f(1 // 0) == 1"), "def f(x):\n    return x")])
    assert j.verdict is Verdict.RE and "ZeroDivisionError" in j.tests[0].detail


def test_mbpp_style_asserts(sandbox):
    problem = asserts("assert f(3) == (0, 1, 2)", "assert set(f(2)) == {0, 1}", "assert not f(0) == [0]",
                      "assert math.isclose(sum(f(3)) / 3, 1.0, rel_tol=1e-9)", "assert abs(len(f(4)) - 4) < 0.5")
    assert all(parse_assert(t.code, "f") for t in problem.tests)
    got = verdicts(sandbox, [(problem, "def f(n):\n    return tuple(range(n))"),
                             (problem, "def f(n):\n    return list(range(n))"),
                             (problem, "def f(n):\n    return (x for x in range(n))")])
    assert got == [Verdict.PASS, Verdict.WA, Verdict.WA]  # a list is not a tuple; a generator is not a tuple


def test_float_tolerance_and_python_equality(sandbox):
    problem = asserts("assert f(1) == 0.3", "assert f(2) == 1", float_tolerance=1e-6)
    got = verdicts(sandbox, [(problem, "def f(n):\n    return 0.1 + 0.2 if n == 1 else 1.0"),
                             (problem, "def f(n):\n    return 0.31 if n == 1 else 1")])
    assert got == [Verdict.PASS, Verdict.WA]


def test_a_run_of_many_slow_calls_is_not_taken_for_a_hung_worker(monkeypatch):
    # Each call gets the whole wall limit (2.5 s here), so 4 calls of 1 s take longer than one limit plus the
    # margin: the parent must wait for all of them, not restart the worker and report a sandbox error.
    monkeypatch.setattr("eval.sandbox._WorkerProcess.reply_margin_s", 0.5)
    problem = Problem("c", "", tuple(Case("call", fn_name="g", args=[i], expected=i) for i in range(4)),
                      time_limit_s=0.5)
    with Sandbox(workers=1) as sb:
        judgement = sb.judge([(problem, "import time\ndef g(x):\n    time.sleep(1.0)\n    return x")])[0]
    assert judgement.verdict is Verdict.PASS, judgement


@pytest.mark.parametrize("stuck", ["while True:\n            pass", "import time\n        time.sleep(60)"])
def test_a_stuck_call_is_stopped_after_one_limit_not_the_whole_runs_budget(sandbox, stuck):
    """The run's budget is 20 calls x the limit, but a call that loops or sleeps is stopped after its own."""
    problem = asserts(*(f"assert f({i}) == {i}" for i in range(20)), time_limit_s=0.5)
    start = time.monotonic()
    [j] = sandbox.judge([(problem, f"def f(x):\n    if x == 1:\n        {stuck}\n    return x")])
    assert [t.verdict for t in j.tests] == [Verdict.PASS, Verdict.TLE]
    assert time.monotonic() - start < 5


def test_call_tests_compare_like_json(sandbox):
    problem = Problem("c", "", (Case("call", fn_name="g", args=[[3, 1, 2]], expected=[1, 2, 3]),))
    got = verdicts(sandbox, [(problem, "def g(xs):\n    return tuple(sorted(xs))"),
                             (problem, "def g(xs):\n    return sorted(xs, reverse=True)")])
    assert got == [Verdict.PASS, Verdict.WA]


def test_setup_code_is_prepended(sandbox):
    problem = Problem("s", "", (Case("assert", code="assert f(4) == 2.0"),), entry_point="f",
                      setup_code="import math as m")
    assert verdicts(sandbox, [(problem, "def f(x):\n    return m.sqrt(x)")]) == [Verdict.PASS]


def test_humaneval_check_function_is_parsed_and_judged(sandbox):
    test = ("METADATA = {'author': 'x'}\n\ndef check(candidate):\n    assert candidate(2, 3) == 5\n"
            "    assert candidate(-1, 1) == 0, 'message'\n    assert True\n\ncheck(add)\n")
    checks = parse_assert(test, "add")
    assert [c.probes[0].fn_name for c in checks] == ["add", "add"]
    problem = Problem("he", "", (Case("assert", code=test),), entry_point="add")
    assert verdicts(sandbox, [(problem, "def add(a, b):\n    return a + b"),
                              (problem, "def add(a, b):\n    return 5")]) == [Verdict.PASS, Verdict.WA]


def test_unparseable_asserts_run_in_child_and_say_so(sandbox):
    code = "for i in range(5):\n    assert f(i) == 2 * i"
    assert parse_assert(code, "f") is None
    problem = asserts(code)
    good, bad = sandbox.judge([(problem, "def f(i):\n    return 2 * i"), (problem, "def f(i):\n    return i")])
    assert good.verdict is Verdict.PASS and good.tests[0].detail.startswith("in-child assert")
    assert bad.verdict is Verdict.WA


def test_stops_at_first_failure_and_dedups(sandbox):
    problem = asserts("assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3")
    before = sandbox.child_runs
    js = sandbox.judge([(problem, "def f(x):\n    return 1")] * 5)
    assert [len(j.tests) for j in js] == [2] * 5 and js[0].verdict is Verdict.WA
    assert sandbox.child_runs - before == 1  # five identical jobs, one judged: one child runs all its calls


def test_progress_counts_every_job(sandbox):
    seen = []
    problem = asserts("assert f(1) == 1")
    sandbox.judge([(problem, "def f(x):\n    return x")] * 3 + [(problem, "")], progress=seen.append)
    assert sum(seen) == 4


# ---------------------------------------------------------------- pure helpers


def test_outputs_match():
    assert outputs_match("1  2\n3.0000001\n", "1 2 3.0", 1e-6)
    assert not outputs_match("1 2", "1 2 3", 1e-6)
    assert not outputs_match("3.0", "3", 1e-6)  # integers are exact
    assert not outputs_match("3.1", "3.0", 1e-6)
    assert outputs_match("YES", "YES\n\n", 1e-6) and not outputs_match("yes", "YES", 1e-6)


def test_values_equal_keeps_python_semantics():
    assert values_equal(1, 1.0, 0) and values_equal(True, 1, 0)
    assert not values_equal([1, 2], (1, 2), 0) and values_equal([1, 2], (1, 2), 0, json_mode=True)
    assert values_equal({1, 2}, frozenset({2, 1}), 0)
    assert values_equal([0.1 + 0.2], [0.3], 1e-9) and not values_equal([0.1 + 0.2], [0.3], 0)
    assert not values_equal(_codec.Iterated([1]), [1], 0)


def test_codec_round_trip_keeps_types():
    value = [1, 2.5, "s", None, True, (1, [2]), {3}, frozenset({4}), {(1, 2): b"x"}, 3 + 4j, 10**5000, math.inf]
    assert _codec.decode(_codec.encode(value)) == value
    assert type(_codec.decode(_codec.encode(iter([1, 2])))) is _codec.Iterated


def test_codec_strips_subclass_behaviour():
    class Liar(int):
        def __eq__(self, other):
            return True

        __hash__ = int.__hash__

    out = _codec.decode(_codec.encode([Liar(5)]))
    assert out == [5] and type(out[0]) is int


def test_codec_rejects_forged_data():
    for forged in (b'{"zz": 1}', b'{"s": [[1]]}', b"[1", b'{"t": 1}'):
        with pytest.raises(_codec.WireError):
            _codec.decode(forged)


# ---------------------------------------------------------------- rewards, threads, uids, start-up


def test_all_tests_judged_for_rewards_and_counted():
    problem = asserts("assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3", "assert f(4) == 4")
    program = "def f(x):\n    if x == 2:\n        raise ValueError('two')\n    return 0 if x == 4 else x"
    stdio3 = Problem("s", "", tuple(Case("stdio", input=str(i), output=str(i)) for i in range(3)))
    echo_but_1 = "x = int(input())\nprint(x + (x == 1))"
    with Sandbox(workers=1, stop_at_first_failure=False) as sb:
        j, s, passing = sb.judge([(problem, program), (stdio3, echo_but_1), (problem, "def f(x):\n    return x")])
        runs_before = sb.child_runs
        [slow] = sb.judge([(asserts("assert f(1) == 1", "assert f(2) == 2", time_limit_s=0.5),
                            "def f(x):\n    while True:\n        pass")])
        assert sb.child_runs - runs_before == 1  # the test after the TLE is not run again
    assert [t.verdict for t in j.tests] == [Verdict.PASS, Verdict.RE, Verdict.PASS, Verdict.WA]
    assert j.verdict is Verdict.RE and (j.tests_passed, j.n_tests) == (2, 4) and "two" in j.tests[1].detail
    assert [t.verdict for t in s.tests] == [Verdict.PASS, Verdict.WA, Verdict.PASS] and s.tests_passed == 2
    assert passing.passed and (passing.tests_passed, passing.n_tests) == (4, 4)
    assert [t.verdict for t in slow.tests] == [Verdict.TLE, Verdict.TLE] and slow.tests[1].detail.startswith("not run")
    assert slow.time_s > 0.4 and slow.tests_passed == 0


def test_scoring_stops_at_the_first_failure_but_counts_the_tests(sandbox):
    [j] = sandbox.judge([(asserts("assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3"),
                          "def f(x):\n    return 1")])
    assert (len(j.tests), j.tests_passed, j.n_tests) == (2, 1, 3)


def test_judge_from_several_threads_at_once(sandbox):
    """The GRPO loop judges from a background thread; two callers at once must each get their own verdicts."""
    def batch(k):
        return [(asserts(f"assert f({i}) == {i * k}"), f"def f(x):\n    return x * {k if i % 2 else k + 1}")
                for i in range(1, 13)]

    expected = [Verdict.PASS if i % 2 else Verdict.WA for i in range(1, 13)]
    results: dict[int, list] = {}
    threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, verdicts(sandbox, batch(k))))
               for k in (2, 3, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == {k: expected for k in (2, 3, 5)}


@pytest.mark.skipif(os.geteuid() != 0, reason="sandbox uids exist only when run as root")
def test_every_live_worker_has_its_own_uid(sandbox):
    with Sandbox(workers=2) as other:
        uids = [w.uid for w in (*sandbox._workers, *other._workers)]
        many = [allocate_uid() for _ in range(300)]  # more than the old 64-per-process blocks
        for uid in many:
            release_uid(uid)
    assert len(set(uids)) == 4
    assert len(set(many)) == 300 and not set(many) & set(uids) and max(many) < 2**32 - 1


def _worker_children() -> list[int]:
    me = str(os.getpid())
    kids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[1].decode() == me:
                    kids.append(int(pid))
        except (OSError, IndexError):
            pass
    return kids


SABOTAGE = {  # a failure before the worker made its cgroup, and one after (without namespaces)
    True: "def enter_namespaces(visible, hidden):\n    raise OSError('no namespaces here (test)')\n",
    False: "def become_subreaper():\n    raise OSError('no namespaces here (test)')\n",
}


@pytest.mark.filterwarnings("ignore:sandbox runs without")
@pytest.mark.parametrize("isolate", [True, False])
def test_a_worker_that_cannot_start_is_a_sandbox_error_with_its_reason(monkeypatch, tmp_path, isolate):
    """A copy of eval/ whose worker set-up fails: Sandbox(...) raises the worker's own reason, and every worker it
    had started is gone, with its cgroup."""
    copy = tmp_path / "eval"
    shutil.copytree(pathlib.Path(__file__).parents[1] / "eval", copy, ignore=shutil.ignore_patterns("data"))
    with open(copy / "_jail.py", "a") as f:
        f.write("\n\n" + SABOTAGE[isolate])
    monkeypatch.setitem(eval_sandbox._SPAWN_ENV, "PYTHONPATH", str(tmp_path))
    before, cgroups, scratch = set(_worker_children()), _our_cgroups(), _host_scratch_dirs()
    with pytest.raises(SandboxError, match=r"worker \d could not start: OSError: no namespaces here \(test\)"):
        Sandbox(workers=3, isolate=isolate)
    assert set(_worker_children()) - before == set()
    assert _our_cgroups() == cgroups  # (other tests' sandboxes may be alive)
    assert _host_scratch_dirs() <= scratch


def _host_scratch_dirs() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith(("algoforge-sandbox-", "algoforge-root-"))}


def _our_cgroups() -> set[str]:
    return {d for base, _ in memory_cgroup_bases() for d in os.listdir(base)
            if d.startswith(f"algoforge-sandbox-{os.getpid()}-")}


# ---------------------------------------------------------------- wherever the project and interpreter live


def _venv_and_clone(base: pathlib.Path, layout: str) -> tuple[pathlib.Path, pathlib.Path]:
    """A virtual environment (stdlib only, plus one module in its site-packages) and a copy of eval/ under `base`:
    in a clone beside the environment, in a clone holding it (`.venv`), or in the environment's site-packages as
    a non-editable install puts it. Returns the environment and the directory that holds eval/."""
    clone = base / "a clone"
    venv = clone / ".venv" if layout == "venv in clone" else base / "the venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    [site_dir] = venv.glob("lib/python3*/site-packages")
    (site_dir / "afmark_module.py").write_text("VALUE = 21\n")
    home = site_dir if layout == "installed" else clone
    shutil.copytree(pathlib.Path(__file__).parents[1] / "eval", home / "eval", ignore=shutil.ignore_patterns("data"))
    return venv, home


LOCATION_CHECK = """
import os, sys
from eval.problems import Problem, Test, Verdict
from eval.sandbox import Sandbox
program = '''import os, afmark_module
mine = [n for n in os.listdir('/tmp') if not n.startswith('algoforge-sandbox-')]
print(afmark_module.VALUE * 2, os.path.exists(%r), mine == %r)
'''
clone, expected_tmp = sys.argv[1], sys.argv[2].split(',') if sys.argv[2] else []
problem = Problem('p', '', (Test('stdio', input='', output='42 False True'),))
with Sandbox(workers=1) as sb:
    [j] = sb.judge([(problem, program % (clone + '/eval/judge.py', expected_tmp))])
    print(j.verdict.value, j.tests[0].detail, sb.protections['pid_namespace'])
"""


@pytest.mark.parametrize("where,layout", [("/tmp", "clone"), ("/var/tmp", "clone"), ("/dev/shm", "clone"),
                                          (os.path.expanduser("~"), "clone"), ("/tmp", "installed"),
                                          ("/tmp", "venv in clone")])
def test_the_sandbox_works_wherever_the_project_and_interpreter_live(where, layout):
    """Issue 9: a clone and a virtual environment under /tmp (or /var/tmp, /dev/shm, a mode-700 home), in a path
    with spaces: the worker starts, the program imports from that environment's site-packages and sees /tmp
    empty but for the way to the environment, and our own files stay hidden (also when installed into the
    environment's site-packages, which the program otherwise sees)."""
    if not os.access(where, os.W_OK):
        pytest.skip(f"{where} is not writable here")
    base = pathlib.Path(tempfile.mkdtemp(prefix="algoforge test ", dir=where))
    try:
        venv, home = _venv_and_clone(base, layout)
        on_tmp = [base.name] if where == "/tmp" else []
        env = {"PATH": "/usr/bin:/bin", **({} if layout == "installed" else {"PYTHONPATH": str(home)})}
        proc = subprocess.run([str(venv / "bin" / "python"), "-c", LOCATION_CHECK, str(home), ",".join(on_tmp)],
                              cwd=base, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        verdict, *_, namespaces = proc.stdout.split()
        assert verdict == "PASS", proc.stdout
        assert namespaces == str(os.geteuid() == 0)
    finally:
        shutil.rmtree(base)
