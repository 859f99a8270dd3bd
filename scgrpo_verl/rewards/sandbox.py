"""Process sandbox for model-written Python programs.

Each program runs in its own process (own session / process group) with:

* **resource limits** set with :func:`resource.setrlimit` in ``preexec_fn``: CPU seconds
  (``RLIMIT_CPU``), address space (``RLIMIT_AS``), processes (``RLIMIT_NPROC``), file size
  (``RLIMIT_FSIZE``), open files (``RLIMIT_NOFILE``), no core dumps (``RLIMIT_CORE``);
* a **wall-clock timeout**, after which the whole process group *and* every other process of the
  sandbox uid are SIGKILLed (so children that called ``setsid()`` do not escape);
* an **unprivileged, per-run uid** whenever the host runs as root (every mode but ``audit``).
  ``RLIMIT_NPROC`` is not enforced for uid 0, so the child drops to a random uid in
  ``[UID_BASE, UID_BASE + UID_SPAN)``; the per-uid process count then contains fork bombs, the child cannot
  signal host processes or read ``/proc/<host pid>/environ``, and it cannot write root-owned files;
* a **private working directory** (the only writable place, deleted afterwards);
* a **stripped environment** (``PATH``, ``LANG``/``LC_ALL``, ``HOME`` and thread-count caps only)
  and ``python -I -B`` (isolated mode: no ``PYTHON*`` variables, no user site, no cwd on
  ``sys.path``; no bytecode written).

Isolation modes, strongest first; :func:`isolation_mode` probes them in this order (each by running a
trivial program) and picks the first that works, :func:`diagnose` says why the others did not:

``"root"``
    euid 0 and ``unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC)`` works (needs ``CAP_SYS_ADMIN``):
    a fresh **network namespace** that only has a downed loopback (neither ``127.0.0.1`` listeners of the
    host nor external addresses are reachable); a **private mount namespace** where ``/`` is re-mounted
    read-only, fresh small tmpfs are mounted on the world-writable directories (``/tmp``, ``/var/tmp``,
    ``/dev/shm``, ``/run/lock``) and on non-traversable ancestors of the interpreter (e.g. ``/root`` for a
    pyenv Python under ``/root/.pyenv``, which re-exposes only the interpreter and hides the rest of
    ``/root``); the random-uid drop.
``"userns"``
    ``unshare(CLONE_NEWUSER)`` works where ``"root"`` does not: network + mount namespaces as above inside
    a user namespace, plus the seccomp hardening filter below (where it has a syscall table). On a root host the namespace maps root
    (for the mount set-up; the maps are written by a helper forked beforehand) and the random sandbox uid,
    which the child drops to. Otherwise the child keeps the host's uid (``RLIMIT_NPROC`` is set relative to
    the user's current process count; the filter keeps it from signalling same-uid host processes).
``"landlock"``
    no namespaces (typically a container without ``CAP_SYS_ADMIN`` and/or with a seccomp profile that
    blocks ``unshare``/``mount``), but the **Landlock** LSM works (Linux >= 5.13; needs no privilege, only
    ``PR_SET_NO_NEW_PRIVS``). The child restricts itself before ``exec``: every file-system access right
    the kernel's Landlock ABI knows is handled, ``/`` keeps only execute / read-file / read-dir, the
    working directory keeps everything and ``/dev/null`` read + write; with ABI >= 4 every TCP bind and
    connect is denied; with ABI >= 6 the child can neither signal processes outside its Landlock domain
    nor connect to abstract Unix sockets outside it. On top comes the **seccomp hardening filter**
    described below, and the random-uid drop when the host runs as root (which, with the process's
    ownership, is what keeps ``/proc/<host pid>/environ`` unreadable: Landlock's ptrace hook stops
    ``/proc/<pid>/mem`` but, on the 6.18 kernel this was tested on, not ``environ``). Without root there is no
    uid drop, so ``/proc`` is left out of the readable tree instead.
``"seccomp"``
    Landlock is unavailable but ``seccomp`` filters work (x86_64 and aarch64 only). A classic-BPF filter
    (the hardening filter below) plus, since seccomp cannot see paths, **no file creation or modification
    at all**: ``open``/``openat`` with ``O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND``, ``creat``,
    ``unlink*``, ``rename*``, ``rmdir``, ``mkdir*``, ``link*``, ``symlink*``, ``mknod*``, ``truncate``,
    ``ftruncate``, ``chmod*``, ``chown*``, ``utime*`` and the ``setxattr`` family fail with
    ``EACCES``/``EPERM`` (``openat2`` with ``ENOSYS``, so libc falls back to ``openat``); every
    ``socket()`` fails (the host's abstract Unix sockets are not scoped without Landlock). Programs can
    still read files, print and pipe, but cannot write a file even in their own directory. Without root
    (no uid drop) a program could still read ``/proc/<pid>/environ`` of same-uid host processes: only
    run the trainer that way when nothing better is available.
``"audit"``
    no kernel isolation at all: a fallback that installs a :func:`sys.addaudithook` hook in the child
    refusing ``socket.*`` connect/bind/sendto, ``ctypes`` loading, subprocess creation and signals to
    other processes. This is a best-effort in-interpreter guard, *not* a security boundary (documented,
    tested, and logged with a warning). Pass ``require_namespaces=True`` to :func:`run_program` to refuse it.

The **seccomp hardening filter** (``userns``, ``landlock`` and ``seccomp`` modes; checks
``seccomp_data.arch`` and denies the x32 ABI) refuses:

* ``socket()`` of any family but ``AF_UNIX`` (``EACCES``; Landlock only covers TCP, so UDP and raw sockets
  are stopped here), and ``AF_UNIX`` too in ``seccomp`` mode and with Landlock ABI < 6, where nothing
  confines abstract Unix sockets;
* ``setsid``/``setpgid`` (the program starts as the leader of its own session, so killing that process
  group reaps every descendant);
* ``kill``/``rt_sigqueueinfo`` to anything but the program's own pid or process group,
  ``tgkill``/``tkill``/``rt_tgsigqueueinfo`` outside its own pid, ``fcntl(F_SETOWN*)`` and
  ``ioctl(FIOSETOWN/SIOCSPGRP)`` (signal redirection), ``prlimit64`` on other processes;
* ``clone`` with namespace flags, and ``clone3`` (``ENOSYS``: libc falls back to ``clone``);
* ``ptrace``, ``process_vm_readv/writev``, ``kcmp``, ``process_madvise``, ``move_pages``/``migrate_pages``,
  ``mount``/``umount2``/``unshare``/``setns``/``pivot_root``/``chroot`` and the new mount API
  (``open_tree``, ``move_mount``, ``fsopen``, ``fsconfig``, ``fsmount``, ``fspick``, ``mount_setattr``),
  ``bpf``, ``perf_event_open``, ``keyctl``/``add_key``/``request_key``, ``io_uring_*``, ``userfaultfd``,
  ``pidfd_open``/``pidfd_send_signal``/``pidfd_getfd``, ``kexec_*``, module loading, ``open_by_handle_at``,
  ``personality`` and a few privileged clock/host/swap/reboot calls (``EPERM``).

In ``landlock``/``seccomp`` mode the interpreter runs ``<base>/_boot.py`` (outside the working directory),
which, when the host is root, drops to the sandbox uid *before* it reads ``main.py``; interpreter directories
below a directory that other users cannot traverse (the pyenv-under-``/root`` case) stay importable through
``/proc/self/fd/<n>`` paths of directory handles opened before the drop. ``main.py`` then runs as
``__main__`` (tracebacks show ``main.py`` frames only).

Tested on Linux only; other platforms are not supported. ``python -m scgrpo_verl.rewards.sandbox`` prints
:func:`diagnose` as JSON.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import errno
import functools
import json
import logging
import math
import os
import resource
import secrets
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Mapping, Sequence

logger = logging.getLogger(__name__)

__all__ = [
    "KERNEL_MODES",
    "MODES",
    "SandboxError",
    "SandboxLimits",
    "SandboxResult",
    "STATUSES",
    "diagnose",
    "isolation_mode",
    "landlock_abi",
    "probe_mode",
    "run_program",
    "run_batch",
]

MODES = ("root", "userns", "landlock", "seccomp", "audit")
"""Isolation modes, strongest first (the order :func:`isolation_mode` probes them in)."""
KERNEL_MODES = MODES[:-1]
"""The modes whose containment the kernel enforces (all but ``audit``)."""

STATUSES = ("ok", "runtime_error", "compile_error", "timeout", "memory", "output_limit")

UID_BASE = 2_000_000
UID_SPAN = 1 << 20
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
PRIVATE_TMPFS_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
TMPFS_SIZE = "16m"
_KERNEL_MODES_DROP_UID = True  # tests turn this off to check the Landlock/seccomp layers without the uid drop

# Linux constants (<sched.h>, <sys/mount.h>)
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

# <linux/prctl.h>, <linux/seccomp.h>, <linux/filter.h>, <linux/audit.h>
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
BPF_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
BPF_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
BPF_RET_K = 0x06  # BPF_RET | BPF_K
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000
AF_UNIX = 1
O_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND  # same values on x86_64/aarch64
F_SETOWN = 8
F_SETOWN_EX = 15
FIOSETOWN = 0x8901
SIOCSPGRP = 0x8902

# <linux/landlock.h>; the syscall numbers are the same on x86_64 and aarch64
NR_LANDLOCK_CREATE_RULESET = 444
NR_LANDLOCK_ADD_RULE = 445
NR_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
LL_FS_EXECUTE = 1 << 0
LL_FS_WRITE_FILE = 1 << 1
LL_FS_READ_FILE = 1 << 2
LL_FS_READ_DIR = 1 << 3
LL_FS_REFER = 1 << 13  # ABI 2
LL_FS_TRUNCATE = 1 << 14  # ABI 3
LL_FS_IOCTL_DEV = 1 << 15  # ABI 5
LL_NET_BIND_TCP = 1 << 0  # ABI 4
LL_NET_CONNECT_TCP = 1 << 1  # ABI 4
LL_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
LL_SCOPE_SIGNAL = 1 << 1  # ABI 6

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.prctl.restype = ctypes.c_int
_libc.syscall.restype = ctypes.c_long


def _syscall(nr: int, a: int = 0, b: int = 0, c: int = 0, d: int = 0) -> int:
    """Raw ``syscall(nr, a, b, c, d)`` (-1 and ``errno`` on failure); safe to call in ``preexec_fn``."""
    return _libc.syscall(ctypes.c_long(nr), ctypes.c_long(a), ctypes.c_long(b), ctypes.c_long(c), ctypes.c_long(d))


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program): bad configuration or missing kernel support."""


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits.

    Attributes:
        wall_time_s: wall-clock seconds before the process group is killed (status ``timeout``).
        cpu_time_s: CPU seconds (``RLIMIT_CPU``); ``None`` -> ``ceil(wall_time_s)``.
        memory_mb: address-space limit per process in MiB (``RLIMIT_AS``).
        max_processes: processes/threads the sandbox uid may own (``RLIMIT_NPROC``).
        max_file_size_mb: largest file the program may write, in MiB (``RLIMIT_FSIZE``).
        max_open_files: ``RLIMIT_NOFILE``.
        max_output_bytes: captured stdout cap; more output -> status ``output_limit``.
        stderr_tail_bytes: how many trailing bytes of stderr are kept.
    """

    wall_time_s: float = 5.0
    cpu_time_s: int | None = None
    memory_mb: int = 1024
    max_processes: int = 16
    max_file_size_mb: int = 16
    max_open_files: int = 64
    max_output_bytes: int = 1 << 20
    stderr_tail_bytes: int = 4096

    def __post_init__(self) -> None:
        for name in ("wall_time_s", "memory_mb", "max_processes", "max_file_size_mb", "max_open_files",
                     "max_output_bytes", "stderr_tail_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {getattr(self, name)!r}")
        if self.cpu_time_s is not None and self.cpu_time_s <= 0:
            raise ValueError(f"SandboxLimits.cpu_time_s must be > 0 or None, got {self.cpu_time_s!r}")

    @property
    def cpu_seconds(self) -> int:
        return int(self.cpu_time_s if self.cpu_time_s is not None else max(1, math.ceil(self.wall_time_s)))


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program.

    Attributes:
        status: one of :data:`STATUSES`.
        stdout: captured stdout (at most ``max_output_bytes``, UTF-8 decoded with replacement).
        stderr: the last ``stderr_tail_bytes`` of stderr.
        returncode: exit status (negative = killed by that signal; ``None`` if killed on timeout).
        wall_time_s: seconds from spawn to exit/kill.
        isolation: the isolation mode used (one of :data:`MODES`).
        uid: the random unprivileged uid the program ran as (host running as root, any mode but ``audit``),
            else ``None``.
    """

    status: str
    stdout: str
    stderr: str
    returncode: int | None
    wall_time_s: float
    isolation: str
    uid: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def feedback(self, max_lines: int = 6) -> str:
        """A short judge-style message for non-ok results ('' when ok)."""
        return describe_failure(self, max_lines=max_lines)


