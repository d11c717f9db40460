"""Run untrusted, model-written programs against a problem's tests, and judge them where they cannot interfere.

    with Sandbox(workers=8) as sandbox:                        # scoring: stops at a program's first failing test
        judgements = sandbox.judge([(problem, program_text), ...], progress=bar.update)

    rewards = Sandbox(workers=64, stop_at_first_failure=False)  # rewards: every test of every program is judged
    [j] = rewards.judge([(problem, program_text)])             # safe to call from a background thread
    j.verdict, j.tests_passed, j.n_tests, j.time_s              # PASS/WA/..., tests passed, tests in all, CPU s
    rewards.close()

`judge` may be called from several threads: calls are served one at a time (each uses every worker), in the order
they arrive. `Sandbox(...)` raises `SandboxError` with the worker's own reason when a worker cannot start, after
stopping the ones that did. Turning model completions into programs (`program_for`) and judging samples in
batches is in eval/judging.py.

Design. A pool of warm worker processes (fresh interpreters with common modules imported once) forks the children
that run programs: one per program for all its call-shaped tests (one call per step, as upstream harnesses run all
asserts in one process), one per stdio test. The child receives the program and test *inputs* only (stdin, or
call arguments) and sends back what it produced: stdout bytes, or the call's return value serialised to plain
tagged data (eval/_codec.py). This parent decodes that data and compares it with the expected value, which
never leaves this process. Asserts of the common shapes are parsed into such calls (eval/judge.py); identical
(problem, program) pairs in one batch are judged once. A job whose worker fails (our fault) is judged once more
on a fresh worker, with a warning; a second failure is SANDBOX_ERROR. `judge` never waits on a dead worker.
With stop_at_first_failure=False a call that raises is that test's failure and the next call still runs; a run
ended by a limit or an exit leaves its remaining call tests failed with that verdict ("not run").

Threat model: what holds against a hostile program, and in which mode.
  Always (any user, any machine):
  - Judged outside the program's process: always-True `__eq__` objects, `sys.exit(0)` before the asserts, `atexit`
    hooks, reading the expected value from frames, bytecode or `gc`, monkeypatching builtins or our harness, and
    forging the result channel all yield nothing: the child never holds the answer, and whatever it writes is
    decoded as data. An exit code alone never means pass. A run accepts at most one result frame per call (one
    for a stdio or in-child assert run); a program that writes more, or bytes that make no frame, is RE.
  - Time is the kernel's: a run of n calls gets n times the CPU limit (RLIMIT_CPU, SIGKILL at the hard limit) and
    n times the wall limit (SIGKILL of the group), both fixed before the program starts and never extended by
    what it writes. Within that budget each call also has its own CPU and wall limits, counted from the previous
    result frame (frames can only end a step early, never add one). Reported times are the kernel's accounting
    (the last call's includes everything the process did after its frame).
  - Its own session and process group; RLIMIT_NOFILE, RLIMIT_FSIZE, no core files; stdout, stderr and the result
    pipe drained concurrently with an output cap (OLE); a scrubbed environment, PYTHONHASHSEED=0, a fresh temp
    dir as cwd (removed after), stdin from /dev/null when the test has none; orphans (double fork + setsid) are
    killed and reaped after every run (pid namespace, else child-subreaper sweep); no fds or zombies left.
  - Memory: a per-worker memory cgroup (v1 or v2) when one is writable, the limit set per run on top of what the
    worker itself holds (plus room for the output it buffers): OOM kills are reported as MLE, children are the
    OOM killer's first pick, and large thread stacks still work. Otherwise RLIMIT_AS at the warm interpreter's
    size plus twice the limit (coarse: a warning says so).
  - Bounded work here on what the child returns: sizes of integers, strings and containers are checked before
    the parent-side interpreter multiplies, raises to a power, divides or sorts them (eval/judge.py).
  When run as root (CI, this project's machines), additionally:
  - An unprivileged uid per worker, unique among the live workers of every sandbox on the host (up to
    UIDS_PER_PROCESS per process), with no capabilities and no_new_privs: it owns no host file, cannot signal or
    ptrace our processes, and RLIMIT_NPROC (fork bombs) counts only its own worker's processes.
  - isolate (default when root and the kernel allows): per-worker network namespace (no interface but a down
    loopback: no network at all), pid namespace whose init kills everything a run left, and a mount namespace
    whose root holds only this whitelist, read-only: the system directories /usr, /bin, /sbin, /lib*, /etc; the
    interpreter's prefixes (standard library, virtual environment) and the import path's directories, less our
    own project (our packages are covered by empty directories wherever they would show); /proc and /sys; the
    devices null, zero, full, random, urandom; and empty private tmpfs /tmp, /var/tmp, /dev/shm (wiped after
    every run; a whitelisted path that lives under one of them shows there too, read-only). So the program
    cannot see the scorer's cwd, problem or sample files, the project's data, a training workdir or $HOME.
Not protected against:
  - Reading world-readable files inside the whitelist (keep answers out of the interpreter's directories),
    seeing host process lists in /proc; CPU side channels; kernel exploits. Without isolate: every
    world-readable file on the host.
  - Asserts the parser cannot handle run in the child (TestOutcome.detail starts with "in-child assert"). The
    program's functions are laundered through the wire format there, so always-equal objects still fail, but a
    program that deliberately reads the completion token from its pipe can forge a pass. Such tests are weaker.
  - Without root: the program runs as the calling user and can signal that user's processes (this one
    included), and RLIMIT_NPROC counts all of that user's processes.
"""

