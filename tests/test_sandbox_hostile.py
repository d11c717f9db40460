"""Hostile programs: each asserts the exact verdict, then checks the host (parent alive, files intact, no stray
processes, temp dirs or fds). Reward hacks that fool in-process judges must fail here."""

import contextlib
import os
import pathlib
import shutil
import site
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest

from eval.problems import Problem, Verdict
from eval.problems import Test as Case  # not "Test*": pytest would try to collect it
from eval.sandbox import _UID_BASE, UIDS_PER_PROCESS, Sandbox

MARK = "afm" + uuid.uuid4().hex[:8]  # 11 chars: fits a process's comm (15) as well as its cmdline
SET_MARK = f"import ctypes\nctypes.CDLL(None).prctl(15, b'{MARK}', 0, 0, 0)\n"
# A marked grandchild in a session of its own that outlives the test's process: the sandbox must kill it.
ORPHAN = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
          + "".join("        " + line + "\n" for line in SET_MARK.splitlines())
          + "        time.sleep(60)\n    os._exit(0)\nos.wait()\nprint('ok')")


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=2) as sb:
        yield sb


@pytest.fixture
def host(sandbox, tmp_path):
    """Yields a sentinel path outside the sandbox; afterwards checks that nothing on the host was harmed."""
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("intact")
    worker_pids = [w.proc.pid for w in sandbox._workers]
    fds, temps = _fd_count(), _sandbox_temp_dirs()
    yield sentinel
    assert sentinel.read_text() == "intact" and os.listdir(tmp_path) == ["sentinel.txt"]
    assert [w.proc.pid for w in sandbox._workers] == worker_pids and all(w.proc.poll() is None
                                                                        for w in sandbox._workers)
    assert _marked_processes() == [] and _sandbox_uid_processes() == []
    assert _fd_count() == fds and _sandbox_temp_dirs() == temps


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _sandbox_temp_dirs() -> list[str]:
    return sorted(n for n in os.listdir(tempfile.gettempdir()) if n.startswith("algoforge-sandbox-"))


def _processes():
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/comm", "rb") as f:
                comm = f.read()
            yield int(pid), comm + cmdline, os.stat(f"/proc/{pid}").st_uid


def _marked_processes() -> list[int]:
    return [pid for pid, text, _ in _processes() if MARK.encode() in text]


def _sandbox_uid_processes() -> list[int]:
    """Processes running as one of this sandbox's unprivileged uids (none must outlive a run)."""
    first = _UID_BASE + os.getpid() * UIDS_PER_PROCESS
    return [pid for pid, _, uid in _processes() if first <= uid < first + UIDS_PER_PROCESS]


def one_call(expected, code: str = "assert f(1) == {!r}", **kw) -> Problem:
    return Problem("h", "", (Case("assert", code=code.format(expected)),), entry_point="f", time_limit_s=1,
                   memory_limit_mb=256, **kw)


def stdio(out: str = "ok") -> Problem:
    return Problem("h", "", (Case("stdio", input="", output=out),), time_limit_s=1, memory_limit_mb=256)


def judge(sandbox, problem, program):
    [j] = sandbox.judge([(problem, program)])
    return j.verdict


# ---------------------------------------------------------------- reward hacks


HACKS = {
    "always-true __eq__": "class A:\n    def __eq__(self, other):\n        return True\n"
                          "    __hash__ = object.__hash__\ndef f(x):\n    return A()",
    "int subclass __eq__": "class B(int):\n    def __eq__(self, other):\n        return True\n"
                           "    __ne__ = lambda s, o: False\n    __hash__ = int.__hash__\ndef f(x):\n    return B(7)",
    "exit(0) at import": "import sys\nsys.exit(0)\ndef f(x):\n    return 7",
    "exit(0) in call": "def f(x):\n    import sys\n    sys.exit(0)",
    "os._exit(0) in call": "def f(x):\n    import os\n    os._exit(0)",
    "atexit hook": "import atexit, os\natexit.register(lambda: os._exit(0))\ndef f(x):\n    raise SystemExit(0)",
    "caller frame consts": "import sys\ndef f(*a):\n    try:\n        consts = sys._getframe(1).f_code.co_consts\n"
                           "        return [list(c) for c in consts if isinstance(c, tuple)][-1]\n"
                           "    except Exception:\n        return None",
    "gc scan": "import gc\ndef f(x):\n    nums = [o for o in gc.get_objects() if type(o) is list and len(o) == 3]\n"
               "    return nums[-1] if nums else 7",
    "patch builtins": "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.AssertionError = type('E', (), {})\n"
                      "def f(x):\n    return 7",
    "forge result fd": "import os\nfor fd in range(3, 40):\n    try:\n        os.write(fd, b'passed D T' + bytes(16))\n"
                       "    except OSError:\n        pass\nos._exit(0)\ndef f(x):\n    return 7",
}