def last_lines(text: str, n: int) -> str:
    """The last ``n`` non-empty lines of ``text`` joined by newlines."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


def describe_failure(result: SandboxResult, max_lines: int = 6) -> str:
    """Judge-style message for a :class:`SandboxResult` ('' when ok)."""
    s = result.status
    if s == "ok":
        return ""
    if s == "timeout":
        return "Time limit exceeded."
    if s == "memory":
        return "Memory limit exceeded."
    if s == "output_limit":
        return "Output limit exceeded."
    tail = last_lines(result.stderr, max_lines)
    if s == "compile_error":
        return "Compilation error:\n" + tail
    if result.returncode is not None and result.returncode < 0:
        try:
            sig = signal.Signals(-result.returncode).name
        except ValueError:
            sig = str(-result.returncode)
        return f"Runtime error (killed by {sig})." + ("\n" + tail if tail else "")
    return f"Runtime error (exit code {result.returncode}):\n" + tail if tail else \
        f"Runtime error (exit code {result.returncode})."


# --------------------------------------------------------------------------- isolation probing


def _hidden_ancestors(path: str) -> list[tuple[str, str]]:
    """For each ancestor of ``path`` that 'others' cannot traverse, (ancestor, child component).

    E.g. ``/root/.pyenv/versions/3.11.7`` with ``/root`` mode 0700 -> ``[("/root", ".pyenv")]``.
    """
    out = []
    parts = os.path.realpath(path).strip("/").split("/")
    for i in range(1, len(parts)):
        anc = "/" + "/".join(parts[:i])
        if not os.stat(anc).st_mode & 0o001:
            out.append((anc, parts[i]))
    return out


def _interpreter_roots() -> list[str]:
    """Directories the child interpreter must be able to reach (executable, stdlib, venv)."""
    roots = {os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}
    return sorted(roots)


def _under_private_tmpfs(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in PRIVATE_TMPFS_DIRS)


def _masked_interpreter_dirs() -> list[str]:
    """Interpreter directories that the private tmpfs mounts would hide, e.g. a virtualenv made under ``/tmp``
    (CI's ``mktemp -d``): the venv as ``sys.executable`` names it, and any interpreter root below such a directory.
    They are bind-mounted back, read-only, after the tmpfs mounts."""
    candidates = {sys.prefix, os.path.dirname(sys.executable), *_interpreter_roots()}
    dirs = sorted(p if os.path.isdir(p) else os.path.dirname(p) for p in candidates if _under_private_tmpfs(p))
    return [d for d in dirs if not any(d != o and d.startswith(o + "/") for o in dirs)]


def _reexpose_plan() -> list[tuple[str, str]]:
    """Unique (non-traversable ancestor, child component) pairs to re-expose in the mount namespace.

    Ancestors below a private tmpfs directory are left out: :func:`_masked_interpreter_dirs` brings those back."""
    plan: list[tuple[str, str]] = []
    for root in _interpreter_roots():
        for item in _hidden_ancestors(root):
            if item not in plan and not _under_private_tmpfs(item[0]):
                plan.append(item)
    ancestors = [a for a, _ in plan]
    for a in ancestors:
        if any(b != a and a.startswith(b + "/") for b in ancestors):
            raise SandboxError(f"interpreter path has nested non-traversable directories {ancestors}; unsupported")
    return plan


def _expose_dirs() -> list[str]:
    """Directories to keep importable after a uid drop without a mount namespace.

    For each interpreter root below a directory that other users cannot traverse, the child of the deepest such
    directory (e.g. ``/root/.pyenv`` for ``/root/.pyenv/versions/3.11.7``); the boot script reaches them through
    ``/proc/self/fd/<n>`` handles opened before the drop.
    """
    out: list[str] = []
    for root in _interpreter_roots():
        hidden = _hidden_ancestors(root)
        if hidden:
            anc, child = hidden[-1]
            d = os.path.join(anc, child)
            if d not in out:
                out.append(d)
    return out


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _errno_text(err: int) -> str:
    return f"{errno.errorcode.get(err, str(err))} ({os.strerror(err)})"


# --------------------------------------------------------------------------- Landlock


@functools.lru_cache(maxsize=1)
def landlock_abi() -> int:
    """The kernel's Landlock ABI version (>= 1), or ``-errno`` when Landlock is unavailable (cached)."""
    if not sys.platform.startswith("linux") or os.uname().machine not in _SECCOMP_ARCHES:
        return -38  # ENOSYS: unknown syscall numbers on this architecture
    rc = _syscall(NR_LANDLOCK_CREATE_RULESET, 0, 0, LANDLOCK_CREATE_RULESET_VERSION)
    return int(rc) if rc >= 1 else -ctypes.get_errno()


def _landlock_fs_rights(abi: int) -> int:
    """Every file-system access right Landlock ABI ``abi`` knows."""
    rights = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        rights |= LL_FS_REFER
    if abi >= 3:
        rights |= LL_FS_TRUNCATE
    if abi >= 5:
        rights |= LL_FS_IOCTL_DEV
    return rights


def _read_only_roots(hide_proc: bool) -> list[str]:
    """Where a Landlock-confined program may read and execute: ``/``, or with ``hide_proc`` every entry of ``/``
    but ``/proc`` (Landlock's ptrace hook does not stop same-uid reads of ``/proc/<pid>/environ``)."""
    if not hide_proc:
        return ["/"]
    return sorted(os.path.join("/", name) for name in os.listdir("/") if name != "proc")


def _landlock_ruleset(workdir: str, hide_proc: bool = False) -> int:
    """A Landlock ruleset fd for a program whose private directory is ``workdir`` (built in the parent).

    ``/`` (without ``/proc`` when ``hide_proc``): execute, read files, list directories; ``workdir``: everything;
    ``/dev/null``: read + write; TCP bind/connect denied (ABI >= 4); signals and abstract Unix sockets scoped
    to the domain (ABI >= 6). The fd is close-on-exec: the child calls ``landlock_restrict_self`` on it in
    ``preexec_fn``.
    """
    abi = landlock_abi()
    if abi < 1:
        raise SandboxError(f"Landlock is unavailable: {_errno_text(-abi)}")
    fs = _landlock_fs_rights(abi)
    if abi >= 6:
        attr, size = struct.pack("=QQQ", fs, LL_NET_BIND_TCP | LL_NET_CONNECT_TCP,
                                 LL_SCOPE_ABSTRACT_UNIX_SOCKET | LL_SCOPE_SIGNAL), 24
    elif abi >= 4:
        attr, size = struct.pack("=QQ", fs, LL_NET_BIND_TCP | LL_NET_CONNECT_TCP), 16
    else:
        attr, size = struct.pack("=Q", fs), 8
    buf = ctypes.create_string_buffer(attr, size)
    fd = _syscall(NR_LANDLOCK_CREATE_RULESET, ctypes.addressof(buf), size, 0)
    if fd < 0:
        err = ctypes.get_errno()
        raise SandboxError(f"landlock_create_ruleset: {_errno_text(err)}")
    file_rw = LL_FS_READ_FILE | LL_FS_WRITE_FILE | (LL_FS_TRUNCATE if abi >= 3 else 0)
    read_dir = LL_FS_EXECUTE | LL_FS_READ_FILE | LL_FS_READ_DIR
    rules = [(path, read_dir, True) for path in _read_only_roots(hide_proc)]
    rules += [(workdir, fs, False), ("/dev/null", file_rw, False)]
    try:
        for path, rights, optional in rules:
            try:
                pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                if optional:  # e.g. a dangling symlink in /
                    continue
                raise
            try:
                if not stat.S_ISDIR(os.fstat(pfd).st_mode):
                    rights &= LL_FS_EXECUTE | LL_FS_READ_FILE | LL_FS_WRITE_FILE | LL_FS_TRUNCATE | LL_FS_IOCTL_DEV
                rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, pfd), 12)  # packed path_beneath_attr
                if _syscall(NR_LANDLOCK_ADD_RULE, fd, LANDLOCK_RULE_PATH_BENEATH, ctypes.addressof(rule), 0) != 0:
                    err = ctypes.get_errno()
                    raise SandboxError(f"landlock_add_rule({path}): {_errno_text(err)}")
            finally:
                os.close(pfd)
    except BaseException:
        os.close(fd)
        raise
    return int(fd)


