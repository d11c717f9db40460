"""A sandbox worker: a warm interpreter that forks one contained process per test run and reports what it did.

The worker is trusted: it never runs user code itself, only forks children that do. It never receives expected
outputs either, only the program and test inputs (one stdin, one assert, or the arguments of a list of calls), so
nothing the child can read holds the answer. The parent (`eval/sandbox.py`) talks to it over stdin/stdout with
length-prefixed pickle frames.

Ops: {"op": "run", "source", "limits", "kind", ...} compiles the program (once per distinct source; a compile
error is the reply {"ce"}), forks one child that runs it on the test inputs and replies with a raw result (exit
status, CPU and wall time, peak memory, captured output, the child's result frames); {"op": "quit"}. A worker that
cannot set itself up answers the handshake with {"error": reason} instead of its protections.

Budgets: a run of n calls gets n times the per-call CPU and wall limits, fixed before the child starts (RLIMIT_CPU
and one deadline), and accepts at most n result frames (one for a stdio or in-child assert run): nothing the child
writes extends its time, and a child that writes more is killed and blamed.
"""

from __future__ import annotations

import fcntl
import gc
import importlib.util
import io
import json
import os
import pickle
import resource
import selectors
import signal
import struct
import sys
import time
import traceback
import types

from eval import _codec, _jail

# Imported once in the worker, so forked children find them loaded. numpy is left out on purpose: its ~20 MB of
# mappings make every fork and exit slower (about 1 ms a run, measured), no MBPP or HumanEval reference imports
# it, and a program that does pays the import (~0.1 s) itself and still passes.
WARM_MODULES = ("math", "re", "collections", "itertools", "heapq", "functools", "bisect", "string", "typing",
                "fractions", "decimal", "statistics", "random", "operator", "copy", "array", "datetime")
CHILD_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/tmp",
             "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8", "OPENBLAS_NUM_THREADS": "1",
             "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
FD_RESULT, FD_TOKEN = 3, 4
EXIT_SETUP_FAILED = 121  # the child failed before user code ran: our fault
READ_CHUNK = 1 << 16
CPU_POLL_S = 0.25  # how often a step's CPU time is checked while the child writes nothing
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- framing