def test_reward_hacks_fail(sandbox, host):
    problem = one_call([4, 5, 6])
    got = dict(zip(HACKS, (j.verdict for j in sandbox.judge([(problem, src) for src in HACKS.values()]))))
    assert got == {"always-true __eq__": Verdict.WA, "int subclass __eq__": Verdict.WA,
                   "exit(0) at import": Verdict.RE, "exit(0) in call": Verdict.RE, "os._exit(0) in call": Verdict.RE,
                   "atexit hook": Verdict.RE, "caller frame consts": Verdict.WA, "gc scan": Verdict.WA,
                   "patch builtins": Verdict.WA, "forge result fd": Verdict.RE}


def test_abs_tolerance_assert_is_not_fooled_by_patched_abs(sandbox, host):
    problem = one_call(None, code="assert abs(f(2) - 0.5) < 1e-6")
    assert judge(sandbox, problem, HACKS["patch builtins"].replace("return 7", "return 9.0")) is Verdict.WA
    assert judge(sandbox, problem, "def f(x):\n    return 1 / x") is Verdict.PASS


def test_in_child_asserts_launder_always_equal_objects(sandbox, host):
    problem = one_call(None, code="for i in range(3):\n    assert f(i) == [i]")
    assert judge(sandbox, problem, HACKS["always-true __eq__"]) is Verdict.WA
    [forged] = sandbox.judge([(problem, "import os\nos.write(3, b'T' + b'0' * 16)\nos._exit(0)")])
    assert forged.verdict is Verdict.RE and "result channel" in forged.tests[0].detail
    assert judge(sandbox, problem, "def f(i):\n    return [i]") is Verdict.PASS


def test_result_frames_cannot_extend_time_or_forge_it(sandbox, host):
    """Issue 10's reproduction: frames written by the program used to reset the wall deadline and extend
    RLIMIT_CPU, so 12 sleeps of 0.45 s under a 0.5 s limit passed with a forged time of 0.004 s."""
    problem = Problem("h", "", (Case("stdio", input="2 3", output="5"),), time_limit_s=0.5, memory_limit_mb=256)
    forger = ("import os, struct, time\nfor _ in range(12):\n    time.sleep(0.45)\n"
              "    os.write(3, struct.pack('<Q', 1) + b'x')\nprint(sum(map(int, input().split())))")
    start = time.monotonic()
    [j] = sandbox.judge([(problem, forger)])
    assert j.verdict is Verdict.RE and "result channel" in j.tests[0].detail
    assert time.monotonic() - start < 5
    sleeper = "import time\nfor _ in range(12):\n    time.sleep(0.45)\nprint(sum(map(int, input().split())))"
    assert judge(sandbox, problem, sleeper) is Verdict.TLE


def test_a_program_writing_frames_forever_is_blamed_at_once(sandbox, host):
    flood = ("import os, struct\ndef f(x):\n    while True:\n        os.write(3, struct.pack('<Q', 2) + b'V7')\n")
    start = time.monotonic()
    [j] = sandbox.judge([(one_call(7), flood)])
    assert j.verdict is Verdict.RE and "more result frames than calls" in j.tests[0].detail
    assert time.monotonic() - start < 5  # not held until the parent's own timeout, not SANDBOX_ERROR


