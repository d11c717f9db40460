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


def enter_namespaces(needed: list[str]) -> None:
    """New mount and network namespaces for this worker: no network at all, a read-only view of the host in which
    the `needed` paths (the interpreter and its libraries) are reachable by the unprivileged sandbox uid."""
    unshare(CLONE_NEWNS | CLONE_NEWNET)
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks back to the host
    for path in SCRATCH_DIRS:
        if os.path.isdir(path):
            mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=512m,nr_inodes=20000")
    for closed, children in closed_ancestors(needed).items():
        _open_up(closed, children)
    _remount_read_only()


def closed_ancestors(paths: list[str]) -> dict[str, set[str]]:
    """Directories others cannot traverse (e.g. /root, mode 700) on the way to `paths`, with the child we need."""
    closed: dict[str, set[str]] = {}
    for path in paths:
        parts = os.path.realpath(path).strip("/").split("/")
        for i in range(1, len(parts)):
            ancestor = "/" + "/".join(parts[:i])
            if not os.stat(ancestor).st_mode & 0o001:
                closed.setdefault(ancestor, set()).add(parts[i])
                break
    return closed


def _open_up(directory: str, children: set[str]) -> None:
    """Replace `directory` by an empty world-traversable tmpfs holding only bind mounts of `children`: the rest
    of it (say, /root's other contents) stays hidden from the sandbox."""
    stash = tempfile.mkdtemp(dir="/tmp")
    for name in children:
        os.mkdir(os.path.join(stash, name))
        mount(os.path.join(directory, name), os.path.join(stash, name), None, MS_BIND | MS_REC)
    mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    for name in children:
        os.mkdir(os.path.join(directory, name))
        mount(os.path.join(stash, name), os.path.join(directory, name), None, MS_MOVE)
        os.rmdir(os.path.join(stash, name))
    os.rmdir(stash)


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


def wipe_scratch(keep: str) -> None:
    """Empty the private scratch tmpfs so nothing one program wrote there is seen by the next."""
    for base in SCRATCH_DIRS:
        if not os.path.isdir(base):
            continue
        for name in os.listdir(base):
            path = os.path.join(base, name)
            if path != keep:
                remove_tree(path)


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
        for base, v2 in _memory_cgroup_bases():
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


def _memory_cgroup_bases() -> list[tuple[str, bool]]:
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