from __future__ import annotations

import json
import os
import queue
import reprlib
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from typing import Any, Callable, Sequence

from eval import _codec
from eval._jail import memory_cgroup_bases
from eval._worker import EXIT_SETUP_FAILED, recv, send
from eval.judge import Check, TooLarge, outputs_match, parse_assert, to_json_value, values_equal
from eval.problems import Judgement, Problem, Test, TestOutcome, Verdict

DEFAULT_LIMITS = {"nproc": 128, "fsize": 64 << 20, "nofile": 256, "output_bytes": 32 << 20}
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SPAWN_ENV = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "PYTHONPATH": _ROOT, "PYTHONDONTWRITEBYTECODE": "1",
              "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_IN_CHILD = "in-child assert (weaker: judged inside the program's process)"
_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 120, 120, 120
_FORGED = "the program wrote to the sandbox's result channel"
_FORGERIES = {"frames": _FORGED + ": more result frames than calls",
              "partial frame": _FORGED + ": bytes that make no whole frame"}


class SandboxError(RuntimeError):
    """A worker died, hung or could not start: our fault, never the program's."""


class Sandbox:
    """A pool of warm sandbox workers. `judge` gives one Judgement per (problem, program text), in order.

    stop_at_first_failure: True (scoring) judges a program's tests up to its first failure; False (rewards)
    judges all of them, so `Judgement.tests_passed / n_tests` is the fraction passed."""

    def __init__(self, workers: int | None = None, *, isolate: bool | None = None,
                 stop_at_first_failure: bool = True):
        self.n_workers = workers or os.cpu_count() or 1
        self.isolate = (os.geteuid() == 0) if isolate is None else isolate
        self.stop_at_first_failure = stop_at_first_failure
        self._required = isolate is True
        self._workers: list[_WorkerProcess] = []
        try:
            for i in range(self.n_workers):
                self._workers.append(_WorkerProcess(i, self.isolate))
            for w in self._workers:
                w.handshake()
        except BaseException:
            self.close()  # whatever started: no worker, cgroup or uid outlives a failed start
            raise
        self.protections = self._workers[0].protections
        self.child_runs = 0  # processes forked for tests so far (dedup and early stopping keep it low)
        self._lock = threading.Lock()
        self._judging = threading.Lock()  # one judge call at a time: each uses every worker's pipes
        self._warn_about_gaps()

    def _warn_about_gaps(self) -> None:
        p = self.protections
        if self._required and not p.get("pid_namespace"):
            self.close()
            raise SandboxError("isolate=True, but namespaces are not available here")
        gaps = [name for name, on in (("namespaces", p.get("pid_namespace")), ("memory cgroup", p.get("memory_cgroup")),
                                      ("unprivileged uid", p.get("unprivileged_uid") is not None)) if not on]
        if gaps:
            warnings.warn(f"sandbox runs without {', '.join(gaps)}; see eval/sandbox.py for what that leaves open",
                          RuntimeWarning, stacklevel=3)

    def judge(self, jobs: Sequence[tuple[Problem, str]],
              progress: Callable[[int], None] | None = None) -> list[Judgement]:
        """One Judgement per job, in order. Thread-safe: concurrent calls are served one after the other."""
        with self._judging:
            return self._judge(jobs, progress)

    def _judge(self, jobs: Sequence[tuple[Problem, str]], progress: Callable[[int], None] | None) -> list[Judgement]:
        results: list[Judgement | None] = [None] * len(jobs)
        unique: dict[tuple[int, str], list[int]] = {}
        for i, (problem, program) in enumerate(jobs):
            if not program.strip():
                results[i] = Judgement(Verdict.NO_CODE, tests=(), n_tests=len(problem.tests))
                progress and progress(1)
            else:
                unique.setdefault((id(problem), program), []).append(i)
        plans = self._plan_all([jobs[indices[0]][0] for indices in unique.values()])
        todo: queue.SimpleQueue = queue.SimpleQueue()
        queued = 0
        for indices in unique.values():
            plan = plans[id(jobs[indices[0]][0])]
            if isinstance(plan, Judgement):  # the tests themselves could not be planned
                for i in indices:
                    results[i] = plan
                progress and progress(len(indices))
            else:
                todo.put(indices)
                queued += 1
        done: queue.SimpleQueue = queue.SimpleQueue()
        threads = [threading.Thread(target=self._serve, args=(w, jobs, todo, done, plans), daemon=True)
                   for w in self._workers[: max(1, min(len(self._workers), queued))]]
        for t in threads:
            t.start()
        for indices, judgement in self._collect(done, threads, queued, todo, jobs):
            for i in indices:
                results[i] = judgement
            if progress:
                progress(len(indices))
        for t in threads:
            t.join()
        return results  # type: ignore[return-value]

    @staticmethod
    def _collect(done, threads, expected: int, todo, jobs):
        """Yields (indices, judgement) as the serving threads finish jobs. If every thread has stopped (its worker
        could not be restarted) while jobs remain, those jobs are SANDBOX_ERROR: a judge call never hangs."""
        received = 0
        while received < expected:
            try:
                item = done.get(timeout=1.0)
            except queue.Empty:
                if any(t.is_alive() for t in threads):
                    continue
                for item in _drain(done):  # what the last threads finished before stopping
                    received += 1
                    yield item
                for indices in _drain(todo):  # what no thread was left to start
                    received += 1
                    yield indices, _sandbox_error("no sandbox worker left to run this job",
                                                  len(jobs[indices[0]][0].tests))
                if received < expected:
                    raise SandboxError(f"{expected - received} job(s) lost by the sandbox workers") from None
                return
            received += 1
            yield item

    def _serve(self, worker: "_WorkerProcess", jobs, todo, done, plans) -> None:
        while True:
            try:
                indices = todo.get_nowait()
            except queue.Empty:
                return
            judgement = None
            for attempt in range(2):  # a job that hit our own failure is judged once more, on a fresh worker
                try:
                    judgement = self._judge_one(worker, jobs[indices[0]], plans)
                    break
                except Exception as e:  # noqa: BLE001 - never let one job take the batch down
                    judgement = _sandbox_error(f"{type(e).__name__}: {e}", len(jobs[indices[0]][0].tests))
                    warnings.warn(f"sandbox worker {worker.index} restarted after: {str(e)[:200]}"
                                  f"{'; judging the job again' if attempt == 0 else ''}", RuntimeWarning, stacklevel=1)
                    if not self._restart(worker):
                        done.put((indices, judgement))
                        return  # this worker is gone; the other threads carry on
            done.put((indices, judgement))

    @staticmethod
    def _restart(worker: "_WorkerProcess") -> bool:
        try:
            worker.restart()
            return True
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"sandbox worker {worker.index} could not be restarted: {e}", RuntimeWarning, stacklevel=1)
            return False

    @staticmethod
    def _plan_all(problems: Sequence[Problem]) -> dict[int, list | Judgement]:
        """Test plans of every problem, made here before any serving thread starts: CPython 3.11's `ast` is not
        safe to use from several threads at once (it raises "AST constructor recursion depth mismatch")."""
        plans: dict[int, list | Judgement] = {}
        for problem in problems:
            if id(problem) not in plans:
                try:
                    plans[id(problem)] = [_plan(t, problem) for t in problem.tests]
                except Exception as e:  # noqa: BLE001 - a test we cannot even read is our failure to report
                    plans[id(problem)] = _sandbox_error(f"could not plan the tests: {type(e).__name__}: {e}",
                                                        len(problem.tests))
        return plans

    def _judge_one(self, worker: "_WorkerProcess", job: tuple[Problem, str], plans: dict) -> Judgement:
        problem, program = job
        judge = _Judge(worker, problem, plans[id(problem)], self.stop_at_first_failure)
        judgement = judge.run(program)
        with self._lock:
            self.child_runs += judge.runs
        return judgement

    def close(self) -> None:
        for w in self._workers:
            w.close()
        self._workers = []

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _drain(q: queue.SimpleQueue):
    while True:
        try:
            yield q.get_nowait()
        except queue.Empty:
            return