def send(fd: int, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    _write_all(fd, struct.pack("<Q", len(data)) + data)


def recv(fd: int):
    (n,) = struct.unpack("<Q", _read_exact(fd, 8))
    return pickle.loads(_read_exact(fd, n))


def _read_exact(fd: int, n: int) -> bytes:
    parts, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("peer closed the pipe")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# ---------------------------------------------------------------- the worker


class Worker:
    def __init__(self, config: dict):
        self.isolate, self.uid, self.limits = config["isolate"], config["uid"], config["limits"]
        self.protections: dict[str, object] = {}
        self.init_pid = None
        needed, hidden = interpreter_paths(), project_paths()
        if self.isolate:
            _jail.enter_namespaces(needed, hidden)
            self.protections.update(net_namespace=True, mount_namespace=True, read_only_root=_jail.read_only_root())
        self.base = _jail.make_scratch_base()
        try:
            self._set_up(config, needed)
        except BaseException:
            _jail.remove_tree(self.base)  # (on the host's /tmp without namespaces)
            raise

    def _set_up(self, config: dict, needed: list[str]) -> None:
        self.keep = {self.base, *(_jail.scratch_mount_roots() if self.isolate else ())}
        self.tmp = os.path.join(self.base, "run")  # each run's cwd, made afresh and removed after the run
        _set_child_environment(self.tmp)  # inherited by every child, like the signal dispositions below
        _default_signals()
        self.cgroup = _jail.MemoryCgroup.create(config["cgroup_name"])
        if self.cgroup:  # the worker lives in the cgroup it limits; its children are the OOM killer's first pick
            self.cgroup.join()
        self.protections["memory_cgroup"] = self.cgroup.path if self.cgroup else None
        self.memory_limit = None
        self.oom_kills = self.cgroup.oom_kills() if self.cgroup else 0
        if not self.isolate and self.uid is not None and _jail.closed_ancestors(needed):
            self.uid = None  # the interpreter lives where others cannot read (e.g. /root): keep our uid, loudly
        self.protections["unprivileged_uid"] = self.uid
        if self.isolate:
            self._start_pid_namespace()
        else:
            _jail.become_subreaper()
        self.protections["pid_namespace"] = self.init_pid is not None
        self.source = self.code = self.loaded = None

    def _start_pid_namespace(self) -> None:
        """The next child becomes pid 1 of a new pid namespace: a reaper that, on request, kills everything else
        in the namespace (kill(-1) from inside reaches exactly the processes a test left behind)."""
        _jail.unshare(_jail.CLONE_NEWPID)
        cmd_r, self.cmd_w = os.pipe()
        self.ack_r, ack_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            _reaper(cmd_r, ack_w)
        os.close(cmd_r)
        os.close(ack_w)
        self.init_pid = pid

    def close(self) -> None:
        if self.cgroup:
            self.cgroup.close()
        _jail.remove_tree(self.base)  # the cgroup is removed by the parent: we are still in it

    # -------------------------------------------------------- ops

    def load(self, source: str) -> dict:
        """Compile the program once per distinct source; {"ok": False, "detail"} is a CE."""
        if source == self.source:
            return self.loaded
        self.source, self.code = source, None
        try:
            self.code = compile(source, "solution.py", "exec", dont_inherit=True)
            self.loaded = {"ok": True}
        except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError) as e:
            self.loaded = {"ok": False, "detail": f"{type(e).__name__}: {e}"[:500]}
        return self.loaded

    def run(self, spec: dict) -> dict:
        loaded = self.load(spec["source"])
        if not loaded["ok"]:
            return {"ce": loaded["detail"]}
        tmp = self.tmp
        os.mkdir(tmp, 0o700)
        if self.uid is not None:
            os.chown(tmp, self.uid, self.uid)
        try:
            return self._run_in(tmp, spec)
        finally:
            _jail.remove_tree(tmp)
            if self.isolate:
                _jail.wipe_scratch(keep=self.keep)

    def _run_in(self, tmp: str, spec: dict) -> dict:
        limits = {**self.limits, **spec["limits"]}
        if self.cgroup:
            self._set_memory_limit(limits)
        stdin_fd = _stdin_fd(spec.get("input"))
        pipes = {name: os.pipe() for name in ("out", "err", "res", "tok")}
        token = os.urandom(16)  # (not `secrets`: it loads OpenSSL into every fork)
        _write_all(pipes["tok"][1], token)  # before the fork: the child may be gone before we could write
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            self._child(tmp, spec, limits, stdin_fd, pipes)
        os.close(stdin_fd)
        for name, (r, w) in pipes.items():
            os.close(w)
        os.close(pipes["tok"][0])
        raw = _collect(pid, {n: pipes[n][0] for n in ("out", "err", "res")}, limits, start, _steps(spec))
        raw["token_ok"] = [f["data"] for f in raw["frames"]] == [b"T" + token]
        self._sweep()
        if self.cgroup:  # only our children run in the cgroup, so the count after the last run is the baseline
            oom_kills, self.oom_kills = self.oom_kills, self.cgroup.oom_kills()
            raw["oom"] = self.oom_kills > oom_kills
        return raw

    def _set_memory_limit(self, limits: dict) -> None:
        """The cgroup limit: what the worker holds now (rounded up to 4 MiB, so it is rewritten only when the
        worker really grew), plus the run's allowance, plus room for the output it buffers for us."""
        held = -(-self.cgroup.usage() // (4 << 20)) * (4 << 20)
        limit = held + (limits["memory_mb"] << 20) + 3 * limits["output_bytes"]
        if limit != self.memory_limit:
            self.cgroup.set_limit(limit)
            self.memory_limit = limit

    def _sweep(self) -> None:
        """Kill whatever the test left running: orphans, double-forked daemons, fork-bomb remains."""
        if self.init_pid is not None:
            os.write(self.cmd_w, b"s")
            if os.read(self.ack_r, 1) != b"k":
                raise RuntimeError("the pid-namespace reaper died")
            return
        _sweep_descendants()

    # -------------------------------------------------------- the child

    def _child(self, tmp, spec, limits, stdin_fd, pipes) -> None:
        try:
            self._contain(tmp, limits, _steps(spec), stdin_fd, pipes)
        except BaseException:  # noqa: BLE001 - report anything as our own failure, never the program's
            traceback.print_exc()
            os._exit(EXIT_SETUP_FAILED)
        _run_user_code(self.code, spec)

    def _contain(self, tmp, limits, steps, stdin_fd, pipes) -> None:
        """Everything here runs once per test, in a fresh copy of the worker: each first touch of a page of the
        warm heap costs a copy-on-write fault, so the steps are the cheapest kernel-level ones (the environment
        and signal dispositions are already right in the worker, and inherited)."""
        os.setsid()
        if self.init_pid is None:  # in a pid namespace the kernel kills us when its init (the reaper) dies
            _jail.die_with_parent()
        _jail.set_oom_score_adj(1000)
        os.chdir(tmp)
        sources = (stdin_fd, pipes["out"][1], pipes["err"][1], pipes["res"][1], pipes["tok"][0])
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in sources]  # out of the way of the targets below
        for target, fd in zip((0, 1, 2, FD_RESULT, FD_TOKEN), high):
            os.dup2(fd, target)
        os.closerange(FD_TOKEN + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        memory = None if self.cgroup else _address_space_limit(limits["memory_mb"])
        _jail.set_rlimits(limits["time_s"] * steps, memory, limits["nproc"], limits["fsize"], limits["nofile"])
        if self.uid is not None:
            _jail.drop_privileges(self.uid)
        sys.set_int_max_str_digits(0)  # huge ints print as they did before Python 3.11
        _fresh_stdio()


def interpreter_paths() -> list[str]:
    """What a program may see of this interpreter: its prefixes (standard library, the virtual environment) and
    the import path's other directories, less those at or above our own project (PYTHONPATH, an editable
    install's source tree), which hold the benchmark data. (Our packages inside a prefix, as a non-editable
    install puts them, are hidden by `project_paths`.)"""
    root = _project_root()
    prefixes = {sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix}
    others = {p for p in sys.path if p and os.path.isdir(p) and not _is_within(root, os.path.abspath(p))}
    return sorted(set(map(os.path.abspath, prefixes | others)))


def project_paths() -> list[str]:
    """Our own packages (and their data), hidden wherever an interpreter path shows them (a non-editable
    install puts them inside site-packages), and our source tree when we run from one (a clone inside an
    interpreter prefix, say)."""
    found = [os.path.dirname(os.path.abspath(__file__))]
    if os.path.basename(_project_root()) not in ("site-packages", "dist-packages"):
        found.append(_project_root())
    spec = importlib.util.find_spec("algoforge_jax")  # located, not imported: that would load JAX
    found += list(spec.submodule_search_locations or ()) if spec else []
    return sorted({os.path.realpath(p) for p in found} | set(found))


def _project_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _is_within(path: str, ancestor: str) -> bool:
    return path == ancestor or path.startswith(ancestor.rstrip("/") + "/")


def _steps(spec: dict) -> int:
    """How many steps (result frames, per-call budgets) a run has: its calls, or one."""
    return max(1, len(spec["calls"])) if spec["kind"] == "calls" else 1


def _set_child_environment(tmp: str) -> None:
    """The worker's own environment becomes the scrubbed one its children inherit. (The worker needs none of
    what it was started with once its imports are done.)"""
    os.environ.clear()
    os.environ.update(CHILD_ENV, TMPDIR=tmp)


def _default_signals() -> None:
    """Dispositions as a fresh `python` has them, whatever ignored signals our own parent passed down through exec
    (say SIGHUP under nohup)."""
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _address_space_limit(memory_mb: int) -> int:
    """Without a memory cgroup, the fallback: the warm interpreter's own mapping plus twice the allowance (room
    for a big thread stack); coarse, and documented as such in eval/sandbox.py."""
    with open("/proc/self/statm") as f:
        vsz = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    return vsz + 2 * (memory_mb << 20)


def _stdin_fd(text: str | None) -> int:
    if text is None:
        return os.open(os.devnull, os.O_RDONLY)
    fd = os.memfd_create("stdin")
    _write_all(fd, text.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _fresh_stdio() -> None:
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.open(0, "rb", closefd=False), encoding="utf-8")
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.open(1, "wb", closefd=False), encoding="utf-8")
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.open(2, "wb", closefd=False), encoding="utf-8",
                                                   errors="backslashreplace", line_buffering=True)
    sys.argv = ["solution.py"]


