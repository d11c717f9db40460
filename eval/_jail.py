"""Kernel containment for one sandbox worker and the test processes it forks: namespaces, mounts, cgroups, rlimits.

Everything here is enforced by the kernel; nothing relies on Python-level monkeypatching inside the child. Which
mechanisms are available depends on the machine; `Jail.protections` says which ones are on, and `eval/sandbox.py`
documents what each mode guarantees.
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import signal
import tempfile

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 32, 4096, 8192, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # the world-writable places; each gets a private tmpfs
_KEEP_RW = ("/proc", "/sys", "/dev")  # pseudo filesystems; nothing there is writable by the sandbox uid
_MOUNT_FLAGS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), "prctl")


# ---------------------------------------------------------------- worker-wide setup (namespaces, mounts)


SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")  # system libraries, config
DEVICES = ("null", "zero", "full", "random", "urandom")
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
MNT_DETACH = 2


def enter_namespaces(visible: list[str], hidden: list[str]) -> None:
    """New mount and network namespaces for this worker: no network at all, and a new root file system that holds
    only SYSTEM_DIRS, the `visible` paths (the interpreter, its standard library and site-packages), /proc, /sys,
    a few devices and empty private /tmp, /var/tmp and /dev/shm; everything read-only but the scratch dirs. The
    `hidden` paths (our own packages and their data) are covered by empty directories wherever they would show.

    Built before anything is hidden: the new root is populated by bind mounts from the host view, so visible paths
    may live anywhere, under /tmp or a mode-700 /root included."""
    unshare(CLONE_NEWNS | CLONE_NEWNET)
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks back to the host
    stage = tempfile.mkdtemp(prefix="algoforge-root-")  # on the host, empty; removed once we stand on it
    try:
        _build_root(stage, visible, hidden)
    except BaseException:
        _libc.umount2(stage.encode(), MNT_DETACH)  # (best effort: we are failing already)
        os.rmdir(stage)
        raise
    _pivot_into(stage)
    _remount_read_only()


def _build_root(stage: str, visible: list[str], hidden: list[str]) -> None:
    """The new root at `stage`: a small tmpfs of mount points, each bound from the host view still around us."""
    mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m,nr_inodes=20000")
    for path in SCRATCH_DIRS:
        os.makedirs(stage + path, exist_ok=True)
        mount("tmpfs", stage + path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=512m,nr_inodes=20000")
    _make_dev(stage)
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            os.symlink(os.readlink(path), stage + path)
    bound: list[str] = []
    for path in sorted({*(p for p in SYSTEM_DIRS if not os.path.islink(p)), *visible}):
        _bind(path, stage, bound)
    for path in ("/proc", "/sys"):
        _bind(path, stage, [])
    for path in hidden:  # only where a bound path shows it: /proj stays a way through to /proj/.venv
        if os.path.isdir(stage + path) and any(path.startswith(b.rstrip("/") + "/") or path == b for b in bound):
            mount("tmpfs", stage + path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "mode=0755,size=4k")


def _make_dev(root: str) -> None:
    """A /dev with the harmless character devices, the usual /proc/self/fd links and a scratch /dev/shm."""
    for name in DEVICES:
        open(f"{root}/dev/{name}", "w").close()
        mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")


def _bind(path: str, root: str, bound: list[str]) -> None:
    """Bind `path` (as given and as its real path, when they differ) at the same place under `root`, unless it
    is inside a path bound already."""
    for source in dict.fromkeys((os.path.abspath(path), os.path.realpath(path))):
        if not os.path.isdir(source) or any(source == b or source.startswith(b.rstrip("/") + "/") for b in bound):
            continue
        target = root + source
        parent = os.path.realpath(os.path.dirname(target))
        if not (parent + "/").startswith(root + "/"):  # the way there runs through a symlink out of the new root
            continue
        os.makedirs(target, exist_ok=True)
        mount(source, target, None, MS_BIND | MS_REC)
        bound.append(source)


def _pivot_into(root: str) -> None:
    """Make `root` this namespace's root and drop the host's: nothing outside `root` is reachable after this."""
    number = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(f"pivot_root: unknown system call number on {os.uname().machine}")
    os.chdir(root)
    os.mkdir(".old")
    _check(_libc.syscall(number, b".", b".old"), "pivot_root")
    os.chdir("/")
    os.rmdir("/.old" + root)  # the host's staging dir, no longer a mount point once we stand on it
    _check(_libc.umount2(b"/.old", MNT_DETACH), "umount2 /.old")
    os.rmdir("/.old")


def closed_ancestors(paths: list[str]) -> dict[str, set[str]]:
    """Directories others cannot traverse (e.g. /root, mode 700) on the way to `paths`, with the child we need.
    (Without namespaces the sandbox uid could not reach the interpreter then, so the worker keeps its own uid.)"""
    closed: dict[str, set[str]] = {}
    for path in paths:
        parts = os.path.realpath(path).strip("/").split("/")
        for i in range(1, len(parts)):
            ancestor = "/" + "/".join(parts[:i])
            if not os.stat(ancestor).st_mode & 0o001:
                closed.setdefault(ancestor, set()).add(parts[i])
                break
    return closed


def _remount_read_only() -> None:
    for target, opts in _mounts():
        if target in SCRATCH_DIRS or target.startswith(_KEEP_RW):
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | sum(f for o, f in _MOUNT_FLAGS.items() if o in opts)
        try:
            mount(None, target, None, flags)
        except OSError:  # a mount hidden under another one cannot be remounted; the top one is
            pass


def _mounts() -> list[tuple[str, set[str]]]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            target = fields[4].replace("\\040", " ")
            out.append((target, set(fields[5].split(","))))
    return out


def read_only_root() -> bool:
    """True when writes outside the scratch tmpfs fail for everyone, root included (the check in the worker)."""
    return os.statvfs("/").f_flag & os.ST_RDONLY != 0


def wipe_scratch(keep: set[str]) -> None:
    """Empty the private scratch tmpfs so nothing one program wrote there is seen by the next (`keep`: the
    worker's own dir and the ways to paths bound under a scratch dir)."""
    for base in SCRATCH_DIRS:
        if not os.path.isdir(base):
            continue
        for name in os.listdir(base):
            path = os.path.join(base, name)
            if path not in keep:
                remove_tree(path)


def scratch_mount_roots() -> set[str]:
    """The entries of the scratch dirs that lead to a bind mount (say /tmp/venv when the interpreter lives there):
    they are part of the file system the program sees, not something a program left behind."""
    roots = set()
    for target, _ in _mounts():
        for base in SCRATCH_DIRS:
            if target.startswith(base + "/"):
                roots.add(os.path.join(base, target[len(base) + 1:].split("/")[0]))
    return roots


def remove_tree(path: str) -> None:
    def fix(func, p, _exc):  # a program may chmod its files 000; we own the tree, so give access back
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
        except OSError:
            pass
        try:
            func(p)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            pass

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, onerror=fix)
    elif os.path.lexists(path):
        os.unlink(path)