def _sandbox_error(detail: str, n_tests: int = 0) -> Judgement:
    return Judgement(Verdict.SANDBOX_ERROR, (TestOutcome(Verdict.SANDBOX_ERROR, 0.0, 0.0, detail=detail[:300]),),
                     n_tests)


# ---------------------------------------------------------------- test plans


def _plan(test: Test, problem: Problem) -> list[Check] | Test:
    """A test as parent-judged checks where possible; else the test itself (stdio, call, in-child assert)."""
    if test.type == "assert":
        return parse_assert(test.code, problem.entry_point) or test
    return test


class _Judge:
    """Judges one program on one problem with one worker. All call-shaped tests (parsed asserts and "call" tests)
    share one child process, one call per step, as upstream harnesses run all asserts in one process; stdio
    tests and in-child asserts get a child each. Outcomes stop at the first failing test when `stop` is set."""

    def __init__(self, worker: "_WorkerProcess", problem: Problem, plans: list, stop: bool):
        self.worker, self.problem, self.plans, self.stop = worker, problem, plans, stop
        t = problem.time_limit_s
        self.limits = {"time_s": t, "wall_s": 3 * t + 1, "memory_mb": problem.memory_limit_mb}
        self.tol = problem.float_tolerance
        self.runs = 0

    def run(self, program: str) -> Judgement:
        self.source = f"{self.problem.setup_code}\n{program}" if self.problem.setup_code else program
        per_plan = [_calls_of(plan) for plan in self.plans]
        calls = [call for plan_calls in per_plan for call in plan_calls]
        raw = self._run({"kind": "calls", "calls": calls, "keep_going": not self.stop}) if calls else None
        n = len(self.plans)
        if raw is not None and "ce" in raw:
            return Judgement(Verdict.CE, (TestOutcome(Verdict.CE, 0.0, 0.0, detail=raw["ce"]),), n)
        run = _CallRun(raw, len(calls), self.limits) if raw is not None else None
        outcomes, first = [], 0
        for plan, plan_calls in zip(self.plans, per_plan):
            outcome = self._test(plan, run, range(first, first + len(plan_calls)))
            first += len(plan_calls)
            outcomes.append(outcome)
            if outcome.verdict is not Verdict.PASS and self.stop:
                break
        failed = next((o for o in outcomes if o.verdict is not Verdict.PASS), None)
        return Judgement(failed.verdict if failed else Verdict.PASS, tuple(outcomes), n)

    def _test(self, plan: list[Check] | Test, run: "_CallRun | None", steps: range) -> TestOutcome:
        if isinstance(plan, list):
            return self._checks(plan, run, steps)
        if plan.type == "call":
            expected = plan.expected
            accept = lambda v: values_equal(to_json_value(v), expected, self.tol, json_mode=True)  # noqa: E731
            return run.outcome(steps[0], accept)
        spec = {"kind": "stdio", "input": plan.input} if plan.type == "stdio" else {"kind": "assert", "code": plan.code}
        one = self._run(spec)
        if "ce" in one:  # the first run (one source, compiled once): nothing was judged before it
            return TestOutcome(Verdict.CE, 0.0, 0.0, detail=one["ce"])
        if plan.type == "stdio":
            return _step_outcome(one, 0, 1, self.limits, stdio=(plan.output, self.tol))
        return _step_outcome(one, 0, 1, self.limits, token=True)

    def _checks(self, checks: list[Check], run: "_CallRun", steps: range) -> TestOutcome:
        outcomes, step = [], iter(steps)
        for check in checks:
            actuals: list = []
            for _ in check.probes:
                outcomes.append(run.outcome(next(step), actuals.append))
                if outcomes[-1].verdict is not Verdict.PASS:
                    return _merge(outcomes)
            try:
                ok, why = check.holds(actuals, self.tol), ""
            except TooLarge as e:  # refused before doing the work: the check cannot hold
                ok, why = False, f" ({e})"
            except Exception:  # noqa: BLE001 - e.g. len() of an int: the assert fails, as it would in Python
                ok, why = False, ""
            if not ok:
                return _merge(outcomes, Verdict.WA, f"assert {check.text}"[:280] + why)
        return _merge(outcomes)

    def _run(self, spec: dict) -> dict:
        self.runs += 1
        return self.worker.call({"op": "run", "source": self.source, "limits": self.limits, **spec})