# --------------------------------------------------------------------------- seccomp

# System call numbers of the syscalls the filters name (x86_64: <asm/unistd_64.h>; aarch64: <asm-generic/unistd.h>,
# which has no legacy path-based calls such as open/unlink/mkdir).
_X86_64 = {
    "open": 2, "ioctl": 16, "socket": 41, "clone": 56, "kill": 62, "fcntl": 72, "truncate": 76, "ftruncate": 77,
    "rename": 82, "mkdir": 83, "rmdir": 84, "creat": 85, "link": 86, "unlink": 87, "symlink": 88, "chmod": 90,
    "fchmod": 91, "chown": 92, "fchown": 93, "lchown": 94, "ptrace": 101, "syslog": 103, "setpgid": 109,
    "setsid": 112, "rt_sigqueueinfo": 129, "utime": 132, "uselib": 134, "mknod": 133, "personality": 135,
    "vhangup": 153, "pivot_root": 155, "adjtimex": 159, "chroot": 161, "acct": 163, "settimeofday": 164,
    "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169, "sethostname": 170,
    "setdomainname": 171, "iopl": 172, "ioperm": 173, "init_module": 175, "delete_module": 176, "quotactl": 179,
    "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190, "removexattr": 197, "lremovexattr": 198,
    "fremovexattr": 199, "tkill": 200, "lookup_dcookie": 212, "clock_settime": 227, "tgkill": 234, "utimes": 235,
    "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250, "migrate_pages": 256, "openat": 257,
    "mkdirat": 258, "mknodat": 259, "fchownat": 260, "futimesat": 261, "unlinkat": 263, "renameat": 264,
    "linkat": 265, "symlinkat": 266, "fchmodat": 268, "unshare": 272, "move_pages": 279, "utimensat": 280,
    "rt_tgsigqueueinfo": 297, "perf_event_open": 298, "fanotify_init": 300, "prlimit64": 302,
    "open_by_handle_at": 304, "clock_adjtime": 305, "setns": 308, "process_vm_readv": 310,
    "process_vm_writev": 311, "kcmp": 312, "finit_module": 313, "renameat2": 316, "kexec_file_load": 320,
    "bpf": 321, "userfaultfd": 323,
}
_AARCH64 = {
    "setxattr": 5, "lsetxattr": 6, "fsetxattr": 7, "removexattr": 14, "lremovexattr": 15, "fremovexattr": 16,
    "lookup_dcookie": 18, "fcntl": 25, "ioctl": 29, "mknodat": 33, "mkdirat": 34, "unlinkat": 35,
    "symlinkat": 36, "linkat": 37, "renameat": 38, "umount2": 39, "mount": 40, "pivot_root": 41, "truncate": 45,
    "ftruncate": 46, "chroot": 51, "fchmod": 52, "fchmodat": 53, "fchownat": 54, "fchown": 55, "openat": 56,
    "vhangup": 58, "quotactl": 60, "utimensat": 88, "acct": 89, "personality": 92, "unshare": 97,
    "kexec_load": 104, "init_module": 105, "delete_module": 106, "clock_settime": 112, "syslog": 116,
    "ptrace": 117, "kill": 129, "tkill": 130, "tgkill": 131, "rt_sigqueueinfo": 138, "reboot": 142,
    "setpgid": 154, "setsid": 157, "sethostname": 161, "setdomainname": 162, "settimeofday": 170,
    "adjtimex": 171, "socket": 198, "add_key": 217, "request_key": 218, "keyctl": 219, "clone": 220,
    "swapon": 224, "swapoff": 225, "migrate_pages": 238, "move_pages": 239, "rt_tgsigqueueinfo": 240,
    "perf_event_open": 241, "prlimit64": 261, "fanotify_init": 262, "open_by_handle_at": 265,
    "clock_adjtime": 266, "setns": 268, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272,
    "finit_module": 273, "renameat2": 276, "bpf": 280, "userfaultfd": 282, "kexec_file_load": 294,
}
_COMMON_NEW = {  # unified numbering (>= 424) on both architectures
    "pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "pidfd_open": 434, "clone3": 435, "openat2": 437, "pidfd_getfd": 438, "process_madvise": 440,
    "mount_setattr": 442, "quotactl_fd": 443, "fchmodat2": 452, "setxattrat": 463, "removexattrat": 466,
    "open_tree_attr": 467,
}
_SECCOMP_ARCHES = {  # uname machine -> (AUDIT_ARCH_*, syscall table, has the x32 ABI)
    "x86_64": (AUDIT_ARCH_X86_64, {**_X86_64, **_COMMON_NEW}, True),
    "aarch64": (AUDIT_ARCH_AARCH64, {**_AARCH64, **_COMMON_NEW}, False),
    "arm64": (AUDIT_ARCH_AARCH64, {**_AARCH64, **_COMMON_NEW}, False),
}