# ---------------------------------------------------------------- collecting one run


def _collect(pid: int, fds: dict[str, int], limits: dict, start: float, steps: int) -> dict:
    """Drain stdout, stderr and the result pipe concurrently until the child exits or a limit is hit. Each result
    frame (one per step) is stamped with the child's CPU time, wall time and peak memory so far, as the kernel
    counts them. The run's budget is fixed: `steps` times the per-step wall limit from the start (and RLIMIT_CPU
    at `steps` times the CPU limit, set in the child). Within it each step also has its own limits, from the
    previous frame on, so a call that hangs is stopped after one limit; frames can only end steps, and a frame
    past the `steps`-th kills the child ("frames")."""
    caps = {"out": limits["output_bytes"], "err": limits["output_bytes"], "res": limits["output_bytes"]}
    bufs = {name: bytearray() for name in fds}
    frames: list[dict] = []
    pidfd = os.pidfd_open(pid)
    live = _LiveCounters(pid)
    sel = selectors.DefaultSelector()
    for name, fd in fds.items():
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, name)
    sel.register(pidfd, selectors.EVENT_READ, None)
    run_deadline = start + limits["wall_s"] * steps
    step_start, step_cpu = start, 0.0  # where the current step began: the start, then its previous frame
    killed = None
    while killed is None:
        now = time.monotonic()
        deadline = min(run_deadline, step_start + limits["wall_s"])
        if now >= deadline:
            killed = "wall"
            break
        events = sel.select(min(deadline - now, CPU_POLL_S))
        if any(key.data is None for key, _ in events):
            break  # the child exited; what it wrote is still in the pipes, read below
        for key, _ in events:
            if not _drain(key.fd, bufs[key.data], caps[key.data], sel):
                killed = "output"
        if killed is None:
            seen = len(frames)
            _new_frames(bufs["res"], frames, live.read, start)
            if len(frames) > steps:
                killed = "frames"
            elif len(frames) > seen:
                step_start, step_cpu = time.monotonic(), frames[-1]["cpu_s"] or step_cpu
            elif (live.read()[0] or 0.0) - step_cpu > limits["time_s"]:
                killed = "cpu"
    _kill(pid)  # the child, or what is left of its process group; before wait4, while the pid is still ours
    _, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - start
    for name, fd in fds.items():
        if fd in sel.get_map() and not _drain(fd, bufs[name], caps[name], sel, final=True):
            killed = killed or "output"
        os.close(fd)
    sel.close()
    os.close(pidfd)
    live.close()
    final_cpu, final_peak = usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024
    if killed is None:  # a frame completed by the chunk that broke the output cap does not count
        _new_frames(bufs["res"], frames, lambda: (final_cpu, final_peak), start)
        if len(frames) > steps:
            killed = "frames"
        elif bufs["res"] and os.WIFEXITED(status):  # bytes that make no whole frame, not cut by a kill
            killed = "partial frame"
    del frames[steps:]
    for frame in frames:  # frames read while the child was already a zombie: /proc had no counters left
        if frame["cpu_s"] is None:
            frame.update(cpu_s=final_cpu, peak_mb=final_peak)
    return _raw_result(status, final_cpu, final_peak, wall, killed, bufs, frames)