class _CallRun:
    """The outcomes of one child run of calls, step by step. Steps after the one that ended the run early (a
    limit, an exit, an error when stopping at the first failure) were never run: they fail with its verdict."""

    def __init__(self, raw: dict, n_steps: int, limits: dict):
        self.raw, self.n_steps, self.limits = raw, n_steps, limits

    def outcome(self, i: int, accept: Callable[[Any], Any]) -> TestOutcome:
        reached = len(self.raw["frames"])
        if i <= reached:
            return _step_outcome(self.raw, i, self.n_steps, self.limits, accept)
        ended = _step_outcome(self.raw, reached, self.n_steps, self.limits, accept)
        return TestOutcome(ended.verdict, 0.0, 0.0, 0.0, f"not run: the program's process ended at an earlier test "
                                                          f"({ended.detail})"[:300])


def _calls_of(plan: list[Check] | Test) -> list[dict]:
    if isinstance(plan, list):
        return [{"fn_name": p.fn_name, "args": _codec.encode((p.args, dict(p.kwargs)))}
                for check in plan for p in check.probes]
    if plan.type == "call":
        return [{"fn_name": plan.fn_name, "args": _codec.encode((tuple(plan.args), {}))}]
    return []


def _merge(outcomes, verdict: Verdict | None = None, detail: str = "") -> TestOutcome:
    """Several steps of one test as one outcome: the first failure (or `verdict`), summed time, max memory."""
    failed = next((o for o in outcomes if o.verdict is not Verdict.PASS), None)
    final = failed.verdict if failed else (verdict or Verdict.PASS)
    return TestOutcome(final, round(sum(o.time_s for o in outcomes), 4),
                       max((o.peak_mem_mb for o in outcomes), default=0.0), round(sum(o.wall_s for o in outcomes), 4),
                       failed.detail if failed else detail)