def test_a_program_cannot_find_the_answers_on_disk(sandbox, host, tmp_path_factory):
    """A random token in the problems file and in a workdir, which a program looks for by the paths (as if it
    had read them from the scorer's command line), by scanning /proc and by walking what it can see."""
    token = uuid.uuid4().hex
    tmp_path = tmp_path_factory.mktemp("planted")
    problems = tmp_path / f"problems-{token}.jsonl"
    problems.write_text(f'{{"task_id": "{token}"}}\n')
    workdir = tmp_path / f"workdir-{token}"
    workdir.mkdir()
    (workdir / "answers.txt").write_text(token)
    project = pathlib.Path(__file__).parents[1]
    targets = [str(problems), str(workdir / "answers.txt"), str(project / "eval" / "data" / "mbpp" / "mbpp.jsonl"),
               str(project / "eval" / "judge.py"),
               # the files of the scorer's cwd and of $HOME (the cwd itself may exist as an empty directory on the
               # way to a bound-back virtual environment inside it, as in CI's clone with its .venv)
               *[str(p) for d in (pathlib.Path.cwd(), pathlib.Path.home())
                 for p in [f for f in sorted(d.iterdir()) if f.is_file()][:3]]]
    scan = f"""import os, sys
token, found = {token!r}, []
for path in {targets!r}:
    if os.path.exists(path):
        found.append(path)
skip = {{'/proc', '/sys', '/dev', '/usr', '/etc', sys.prefix, sys.base_prefix, *(p for p in sys.path if 'site-packages' in p)}}
for top, dirs, files in os.walk('/'):
    dirs[:] = [d for d in dirs if os.path.join(top, d) not in skip]
    for name in dirs + files:
        path = os.path.join(top, name)
        if token in name:
            found.append(path)
        elif name in files:
            try:
                with open(path, 'rb') as f:
                    if token.encode() in f.read(1 << 20):
                        found.append(path)
            except OSError:
                pass
print(found or 'clean')
"""
    problem = Problem("h", "", (Case("stdio", input="", output="clean"),), time_limit_s=10, memory_limit_mb=256)
    [j] = sandbox.judge([(problem, scan)])
    assert j.verdict is Verdict.PASS, j.tests[0].detail