_DENY_EPERM = (
    "setsid", "setpgid", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "process_madvise",
    "migrate_pages", "move_pages", "mount", "umount2", "unshare", "setns", "pivot_root", "chroot", "bpf",
    "perf_event_open", "keyctl", "add_key", "request_key", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "userfaultfd", "pidfd_send_signal", "pidfd_getfd", "pidfd_open", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "open_by_handle_at", "open_tree", "open_tree_attr",
    "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "personality", "acct", "swapon",
    "swapoff", "reboot", "sethostname", "setdomainname", "settimeofday", "clock_settime", "clock_adjtime",
    "adjtimex", "syslog", "quotactl", "quotactl_fd", "vhangup", "iopl", "ioperm", "uselib", "lookup_dcookie",
    "fanotify_init",
)
# seccomp mode only: no file may be created, removed, renamed, truncated or have its metadata changed
_DENY_WRITES_EACCES = (
    "creat", "unlink", "unlinkat", "rename", "renameat", "renameat2", "rmdir", "mkdir", "mkdirat", "link",
    "linkat", "symlink", "symlinkat", "mknod", "mknodat", "truncate", "ftruncate",
)
_DENY_WRITES_EPERM = (
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat", "utime", "utimes",
    "futimesat", "utimensat", "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr",
    "fremovexattr", "setxattrat", "removexattrat",
)
_CLONE_NS_FLAGS = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | \
    CLONE_NEWNET
_PID, _NEG_PID = "PID", "-PID"  # placeholders patched in the child (its own pid is known only after the fork)


def _seccomp_arch() -> tuple[int, dict, bool] | None:
    """(AUDIT_ARCH_*, syscall table, has x32) for this interpreter, or ``None`` when unsupported."""
    if not sys.platform.startswith("linux") or struct.calcsize("P") != 8 or sys.byteorder != "little":
        return None
    return _SECCOMP_ARCHES.get(os.uname().machine)


def _arg_lo(i: int) -> int:
    """Offset of the low 32 bits of ``seccomp_data.args[i]`` (little-endian)."""
    return 16 + 8 * i