# ---------------------------------------------------------------- verdicts from raw results


def _step_outcome(raw: dict, i: int, n_steps: int, limits: dict, accept: Callable[[Any], Any] | None = None,
                  stdio: tuple[str, float] | None = None, token: bool = False) -> TestOutcome:
    """The verdict of step `i` of `n_steps` in a child run: its own frame if it finished, else how the process
    ended. Times are the kernel's counters at the frames; the last step runs to the end of the process, so the
    steps add up to everything the process used."""
    frames = raw["frames"]
    prev = frames[i - 1] if 0 < i <= len(frames) else {"cpu_s": 0.0, "wall_s": 0.0}
    if raw["killed"] in _FORGERIES:  # the whole run is void, whatever its frames say
        return TestOutcome(Verdict.RE, round(raw["cpu_s"], 4), round(raw["peak_mb"], 2), round(raw["wall_s"], 4),
                           _FORGERIES[raw["killed"]])
    if i < len(frames) and not (stdio or token):
        f = raw if i == n_steps - 1 and not raw["killed"] else frames[i]
        cpu, wall, peak = f["cpu_s"] - prev["cpu_s"], f["wall_s"] - prev["wall_s"], f["peak_mb"]
        verdict, detail = _frame_verdict(frames[i]["data"], cpu, limits, accept)
    else:
        cpu, wall, peak = raw["cpu_s"] - prev["cpu_s"], raw["wall_s"] - prev["wall_s"], raw["peak_mb"]
        verdict, detail = _limit_verdict(raw, cpu, frames[i]["data"] if i < len(frames) else b"", limits)
        if verdict is None and frames and frames[0]["data"][:1] not in (b"T" if token else b"D", b"E"):
            verdict, detail = Verdict.RE, _FORGED + ": a frame the sandbox never writes"
        if verdict is None:
            verdict, detail = _clean_exit_verdict(raw, frames, stdio, token)
    return TestOutcome(verdict, round(max(cpu, 0.0), 4), round(peak, 2), round(max(wall, 0.0), 4), detail)