def make_scratch_base() -> str:
    return tempfile.mkdtemp(prefix="algoforge-sandbox-")


# ---------------------------------------------------------------- cgroups (memory)


class MemoryCgroup:
    """One memory cgroup per worker (v1 or v2), reused by each test process in turn; None when none is writable."""

    def __init__(self, path: str, v2: bool):
        self.path, self.v2 = path, v2
        self._fds: dict[str, int] = {}
        self._limit = "memory.max" if v2 else "memory.limit_in_bytes"

    @classmethod
    def create(cls, name: str) -> "MemoryCgroup | None":
        for base, v2 in memory_cgroup_bases():
            path = os.path.join(base, name)
            try:
                os.mkdir(path)
                cg = cls(path, v2)
                cg.set_limit(64 << 20)
                return cg
            except OSError:
                try:
                    os.rmdir(path)
                except OSError:
                    pass
        return None

    def _write(self, name: str, value: str) -> None:
        with open(os.path.join(self.path, name), "w") as f:
            f.write(value)

    def _read(self, name: str) -> str:
        """Counters read after every run: each file is opened once and re-read in place."""
        fd = self._fds.get(name)
        if fd is None:
            fd = self._fds[name] = os.open(os.path.join(self.path, name), os.O_RDONLY | os.O_CLOEXEC)
        return os.pread(fd, 1 << 16, 0).decode()

    def set_limit(self, nbytes: int) -> None:
        if not self.v2:
            try:  # with swap accounting, memsw must be raised before the limit can be
                self._write("memory.memsw.limit_in_bytes", "-1")
            except OSError:
                pass
        self._write(self._limit, str(nbytes))
        if not self.v2:
            try:
                self._write("memory.memsw.limit_in_bytes", str(nbytes))
            except OSError:
                pass

    def join(self) -> None:
        """Move the calling process into this cgroup. The worker joins once and its children are born inside:
        moving each child would cost a cgroup migration (1-2 ms) per run."""
        self._write("cgroup.procs", "0")

    def usage(self) -> int:
        return int(self._read("memory.current" if self.v2 else "memory.usage_in_bytes"))

    def oom_kills(self) -> int:
        text = self._read("memory.events" if self.v2 else "memory.oom_control")
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return int(self._read("memory.failcnt")) if not self.v2 else 0

    def close(self) -> None:
        """Close the counter files (the directory itself is removed by whoever created the worker)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def memory_cgroup_bases() -> list[tuple[str, bool]]:
    """Where this process's memory cgroup lives: (directory, is_v2), most specific first."""
    bases = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "memory" in controllers.split(","):
                bases.append((f"/sys/fs/cgroup/memory{path}", False))
            elif controllers == "" and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
                bases.append((f"/sys/fs/cgroup{path}", True))
    return [(b.rstrip("/"), v2) for b, v2 in bases if os.path.isdir(b)]


# ---------------------------------------------------------------- per-test-process limits (in the child)


def cpu_rlimit(cpu_s: float) -> tuple[int, int]:
    """RLIMIT_CPU for `cpu_s` seconds: soft (SIGXCPU) in whole seconds, rounded up; hard (SIGKILL, which cannot
    be caught) one second later."""
    cpu = max(1, int(cpu_s + 0.999))
    return cpu, cpu + 1


def set_rlimits(cpu_s: float, memory_bytes: int | None, nproc: int, fsize: int, nofile: int) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, cpu_rlimit(cpu_s))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    if memory_bytes is not None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def drop_privileges(uid: int) -> None:
    """Become an unprivileged uid that owns nothing on the host: no capabilities, no setuid gains."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def set_oom_score_adj(value: int) -> None:
    """1000: the OOM killer picks this process first (raising needs no privilege; lowering would)."""
    fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)  # no file object: this runs in every test process
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def die_with_parent() -> None:
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def become_subreaper() -> None:
    prctl(PR_SET_CHILD_SUBREAPER, 1)