@functools.lru_cache(maxsize=None)
def _seccomp_program(deny_writes: bool, allow_unix_sockets: bool) -> tuple[bytes, tuple[int, ...], tuple[int, ...]]:
    """The hardening filter as ``struct sock_filter`` bytes, plus the byte offsets of the ``k`` fields to patch
    with the child's pid and with ``-pid`` (32-bit two's complement).

    ``deny_writes`` adds the seccomp-mode file-modification denials; ``allow_unix_sockets`` lets ``socket()``
    create ``AF_UNIX`` sockets (otherwise every ``socket()`` fails).
    """
    arch = _seccomp_arch()
    if arch is None:
        raise SandboxError(f"no seccomp syscall table for {os.uname().machine} "
                           f"({struct.calcsize('P') * 8}-bit {sys.byteorder}-endian Python)")
    audit_arch, nr, has_x32 = arch
    ins: list[tuple[int, int, int, int | str]] = []

    def ret(value: int) -> None:
        ins.append((BPF_RET_K, 0, 0, value))

    def errno_(err: int) -> int:
        return SECCOMP_RET_ERRNO | err

    def deny(name: str, err: int) -> None:
        if name in nr:
            ins.append((BPF_JEQ_K, 0, 1, nr[name]))
            ret(errno_(err))

    def block(name: str, body: list) -> None:
        """``if nr == name: body`` -- ``body`` ends in returns on every path (it clobbers the accumulator)."""
        if name in nr:
            ins.append((BPF_JEQ_K, 0, len(body), nr[name]))
            ins.extend(body)

    def allow_values(arg: int, values: Sequence[int | str], err: int) -> list:
        """Allow when 32-bit ``args[arg]`` is one of ``values``, else fail with ``err``."""
        n = len(values)
        body = [(BPF_LD_W_ABS, 0, 0, _arg_lo(arg))]
        body += [(BPF_JEQ_K, n - i, 0, v) for i, v in enumerate(values)]
        return body + [(BPF_RET_K, 0, 0, errno_(err)), (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW)]

    def deny_values(arg: int, values: Sequence[int], err: int) -> list:
        """Fail with ``err`` when 32-bit ``args[arg]`` is one of ``values``, else allow."""
        n = len(values)
        body = [(BPF_LD_W_ABS, 0, 0, _arg_lo(arg))]
        body += [(BPF_JEQ_K, n - 1 - i, 1 if i == n - 1 else 0, v) for i, v in enumerate(values)]
        return body + [(BPF_RET_K, 0, 0, errno_(err)), (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW)]

    def deny_bits(arg: int, bits: int, err: int) -> list:
        """Fail with ``err`` when 32-bit ``args[arg]`` has any of ``bits``, else allow."""
        return [(BPF_LD_W_ABS, 0, 0, _arg_lo(arg)), (BPF_JSET_K, 0, 1, bits),
                (BPF_RET_K, 0, 0, errno_(err)), (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW)]

    e = errno
    ins.append((BPF_LD_W_ABS, 0, 0, 4))  # seccomp_data.arch
    ins.append((BPF_JEQ_K, 1, 0, audit_arch))
    ret(errno_(e.ENOSYS))  # another ABI (e.g. int 0x80 i386 calls)
    ins.append((BPF_LD_W_ABS, 0, 0, 0))  # seccomp_data.nr
    if has_x32:
        ins.append((BPF_JGE_K, 0, 1, X32_SYSCALL_BIT))
        ret(errno_(e.ENOSYS))
    for name in _DENY_EPERM:
        deny(name, e.EPERM)
    deny("clone3", e.ENOSYS)  # its flags sit behind a pointer; libc falls back to clone()
    if deny_writes:
        for name in _DENY_WRITES_EACCES:
            deny(name, e.EACCES)
        for name in _DENY_WRITES_EPERM:
            deny(name, e.EPERM)
        deny("openat2", e.ENOSYS)  # struct open_how is behind a pointer; libc falls back to openat()
        block("open", deny_bits(1, O_WRITE_FLAGS, e.EACCES))
        block("openat", deny_bits(2, O_WRITE_FLAGS, e.EACCES))
    if allow_unix_sockets:
        block("socket", allow_values(0, [AF_UNIX], e.EACCES))
    else:
        deny("socket", e.EACCES)
    block("clone", deny_bits(0, _CLONE_NS_FLAGS, e.EPERM))
    block("kill", allow_values(0, [0, _PID, _NEG_PID], e.EPERM))
    block("rt_sigqueueinfo", allow_values(0, [_PID, _NEG_PID], e.EPERM))
    block("tkill", allow_values(0, [_PID], e.EPERM))
    block("tgkill", allow_values(0, [_PID], e.EPERM))
    block("rt_tgsigqueueinfo", allow_values(0, [_PID], e.EPERM))
    block("prlimit64", allow_values(0, [0, _PID], e.EPERM))
    block("fcntl", deny_values(1, [F_SETOWN, F_SETOWN_EX], e.EPERM))
    block("ioctl", deny_values(1, [FIOSETOWN, SIOCSPGRP], e.EPERM))
    ret(SECCOMP_RET_ALLOW)

    out, pid_offs, neg_offs = bytearray(), [], []
    for i, (code, jt, jf, k) in enumerate(ins):
        assert 0 <= jt < 256 and 0 <= jf < 256
        if k == _PID:
            pid_offs.append(8 * i + 4)
            k = 0
        elif k == _NEG_PID:
            neg_offs.append(8 * i + 4)
            k = 0
        out += struct.pack("=HBBI", code, jt, jf, k)
    if len(ins) > 4096:  # BPF_MAXINSNS
        raise SandboxError("seccomp filter too long")
    return bytes(out), tuple(pid_offs), tuple(neg_offs)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