def _frame_verdict(data: bytes, cpu: float, limits: dict, accept) -> tuple[Verdict, str]:
    if cpu > limits["time_s"]:
        return Verdict.TLE, f"CPU time {cpu:.2f}s > {limits['time_s']}s"
    error = _error(data)
    if error:
        return _error_verdict(error)
    if data.startswith(b"X"):
        return Verdict.WA, "return value cannot be compared: " + data[1:200].decode(errors="replace")
    if not data.startswith(b"V"):
        return Verdict.RE, _FORGED + ": a frame the sandbox never writes"
    try:
        value = _codec.decode(data[1:])
    except _codec.WireError as e:
        return Verdict.WA, str(e)
    if accept(value) is False:
        return Verdict.WA, f"got {_short(value)}"
    return Verdict.PASS, ""


def _limit_verdict(raw: dict, cpu: float, data: bytes, limits: dict) -> tuple[Verdict | None, str]:
    """Limits and crashes of the process, in order of precedence; None when it exited cleanly."""
    code, error = raw["exit_code"], _error(data)
    if code == EXIT_SETUP_FAILED and not raw["frames"]:
        return Verdict.SANDBOX_ERROR, "sandbox set-up failed: " + raw["err"][-300:].decode(errors="replace")
    if raw["killed"] == "output":
        return Verdict.OLE, "output limit exceeded"
    if raw["killed"] == "wall":
        return Verdict.TLE, f"wall-clock limit {limits['wall_s']:.1f}s"
    if raw["killed"] == "cpu" or cpu > limits["time_s"] or code == -signal.SIGXCPU:
        return Verdict.TLE, f"CPU time {cpu:.2f}s > {limits['time_s']}s"
    if raw["oom"] or (error and error["type"] == "MemoryError"):
        return Verdict.MLE, f"memory limit {limits['memory_mb']} MB"
    if code < 0:
        return Verdict.RE, f"killed by {signal.Signals(-code).name}"
    if error:
        return _error_verdict(error)
    if code != 0:
        return Verdict.RE, f"exit code {code}: " + raw["err"][-200:].decode(errors="replace")
    return None, ""


def _clean_exit_verdict(raw: dict, frames: list, stdio, token: bool) -> tuple[Verdict, str]:
    if stdio:
        actual = raw["out"].decode(errors="replace")
        ok = outputs_match(actual, *stdio)
        return (Verdict.PASS, "") if ok else (Verdict.WA, f"got {_short(actual)}")
    if token:
        return (Verdict.PASS, _IN_CHILD) if raw["token_ok"] else (Verdict.WA, _IN_CHILD + ": no completion token")
    return Verdict.RE, "the program exited without returning"


def _error(data: bytes) -> dict | None:
    if not data.startswith(b"E"):
        return None
    try:
        error = json.loads(data[1:])
        return {"type": str(error["type"]), "msg": str(error["msg"])[:300]}
    except (ValueError, KeyError, TypeError):
        return {"type": "Exception", "msg": "malformed error report"}


def _error_verdict(error: dict) -> tuple[Verdict, str]:
    kinds = {"MemoryError": Verdict.MLE, "AssertionError": Verdict.WA}
    return kinds.get(error["type"], Verdict.RE), error["msg"]


def _short(value: Any) -> str:
    """A bounded repr for details: reprlib cuts long containers and strings before building their text."""
    try:
        text = _REPR.repr(value)
    except ValueError:  # an int past the int-to-str digit limit, maybe deep inside
        text = f"<{type(value).__name__} holding an int too long to print>"
    return text if len(text) <= 120 else text[:117] + "..."