def test_a_huge_returned_int_cannot_stall_the_parent(sandbox, host):
    """A near-32 MB int squared by the parent-side interpreter would take minutes: refused before the work."""
    problem = one_call(None, code="assert f(1) * f(1) == 4")
    done: list = []
    thread = threading.Thread(target=lambda: done.append(sandbox.judge([(problem, HUGE_INT)])[0]), daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert done, "the judge is still computing with the program's int"
    assert done[0].verdict is Verdict.WA and "bits" in done[0].tests[0].detail
    assert judge(sandbox, one_call(None, code="assert f(1) ** 2 == 4"), HUGE_INT) is Verdict.WA
    assert judge(sandbox, one_call(None, code="assert f(1) ** 2 == 4"), "def f(x):\n    return 2") is Verdict.PASS


HUGE_INT = "def f(x):\n    return (1 << 39_999_990) // 3"  # dense: squaring it takes minutes


# ---------------------------------------------------------------- containment


def test_fork_bomb(sandbox, host):
    bomb = SET_MARK + "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    assert judge(sandbox, stdio(), bomb) is Verdict.TLE


def test_memory_hog(sandbox, host):
    hog = "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 20))"
    assert judge(sandbox, stdio(), hog) is Verdict.MLE
    assert judge(sandbox, stdio(), "x = ' ' * (1 << 31)\nprint('ok')") is Verdict.MLE


def test_output_flood(sandbox, host):
    assert judge(sandbox, stdio(), "while True:\n    print('x' * 10000)") is Verdict.OLE
    assert judge(sandbox, stdio(), "import os\nwhile True:\n    os.write(2, b'e' * 65536)") is Verdict.OLE
    assert judge(sandbox, one_call(1), "def f(x):\n    return 'y' * ((1 << 25) + 1000)") is Verdict.OLE


def test_signal_ignoring_loops(sandbox, host):
    ignore = SET_MARK + ("import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGXCPU, signal.SIGHUP):\n"
                         "    signal.signal(s, signal.SIG_IGN)\n")
    assert judge(sandbox, stdio(), ignore + "while True:\n    pass") is Verdict.TLE
    assert judge(sandbox, stdio(), ignore + "import time\ntime.sleep(60)") is Verdict.TLE


def test_writes_outside_the_temp_dir_fail(sandbox, host):
    attempts = [f"open({str(host)!r}, 'w').write('pwned')", f"os.remove({str(host)!r})",
                f"open({str(host.parent / 'new.txt')!r}, 'w')", "open('/work/pwned.txt', 'w')",
                "open('/etc/pwned', 'w')", f"os.chmod({str(host)!r}, 0o777)"]
    program = "import os\nfails = 0\n" + "".join(
        f"try:\n    {a}\nexcept OSError:\n    fails += 1\n" for a in attempts) + \
        "open('inside.txt', 'w').write('fine')\nprint(fails)"
    assert judge(sandbox, stdio(str(len(attempts))), program) is Verdict.PASS
    assert not os.path.exists("/work/pwned.txt") and not os.path.exists("/etc/pwned")


def test_no_network(sandbox, host):
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    port = server.getsockname()[1]
    program = ("import socket\nblocked = 0\n"
               f"for addr in (('127.0.0.1', {port}), ('8.8.8.8', 53), ('1.1.1.1', 80)):\n"
               "    try:\n        socket.create_connection(addr, timeout=1).send(b'leak')\n"
               "    except OSError:\n        blocked += 1\n"
               "print(blocked, *[name for _, name in socket.if_nameindex()])")
    try:
        assert judge(sandbox, stdio("3 lo"), program) is Verdict.PASS
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()


def test_killing_the_parent(sandbox, host):
    # The program's view of its parent: pid 0 (outside its pid namespace), so this signals its own group.
    assert judge(sandbox, stdio(), "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('ok')") \
        is Verdict.RE
    everything = ("import os, signal\nfor how in (lambda: os.kill(-1, signal.SIGKILL), "
                  f"lambda: os.kill({os.getpid()}, signal.SIGKILL), "
                  f"lambda: os.killpg({os.getpgid(0)}, signal.SIGKILL), "
                  f"lambda: os.kill({sandbox._workers[0].proc.pid}, signal.SIGKILL)):\n"
                  "    try:\n        how()\n    except OSError:\n        pass\nprint('ok')")
    assert judge(sandbox, stdio(), everything) is Verdict.PASS


def test_orphans_are_killed(sandbox, host):
    assert judge(sandbox, stdio(), ORPHAN) is Verdict.PASS


def test_segfault_syntax_error_infinite_loop(sandbox, host):
    got = [judge(sandbox, stdio(), p) for p in ("import ctypes\nctypes.string_at(0)", "print('ok'", "while 1: pass")]
    assert got == [Verdict.RE, Verdict.CE, Verdict.TLE]


def test_workers_survive_and_still_judge(sandbox, host):
    assert judge(sandbox, one_call(2), "def f(x):\n    return x + 1") is Verdict.PASS


# ---------------------------------------------------------------- determinism and the other mode


def _mixed_batch():
    fast = stdio()
    return [(one_call([4, 5, 6]), src) for src in HACKS.values()] + [
        (fast, "print('ok')"), (fast, "print('no')"), (fast, "while True: pass"), (fast, "print('ok'"),
        (fast, "import ctypes\nctypes.string_at(0)"), (fast, "x = bytearray(1 << 31)"),
        (fast, "while True:\n    print('x' * 10000)")]


def test_verdicts_identical_across_three_reruns(sandbox, host):
    batch = _mixed_batch()
    runs = [[j.verdict for j in sandbox.judge(batch)] for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    assert set(runs[0]) == {Verdict.PASS, Verdict.WA, Verdict.RE, Verdict.TLE, Verdict.CE, Verdict.MLE, Verdict.OLE}


def test_close_leaves_no_cgroup_and_no_worker():
    with Sandbox(workers=1) as sb:
        cgroup, worker = sb.protections["memory_cgroup"], sb._workers[0].proc
        assert cgroup and os.path.isdir(cgroup)
    assert not os.path.exists(cgroup) and worker.poll() is not None


def test_without_namespaces_the_kernel_limits_still_hold(tmp_path):
    with pytest.warns(RuntimeWarning, match="without namespaces"), Sandbox(workers=1, isolate=False) as sb:
        assert sb.protections["pid_namespace"] is False
        worker = sb._workers[0].proc
        got = [judge(sb, stdio(), p) for p in (ORPHAN, "chunks = []\nwhile True:\n    chunks.append(' ' * (1 << 20))",
                                               "while True: pass", "print('ok')")]
        assert got == [Verdict.PASS, Verdict.MLE, Verdict.TLE, Verdict.PASS]
        assert _marked_processes() == []
    assert worker.poll() is not None and _sandbox_uid_processes() == []


@pytest.mark.slow
def test_this_suite_passes_from_a_clone_and_a_venv_under_tmp():
    """Issue 9's report: every sandbox test failed when the project and its virtual environment lived under /tmp
    (the worker looked for its interpreter after hiding /tmp). Runs this file from such a clone and venv."""
    root = pathlib.Path(__file__).parents[1]
    base = pathlib.Path(tempfile.mkdtemp(prefix="algoforge clone ", dir="/tmp"))
    try:
        venv, clone = base / "venv", base / "main"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
        [site_dir] = venv.glob("lib/python3*/site-packages")
        (site_dir / "outer.pth").write_text("\n".join(site.getsitepackages()) + "\n")  # pytest, from our env
        shutil.copytree(root / "eval", clone / "eval", ignore=shutil.ignore_patterns("data", "__pycache__"))
        (clone / "tests").mkdir()
        for name in ("conftest.py", "test_sandbox_hostile.py"):
            shutil.copy(root / "tests" / name, clone / "tests" / name)
        proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m",
                               "not slow", "tests/test_sandbox_hostile.py"], cwd=clone, capture_output=True,
                              text=True, timeout=600, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(clone)})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    finally:
        shutil.rmtree(base)