def _new_frames(buf: bytearray, frames: list[dict], counters, start: float) -> None:
    """Cut complete frames (8-byte length + payload) off the result buffer; stamp each with `counters()`."""
    while len(buf) >= 8:
        (n,) = struct.unpack("<Q", buf[:8])
        if len(buf) < 8 + n:
            break
        cpu, peak = counters()
        frames.append({"data": bytes(buf[8:8 + n]), "cpu_s": cpu, "wall_s": time.monotonic() - start,
                       "peak_mb": peak})
        del buf[:8 + n]


class _LiveCounters:
    """Cumulative CPU seconds and peak RSS (MB) of a live child, from its /proc files: opened once per run (the
    pid is ours until we reap it) and re-read in place at each frame. (None, None) once the child has exited: a
    zombie's /proc entry has no memory counters, and the caller fills such frames from the rusage of wait4."""

    def __init__(self, pid: int):
        self.fds: list[int] = []
        try:
            for name in ("stat", "status"):
                self.fds.append(os.open(f"/proc/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:  # not expected while the pid is unreaped; then every frame takes wait4's counters
            self.close()

    def read(self) -> tuple[float | None, float | None]:
        if len(self.fds) != 2:
            return None, None
        try:
            stat, status = (os.pread(fd, 8192, 0) for fd in self.fds)
            fields = stat.rsplit(b")", 1)[1].split()
            at = status.find(b"\nVmHWM:")
            if at < 0:
                return None, None
            hwm = int(status[at + 7:status.index(b"\n", at + 1)].split()[0])
            return sum(int(x) for x in fields[11:15]) / _CLK_TCK, hwm / 1024
        except (OSError, IndexError, ValueError):
            return None, None

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def _drain(fd: int, buf: bytearray, cap: int, sel, final: bool = False) -> bool:
    """Read what is available; False when the cap is exceeded. Unregisters the fd at EOF."""
    while True:
        try:
            chunk = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return True
        if not chunk:
            sel.unregister(fd)
            return True
        buf += chunk
        if len(buf) > cap:
            sel.unregister(fd)
            return False
        if not final:
            return True


def _kill(pid: int) -> None:
    for fn, target in ((os.killpg, pid), (os.kill, pid)):
        try:
            fn(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _raw_result(status: int, cpu_s: float, peak_mb: float, wall: float, killed: str | None, bufs: dict,
                frames: list[dict]) -> dict:
    return {
        "exit_code": os.waitstatus_to_exitcode(status),  # negative: killed by that signal
        "cpu_s": cpu_s,
        "wall_s": wall,
        "peak_mb": peak_mb,
        "killed": killed,
        "out": bytes(bufs["out"]),
        "err": bytes(bufs["err"][-2000:]),
        "frames": frames,
    }


def _sweep_descendants() -> None:
    """Without a pid namespace: as a child subreaper we inherit every orphan; kill and reap until none is left."""
    me = str(os.getpid())
    while True:
        kids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(p) == me]
        if not kids:
            return
        for kid in kids:
            _kill(kid)
            try:
                os.waitpid(kid, 0)
            except ChildProcessError:
                pass


def _ppid(pid: str) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[1].decode()
    except (OSError, IndexError):
        return None


def _reaper(cmd_r: int, ack_w: int) -> None:
    """pid 1 of the worker's pid namespace: on each request, kill every other process in it and reap them all."""
    try:
        _jail.die_with_parent()
        for fd in map(int, os.listdir("/proc/self/fd")):
            if fd > 2 and fd not in (cmd_r, ack_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
        while os.read(cmd_r, 1):
            while True:
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    os.waitpid(-1, 0)
                except ChildProcessError:
                    break
            os.write(ack_w, b"k")
    finally:
        os._exit(0)


# ---------------------------------------------------------------- what runs in the child


def _run_user_code(code, spec: dict) -> None:
    """Run the program on one test (stdio, assert) or on a list of calls; one frame on FD_RESULT per step."""
    kind = spec["kind"]
    name = "__main__" if kind == "stdio" else "solution"
    module = types.ModuleType(name)
    module.__file__ = "solution.py"
    sys.modules[name] = module
    g = module.__dict__
    try:
        if kind == "stdio":
            _exit(_run_stdio(code, g))
        exec(code, g)
        if kind == "calls":
            for call in spec["calls"]:
                _report_call(g, call, spec.get("keep_going", False))
        else:
            _report_assert(g, spec["code"])
    except BaseException as e:  # noqa: BLE001 - the program's failure, reported as such
        _report_exception(e)
        _exit(1)
    _exit(0)


def _run_stdio(code, g: dict) -> int:
    exit_code, failed = 0, False
    try:
        exec(code, g)
    except SystemExit as e:
        exit_code = _system_exit_code(e)
    except BaseException as e:  # noqa: BLE001
        _report_exception(e)
        failed, exit_code = True, 1
    try:
        import atexit

        atexit._run_exitfuncs()  # legit programs flush buffered output from atexit hooks
        sys.stdout.flush()
    except BaseException:  # noqa: BLE001 - e.g. the output limit hit while flushing
        exit_code = exit_code or 1
    if not failed and exit_code == 0:
        _result(b"D")
    return exit_code


def _system_exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    print(e.code, file=sys.stderr)
    return 1


def _report_call(g: dict, call: dict, keep_going: bool) -> None:
    """One call's frame. With `keep_going` an exception is that call's result and the next call still runs (a
    reward counts every test); else it ends the run."""
    try:
        fn = g.get(call["fn_name"])
        if fn is None:
            raise NameError(f"name {call['fn_name']!r} is not defined")
        args, kwargs = _codec.decode(call["args"])
        value = fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - the program's failure, reported as such
        if not keep_going:
            raise
        _report_exception(e)
        return
    try:
        data = _codec.encode(value)
    except (ValueError, TypeError, RecursionError) as e:
        _result(b"X" + f"{type(e).__name__}: {e}".encode()[:300])
        return
    _result(b"V" + data)


def _report_assert(g: dict, test_code: str) -> None:
    """Run benchmark test code that could not be parsed, against laundered functions; then echo the completion
    token, which is only read from its pipe once the test code has finished."""
    tg = dict(g)
    for key, obj in g.items():
        if isinstance(obj, types.FunctionType) and obj.__module__ == g["__name__"]:
            tg[key] = _laundered(obj)
    exec(compile(test_code, "test.py", "exec", dont_inherit=True), tg)
    token = os.read(FD_TOKEN, 64)
    _result(b"T" + token)


def _laundered(fn):
    """What the program's function returns, passed through the wire format: no always-equal objects survive."""

    def call(*args, **kwargs):
        return _codec.decode(_codec.encode(fn(*args, **kwargs)))

    call.__name__ = getattr(fn, "__name__", "f")
    return call


def _report_exception(e: BaseException) -> None:
    try:
        traceback.print_exception(e, file=sys.stderr)
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001
        pass
    kind = type(e).__name__ if type(e) in (MemoryError, AssertionError, RecursionError) else "Exception"
    _result(b"E" + json.dumps({"type": kind, "msg": f"{type(e).__name__}: {e}"[:300]}).encode())


def _result(data: bytes) -> None:
    try:
        _write_all(FD_RESULT, struct.pack("<Q", len(data)))
        _write_all(FD_RESULT, data)  # not concatenated: a large result would be copied once more
    except OSError:
        pass


def _exit(code: int) -> None:
    try:
        sys.stdout.flush()
    except BaseException:  # noqa: BLE001
        pass
    os._exit(code)


# ---------------------------------------------------------------- main


def main() -> None:
    # Single-threaded numeric libraries: forked children must not inherit half-started thread pools. (Set here,
    # not at import: the parent imports this module for its framing and keeps its own settings.)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = "1"
    rfd, wfd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)  # a stray print in the worker must not corrupt the protocol
    for mod in WARM_MODULES:
        try:
            __import__(mod)
        except ImportError:
            pass
    try:
        worker = Worker(recv(rfd))
    except Exception as e:  # noqa: BLE001 - the parent raises it as a SandboxError with this reason
        send(wfd, {"error": f"{type(e).__name__}: {e}"})
        return
    send(wfd, {"protections": worker.protections})
    gc.freeze()  # keep the warm heap's pages shared with every forked child
    try:
        while True:
            msg = recv(rfd)
            if msg["op"] == "quit":
                break
            try:
                reply = worker.run(msg)
            except Exception:  # noqa: BLE001 - our bug: tell the parent, which reports SANDBOX_ERROR
                reply = {"error": traceback.format_exc(limit=-3)}
            send(wfd, reply)
    except EOFError:
        pass
    finally:
        worker.close()


if __name__ == "__main__":
    main()