# ---------------------------------------------------------------- worker processes


class _WorkerProcess:
    """One warm worker (eval/_worker.py) and the pipe protocol to it; restarted if it dies or hangs."""

    reply_margin_s = 30.0  # beyond the longest a run may take, before the worker counts as hung

    def __init__(self, index: int, isolate: bool):
        self.index, self.isolate = index, isolate
        self.uid = allocate_uid() if os.geteuid() == 0 else None  # kept across restarts, released by close()
        self.cgroup_name = f"algoforge-sandbox-{os.getpid()}-{uuid.uuid4().hex[:8]}-{index}"
        self.protections: dict = {}
        try:
            self._spawn()
        except BaseException:
            release_uid(self.uid)
            raise

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from eval._worker import main; main()"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=_SPAWN_ENV, cwd="/", start_new_session=True)
        self._w, self._r = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        send(self._w, {"isolate": self.isolate, "uid": self.uid, "cgroup_name": self.cgroup_name,
                       "limits": DEFAULT_LIMITS})

    def handshake(self) -> None:
        reply = self._recv(timeout=120.0)
        if "error" in reply:
            raise SandboxError(f"sandbox worker {self.index} could not start: {reply['error']}")
        self.protections = reply["protections"]

    def call(self, msg: dict) -> dict:
        # The wall limit restarts at every call of a run (the worker resets its clock per call), so a run may take
        # that limit once per call.
        timeout = msg["limits"]["wall_s"] * max(1, len(msg.get("calls", ()))) + self.reply_margin_s
        send(self._w, msg)
        reply = self._recv(timeout)
        if "error" in reply:
            raise SandboxError(f"worker {self.index} failed: {reply['error']}")
        return reply

    def _recv(self, timeout: float) -> dict:
        ready, _, _ = select.select([self._r], [], [], timeout)
        if not ready:
            raise SandboxError(f"worker {self.index} did not answer within {timeout:.0f}s")
        try:
            return recv(self._r)
        except (EOFError, OSError) as e:
            raise SandboxError(f"worker {self.index} died: {e}") from None

    def restart(self) -> None:
        self._stop()
        self._spawn()
        self.handshake()

    def close(self) -> None:
        self._stop()
        release_uid(self.uid)

    def _stop(self) -> None:
        if self.proc.poll() is None:
            try:
                send(self._w, {"op": "quit"})
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            f.close()
        # A worker that failed its start never told us its cgroup: look where it would have made it (its own
        # cgroup is ours, inherited).
        known = self.protections.get("memory_cgroup")
        for path in [known] if known else [os.path.join(b, self.cgroup_name) for b, _ in memory_cgroup_bases()]:
            _remove_cgroup(path)


UIDS_PER_PROCESS = 1000
_UID_BASE = 1_000_000
_uids_in_use: set[int] = set()
_uids_lock = threading.Lock()


def allocate_uid() -> int:
    """A sandbox uid that no other live worker on this host has: process `pid` owns the block
    [_UID_BASE + pid * UIDS_PER_PROCESS, + UIDS_PER_PROCESS) (pids stay below 2**22, so every block is below
    2**32 - 1), and hands out its lowest free uid, whatever the sandbox or worker count."""
    first = _UID_BASE + os.getpid() * UIDS_PER_PROCESS
    with _uids_lock:
        uid = next((u for u in range(first, first + UIDS_PER_PROCESS) if u not in _uids_in_use), None)
        if uid is None:
            raise SandboxError(f"more than {UIDS_PER_PROCESS} sandbox workers alive in one process")
        _uids_in_use.add(uid)
    return uid


def release_uid(uid: int | None) -> None:
    with _uids_lock:
        _uids_in_use.discard(uid)


def _remove_cgroup(path: str | None) -> None:
    """The worker lives in its cgroup, so only we can remove it, once the worker and its reaper are gone."""
    for _ in range(100):
        if not path or not os.path.isdir(path):
            return
        try:
            os.rmdir(path)
        except OSError:
            time.sleep(0.01)
    warnings.warn(f"could not remove the sandbox cgroup {path}", RuntimeWarning, stacklevel=2)