@dataclasses.dataclass
class _KernelLayers:
    """What the child of a ``userns``/``landlock``/``seccomp`` run installs on itself (prepared in the parent):
    the seccomp hardening filter and, in ``landlock`` mode, a Landlock ruleset."""

    ruleset_fd: int | None
    filter_buf: ctypes.Array
    fprog: _SockFprog
    pid_offsets: tuple[int, ...]
    neg_pid_offsets: tuple[int, ...]

    @classmethod
    def build(cls, mode: str, workdir: str, drops_uid: bool) -> "_KernelLayers":
        landlock = mode == "landlock"
        # AF_UNIX sockets only where abstract ones are confined: a network namespace (userns) or Landlock ABI >= 6
        unix = mode == "userns" or landlock and landlock_abi() >= 6
        prog, pid_offs, neg_offs = _seccomp_program(deny_writes=mode == "seccomp", allow_unix_sockets=unix)
        buf = ctypes.create_string_buffer(prog, len(prog))
        fprog = _SockFprog(len(prog) // 8, ctypes.addressof(buf))
        # Without the uid drop the program shares the host's uid: hide /proc (other processes' environ files)
        ruleset_fd = _landlock_ruleset(workdir, hide_proc=not drops_uid) if landlock else None
        return cls(ruleset_fd, buf, fprog, pid_offs, neg_offs)

    def close(self) -> None:
        if self.ruleset_fd is not None:
            os.close(self.ruleset_fd)
            self.ruleset_fd = None


def _make_preexec(mode: str, uid: int | None, limits: SandboxLimits, workdir: str, stage_dir: str,
                  plan: Sequence[tuple[str, str]], nproc_base: int,
                  layers: _KernelLayers | None = None, keep: Sequence[str] = ()) -> Callable[[], None]:
    """Build the ``preexec_fn`` run in the forked child before ``exec`` (no imports inside).

    ``keep``: interpreter directories below a private tmpfs directory (:func:`_masked_interpreter_dirs`), staged
    in ``<stage_dir>/keep<i>`` and bind-mounted back read-only after the tmpfs mounts."""
    workdir_b = workdir.encode()
    keep_b = [(path.encode(), os.path.join(stage_dir, f"keep{i}").encode()) for i, path in enumerate(keep)]
    work_stage_b = os.path.join(stage_dir, "work").encode()
    mem = limits.memory_mb << 20
    fsize = max(limits.max_file_size_mb << 20, limits.max_output_bytes + 1)
    cpu = limits.cpu_seconds
    nproc = nproc_base + limits.max_processes
    nofile = limits.max_open_files
    plan_b = [(a.encode(), c.encode(), os.path.join(stage_dir, str(i)).encode()) for i, (a, c) in enumerate(plan)]
    tmpfs_dirs = [d.encode() for d in PRIVATE_TMPFS_DIRS if os.path.isdir(d)]
    tmpfs_opts = f"size={TMPFS_SIZE},mode=1777".encode()
    host_uid, host_gid = os.getuid(), os.getgid()
    byteorder = sys.byteorder
    if mode in ("landlock", "seccomp") and layers is None:
        raise SandboxError(f"mode {mode} needs its seccomp filter")

    def preexec() -> None:
        try:
            _setup()
        except BaseException as exc:  # report on the (already redirected) stderr, then fail the spawn
            os.write(2, f"sandbox preexec failed: {exc!r}\n".encode())
            raise

    def _restrict_self() -> None:
        # The child already leads its own session (subprocess's start_new_session runs setsid() before this
        # function); the filter then keeps every descendant in that process group.
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        if layers.ruleset_fd is not None:
            _check(_syscall(NR_LANDLOCK_RESTRICT_SELF, layers.ruleset_fd, 0), "landlock_restrict_self")
            os.close(layers.ruleset_fd)
        pid = os.getpid()  # unchanged by exec
        buf = layers.filter_buf
        for off in layers.pid_offsets:
            buf[off:off + 4] = pid.to_bytes(4, byteorder)
        for off in layers.neg_pid_offsets:
            buf[off:off + 4] = ((-pid) & 0xFFFFFFFF).to_bytes(4, byteorder)
        _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(layers.fprog), 0, 0),
               "prctl(PR_SET_SECCOMP)")

    id_maps = f"0 0 1\n{uid} {uid} 1\n".encode() if uid is not None else b""

    def _unshare_userns_as_root(flags: int) -> None:
        """Root host, userns mode: a user namespace that maps root (for the mount set-up, which has to traverse
        the directories holding the interpreter) and the sandbox uid (dropped to at the end). Maps with more than
        the caller's own id must be written by a process that keeps CAP_SETUID in the parent namespace: a
        short-lived helper forked before the ``unshare``."""
        r, w = os.pipe()
        helper = os.fork()
        if helper == 0:
            code = 1
            try:
                os.close(w)
                if os.read(r, 1) == b"u":
                    parent = os.getppid()
                    for name in ("uid_map", "gid_map"):
                        fd = os.open(f"/proc/{parent}/{name}", os.O_WRONLY)
                        os.write(fd, id_maps)
                        os.close(fd)
                    code = 0
            finally:
                os._exit(code)
        os.close(r)
        try:
            _check(_libc.unshare(flags), "unshare")
            os.write(w, b"u")
        finally:
            os.close(w)
            _, status = os.waitpid(helper, 0)
        if status != 0:
            raise OSError(f"could not write the user namespace id maps (helper status {status})")

    def _setup() -> None:
        if mode in ("root", "userns"):
            flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC
            if mode == "root":
                _check(_libc.unshare(flags), "unshare")
            elif uid is None:
                _check(_libc.unshare(flags | CLONE_NEWUSER), "unshare")
                with open("/proc/self/setgroups", "w") as f:
                    f.write("deny")
                with open("/proc/self/uid_map", "w") as f:
                    f.write(f"{host_uid} {host_uid} 1")
                with open("/proc/self/gid_map", "w") as f:
                    f.write(f"{host_gid} {host_gid} 1")
            else:
                _unshare_userns_as_root(flags | CLONE_NEWUSER)
            _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount rprivate /")
            # Stage the working directory and the interpreter directories hidden below non-traversable
            # ancestors, so they survive the read-only remount and the tmpfs mounts below.
            _check(_libc.mount(workdir_b, work_stage_b, None, MS_BIND, None), "stage workdir")
            work_fd = os.open(work_stage_b, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            keep_fds = []
            for path, stage in keep_b:
                _check(_libc.mount(path, stage, None, MS_BIND | MS_REC, None), "stage interpreter dir")
                keep_fds.append(os.open(stage, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
            for anc, child, stage in plan_b:
                _check(_libc.mount(anc + b"/" + child, stage, None, MS_BIND | MS_REC, None), "stage bind")
            _check(_libc.mount(None, b"/", None, MS_REMOUNT | MS_BIND | MS_RDONLY, None), "remount / ro")
            for anc, child, stage in plan_b:
                _check(_libc.mount(b"tmpfs", anc, b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=755"),
                       "tmpfs over hidden dir")
                os.mkdir(anc + b"/" + child, 0o755)
                _check(_libc.mount(stage, anc + b"/" + child, None, MS_BIND | MS_REC, None), "re-expose")
                _check(_libc.umount2(stage, MNT_DETACH), "unstage")
            for d in tmpfs_dirs:
                _check(_libc.mount(b"tmpfs", d, b"tmpfs", MS_NOSUID | MS_NODEV, tmpfs_opts), "private tmpfs")
            # Bring back, read-only, the interpreter directories the private tmpfs just hid (a venv under /tmp).
            for (path, _), fd in zip(keep_b, keep_fds):
                os.makedirs(path, 0o755, exist_ok=True)
                _check(_libc.mount(f"/proc/self/fd/{fd}".encode(), path, None, MS_BIND | MS_REC, None),
                       "re-expose interpreter dir")
                _check(_libc.mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None),
                       "interpreter dir read-only")
                os.close(fd)
            # Re-create the working directory at its original path (it may now lie inside a fresh tmpfs)
            # as the only writable mount.
            os.makedirs(workdir_b, 0o755, exist_ok=True)
            _check(_libc.mount(f"/proc/self/fd/{work_fd}".encode(), workdir_b, None, MS_BIND, None), "mount workdir")
            os.close(work_fd)
            os.chdir(workdir_b)
        if layers is not None:
            # userns / landlock / seccomp (before RLIMIT_AS: installing the layers allocates a little)
            _restrict_self()
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        if mode in ("root", "userns") and uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        # landlock / seccomp on a root host: the uid drop happens in the boot script, after the interpreter has
        # started from directories the sandbox uid may not traverse.

    return preexec


_PROBE_SOURCE = "import json, math, collections, fractions\nprint({mode!r})\n"


@functools.lru_cache(maxsize=None)
def probe_mode(mode: str) -> str | None:
    """``None`` if a trivial program (stdlib imports + print) runs under ``mode`` on this host, else the reason
    it does not (an exception or the failed program's status and stderr tail). Cached per mode."""
    if mode not in MODES:
        raise ValueError(f"unknown sandbox mode {mode!r}")
    if not sys.platform.startswith("linux"):
        return f"the sandbox supports Linux only, not {sys.platform}"
    if mode == "root" and os.geteuid() != 0:
        return f"needs euid 0 (euid is {os.geteuid()})"
    if mode in ("landlock", "seccomp") and _seccomp_arch() is None:
        return f"no seccomp syscall table for machine {os.uname().machine!r}"
    if mode == "landlock" and landlock_abi() < 1:
        return f"Landlock unavailable: landlock_create_ruleset(VERSION) failed with {_errno_text(-landlock_abi())}"
    try:
        res = _run(_PROBE_SOURCE.format(mode=mode), "", SandboxLimits(wall_time_s=20), mode)
    except (OSError, subprocess.SubprocessError, SandboxError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if res.status != "ok" or res.stdout.strip() != mode:
        return (f"probe program failed: status={res.status} returncode={res.returncode} "
                f"stdout={res.stdout[-200:]!r} stderr tail={last_lines(res.stderr, 6)!r}")
    return None


@functools.lru_cache(maxsize=1)
def isolation_mode() -> str:
    """Strongest isolation mode that works on this host, in the order of :data:`MODES` (cached).

    Falling back below ``root``/``userns`` is logged at WARNING with the reason each stronger mode failed.
    """
    if not sys.platform.startswith("linux"):
        raise SandboxError(f"the sandbox supports Linux only, not {sys.platform}")
    failed: dict[str, str] = {}
    for mode in KERNEL_MODES:
        reason = probe_mode(mode)
        if reason is None:
            if mode in ("landlock", "seccomp"):
                logger.warning("scgrpo_verl sandbox: no namespace isolation (euid=%d); using %s isolation. "
                               "Why the stronger modes failed: %s", os.geteuid(), mode, failed)
            return mode
        failed[mode] = reason
    logger.warning(
        "scgrpo_verl sandbox: no kernel isolation available (euid=%d); falling back to the in-process "
        "audit-hook guard, which is NOT a security boundary. Why each mode failed: %s", os.geteuid(), failed)
    return "audit"


_FEATURE_CHECK = r'''
import ctypes, json, os, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
def err():
    e = ctypes.get_errno()
    return "errno %d (%s)" % (e, os.strerror(e))
out = {"no_new_privs": True if libc.prctl(38, 1, 0, 0, 0) == 0 else err()}
allow = ctypes.create_string_buffer(struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000), 8)
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = Prog(1, ctypes.addressof(allow))
out["seccomp_filter"] = True if libc.prctl(22, 2, ctypes.addressof(prog), 0, 0) == 0 else err()
print(json.dumps(out))
'''


def _host_status() -> dict:
    """Seccomp / NoNewPrivs / capability lines of this process's ``/proc/self/status``."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Seccomp", "Seccomp_filters", "NoNewPrivs", "CapEff", "CapBnd"):
                    out[key] = value.strip()
    except OSError as exc:
        out["error"] = repr(exc)
    return out


def diagnose() -> dict:
    """Why this host gets the isolation mode it gets (for CI logs; runs every probe, cached).

    Returns a JSON-serialisable dict: ``euid``, ``kernel``, ``machine``, ``python``, this process's seccomp /
    no-new-privs / capability status, ``landlock_abi`` (or ``landlock_error``), whether a child can set
    ``PR_SET_NO_NEW_PRIVS`` and install a seccomp filter (``True`` or the errno), ``modes`` (``"ok"`` or the
    reason each probe failed) and ``selected`` (:func:`isolation_mode`).
    """
    info: dict = {"platform": sys.platform, "euid": os.geteuid(), "python": sys.executable}
    if not sys.platform.startswith("linux"):
        info["modes"] = {m: probe_mode(m) or "ok" for m in MODES}
        return info
    uname = os.uname()
    info.update(kernel=uname.release, machine=uname.machine, host_status=_host_status())
    abi = landlock_abi()
    info["landlock_abi"] = abi if abi >= 1 else None
    if abi < 1:
        info["landlock_error"] = _errno_text(-abi)
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", _FEATURE_CHECK], capture_output=True, text=True,
                              timeout=30, env=dict(_ENV))
        info.update(json.loads(proc.stdout) if proc.returncode == 0 else
                    {"feature_check_error": last_lines(proc.stderr, 4) or f"exit code {proc.returncode}"})
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        info["feature_check_error"] = repr(exc)
    arch = _seccomp_arch()
    info["seccomp_arch"] = None if arch is None else hex(arch[0])
    info["modes"] = {m: probe_mode(m) or "ok" for m in MODES}
    info["selected"] = isolation_mode()
    return info


# --------------------------------------------------------------------------- running

_BOOT = r'''
import sys
if _AUDIT:
    def _guard(event, args, _getpid=__import__("os").getpid):
        if event == "os.kill" and args and args[0] in (0, _getpid()):
            return  # signalling itself (e.g. a program that dies by SIGSEGV) is fine
        if event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
                     "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "subprocess.Popen", "os.system", "os.exec",
                     "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg", "pty.spawn"):
            raise PermissionError(f"sandbox: {event} is not allowed")
    sys.addaudithook(_guard)
    del _guard


def _boot():
    import os
    if _UID is not None:
        if _EXPOSE:
            # Interpreter directories below a directory the sandbox uid cannot traverse: keep them importable
            # through /proc/self/fd/<n> (a handle opened now, while still root, needs no traversal later).
            links = [(d, "/proc/self/fd/%d" % os.open(d, os.O_PATH | os.O_DIRECTORY)) for d in _EXPOSE]

            def fix(p):
                if isinstance(p, str) and p.startswith("/"):
                    r = os.path.realpath(p)
                    for d, link in links:
                        if r == d or r.startswith(d + "/"):
                            return link + r[len(d):]
                return p

            sys.path[:] = [fix(p) for p in sys.path]
            for m in list(sys.modules.values()):
                path = getattr(m, "__path__", None)
                if type(path) is list:
                    path[:] = [fix(p) for p in path]
            sys.path_importer_cache.clear()
        os.setgroups([])
        os.setresgid(_UID, _UID, _UID)
        os.setresuid(_UID, _UID, _UID)
        if os.getresuid() != (_UID,) * 3 or os.getresgid() != (_UID,) * 3 or os.getgroups():
            raise SystemExit("sandbox: could not drop privileges")
    with open("main.py", "rb") as f:
        src = f.read()
    try:
        code = compile(src, "main.py", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:
        import traceback
        sys.stderr.write("".join(traceback.format_exception_only(type(e), e)))
        raise SystemExit(1)
    import types
    main = types.ModuleType("__main__")
    main.__file__ = os.path.join(os.getcwd(), "main.py")
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    sys.argv[:] = ["main.py"]
    return code, main.__dict__


_code, _globals = _boot()
del _boot
try:
    exec(_code, _globals)
except SystemExit:
    raise
except BaseException as _e:
    _tb = _e.__traceback__
    while _tb is not None and _tb.tb_frame.f_code.co_filename == __file__:
        _tb = _tb.tb_next  # hide this script's frame: the traceback starts in main.py, as with `python main.py`
    sys.excepthook(type(_e), _e.with_traceback(_tb), _tb)
    raise SystemExit(1)
'''


def _boot_script(audit: bool, uid: int | None, expose: Sequence[str]) -> str:
    """``_boot.py`` for the ``landlock``/``seccomp``/``audit`` modes (written outside the working directory)."""
    return f"_AUDIT = {audit!r}\n_UID = {uid!r}\n_EXPOSE = {list(expose)!r}\n" + _BOOT

_ENV = {
    "PATH": SANDBOX_PATH,
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "HOME": "/tmp",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONIOENCODING": "utf-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def _user_process_count(uid: int) -> int:
    """Processes/threads currently owned by real uid ``uid`` (what ``RLIMIT_NPROC`` counts)."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                n += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
    return n


def _live_pids_of_uid(uid: int) -> list[int]:
    """Non-zombie pids whose real uid is ``uid``."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                status = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("Uid", "").split()[:1] == [str(uid)] and not fields.get("State", "").strip().startswith("Z"):
            pids.append(int(pid))
    return pids


def _kill_uid(uid: int, attempts: int = 50) -> None:
    """SIGKILL every process of ``uid`` (from a helper that runs as ``uid``, so ``kill(-1)`` is scoped)."""
    for _ in range(attempts):
        if not _live_pids_of_uid(uid):
            return
        subprocess.run(["kill", "-KILL", "-1"], preexec_fn=lambda: (os.setgroups([]), os.setresgid(uid, uid, uid),
                                                                    os.setresuid(uid, uid, uid)),
                       env={"PATH": SANDBOX_PATH}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False)
        time.sleep(0.005)
    raise SandboxError(f"could not kill the processes of sandbox uid {uid}")


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_head(path: str, n: int) -> tuple[bytes, int]:
    """First ``n`` bytes of ``path`` and the file's total size."""
    with open(path, "rb") as f:
        return f.read(n), os.fstat(f.fileno()).st_size


def _read_tail(path: str, n: int) -> bytes:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - n))
        return f.read()


_COMPILE_ERRORS = ("SyntaxError", "IndentationError", "TabError")
_MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "out of memory", "std::bad_alloc")


def classify(returncode: int | None, timed_out: bool, stdout_size: int, stderr: str, limits: SandboxLimits) -> str:
    """Map an exit to a status in :data:`STATUSES` (pure function)."""
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout"
    if returncode == -signal.SIGKILL and not stderr.strip():  # RLIMIT_CPU hard limit
        return "timeout"
    if stdout_size > limits.max_output_bytes or returncode == -signal.SIGXFSZ or "File too large" in stderr:
        return "output_limit"
    if returncode == 0:
        return "ok"
    tail = last_lines(stderr, 3)
    if any(m in tail for m in _MEMORY_MARKERS):
        return "memory"
    last = tail.splitlines()[-1] if tail else ""
    if "Traceback (most recent call last)" not in stderr and last.startswith(_COMPILE_ERRORS):
        return "compile_error"
    return "runtime_error"


def _run(source: str, stdin: str, limits: SandboxLimits, mode: str,
         files: Mapping[str, str] | None = None) -> SandboxResult:
    """Run ``source`` once under ``mode`` (no probing)."""
    base = tempfile.mkdtemp(prefix="scgrpo_sbx_")
    uid = None
    layers: _KernelLayers | None = None
    try:
        os.chmod(base, 0o711)
        workdir = os.path.join(base, "work")
        stage = os.path.join(base, "stage")
        os.mkdir(workdir, 0o700)
        os.mkdir(stage, 0o700)
        drop = mode in ("root", "userns") or mode in ("landlock", "seccomp") and _KERNEL_MODES_DROP_UID
        if os.geteuid() == 0 and drop:
            uid = UID_BASE + secrets.randbelow(UID_SPAN)
        plan = _reexpose_plan() if mode == "root" or mode == "userns" and uid is not None else []
        keep = _masked_interpreter_dirs() if mode in ("root", "userns") else []
        for name in ["work"] + [str(i) for i in range(len(plan))] + [f"keep{i}" for i in range(len(keep))]:
            os.mkdir(os.path.join(stage, name), 0o700)
        for name, text in {**(files or {}), "main.py": source}.items():
            with open(os.path.join(workdir, name), "w", encoding="utf-8") as f:
                f.write(text)
        nproc_base = 0
        if uid is not None:
            for name in [".", "main.py", *(files or {})]:
                os.chown(os.path.join(workdir, name), uid, uid)
        else:
            nproc_base = _user_process_count(os.getuid())
        args = [sys.executable, "-I", "-B", "main.py"]
        if mode in ("landlock", "seccomp", "audit"):
            boot = os.path.join(base, "_boot.py")  # outside the working directory; cwd stays there
            with open(boot, "w", encoding="utf-8") as f:
                f.write(_boot_script(mode == "audit", uid, _expose_dirs() if uid is not None else []))
            os.chmod(boot, 0o644)
            args = [sys.executable, "-I", "-B", boot]
        if mode in ("landlock", "seccomp") or mode == "userns" and _seccomp_arch() is not None:
            layers = _KernelLayers.build(mode, workdir, drops_uid=uid is not None)
        preexec = _make_preexec(mode, uid, limits, workdir, stage, plan, nproc_base, layers, keep)
        in_path, out_path, err_path = (os.path.join(base, n) for n in ("stdin", "stdout", "stderr"))
        with open(in_path, "w", encoding="utf-8") as f:
            f.write(stdin)
        with open(in_path, "rb") as fin, open(out_path, "wb") as fout, open(err_path, "wb") as ferr:
            t0 = time.monotonic()
            try:
                proc = subprocess.Popen(args, stdin=fin, stdout=fout, stderr=ferr, cwd=workdir, env=dict(_ENV),
                                        start_new_session=True, preexec_fn=preexec, close_fds=True)
            except (OSError, subprocess.SubprocessError) as exc:
                detail = _read_tail(err_path, 2000).decode("utf-8", errors="replace").strip()
                raise SandboxError(f"could not start a sandboxed process (mode={mode}): {exc!r} {detail}") from exc
            finally:
                if layers is not None:
                    layers.close()
            timed_out = False
            try:
                proc.wait(timeout=limits.wall_time_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            _killpg(proc.pid)  # the session leader's pid is the process-group id
            if timed_out:
                proc.wait()
            wall = time.monotonic() - t0
        if uid is not None:
            _kill_uid(uid)
        stdout_b, stdout_size = _read_head(out_path, limits.max_output_bytes)
        stderr_s = _read_tail(err_path, limits.stderr_tail_bytes).decode("utf-8", errors="replace")
        rc = None if timed_out else proc.returncode
        status = classify(rc, timed_out, stdout_size, stderr_s, limits)
        return SandboxResult(status=status, stdout=stdout_b.decode("utf-8", errors="replace"), stderr=stderr_s,
                             returncode=rc, wall_time_s=wall, isolation=mode, uid=uid)
    finally:
        if layers is not None:
            layers.close()
        shutil.rmtree(base, ignore_errors=True)
        if os.path.exists(base):
            logger.warning("sandbox: could not delete %s", base)


def run_program(source: str, stdin: str = "", limits: SandboxLimits | None = None, *,
                files: Mapping[str, str] | None = None, require_namespaces: bool = False,
                mode: str | None = None) -> SandboxResult:
    """Run Python ``source`` with ``stdin`` in the sandbox.

    Args:
        source: the program text (written to ``main.py`` in a private directory).
        stdin: text fed on standard input.
        limits: resource limits (defaults: :class:`SandboxLimits`).
        files: extra ``{basename: text}`` files placed next to ``main.py`` (e.g. a solution a harness imports).
        require_namespaces: raise :class:`SandboxError` instead of using the ``audit`` fallback (the
            kernel-enforced ``landlock`` and ``seccomp`` modes are accepted).
        mode: force an isolation mode in :data:`MODES` (tests); default :func:`isolation_mode`.

    Returns:
        A :class:`SandboxResult`. Program failures are statuses, never exceptions.

    Raises:
        TypeError: ``source``/``stdin`` not ``str``.
        SandboxError: the sandbox cannot run at all.
    """
    if not isinstance(source, str) or not isinstance(stdin, str):
        raise TypeError(f"source and stdin must be str, got {type(source).__name__}, {type(stdin).__name__}")
    for name in files or {}:
        if not isinstance(name, str) or name in ("main.py", "_boot.py", "", ".", "..") or "/" in name or "\0" in name:
            raise ValueError(f"invalid sandbox file name {name!r}")
    limits = limits or SandboxLimits()
    mode = mode or isolation_mode()
    if mode not in MODES:
        raise ValueError(f"unknown sandbox mode {mode!r}")
    if require_namespaces and mode == "audit":
        raise SandboxError("kernel isolation is unavailable on this host and require_namespaces=True")
    return _run(source, stdin, limits, mode, files)


def default_workers() -> int:
    """Pool size for :func:`run_batch`: the CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def run_batch(jobs: Iterable[tuple[str, str]], limits: SandboxLimits | None = None,
              max_workers: int | None = None, **kwargs) -> list[SandboxResult]:
    """Run ``(source, stdin)`` jobs concurrently; results are in job order (length ``len(jobs)``).

    Threads only wait on child processes, so a pool of ``max_workers`` (default: cores) threads keeps that
    many sandboxed programs running at once.
    """
    jobs = list(jobs)
    workers = max_workers or default_workers()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: run_program(job[0], job[1], limits, **kwargs), jobs))


if __name__ == "__main__":  # python -m scgrpo_verl.rewards.sandbox: why this host gets its isolation mode
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print(json.dumps(diagnose(), indent=2))
