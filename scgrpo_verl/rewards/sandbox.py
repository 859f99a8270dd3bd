"""Process sandbox for model-written Python programs, built on bubblewrap.

A policy trained on code rewards optimises against the grader, so every sandbox weakness becomes a strategy.
The isolation is **bubblewrap** (Debian's ``bubblewrap``, the tool Flatpak is built on). Each program gets, in
mode ``"bwrap"``:

* fresh **PID, IPC, network, UTS, mount** (and cgroup, where possible) namespaces, plus a **user namespace**
  when the host is not root. As root the program instead runs as a random **per-run host uid** in
  ``[UID_BASE, UID_BASE + UID_SPAN)`` (the boot code drops to it before reading the program): ``RLIMIT_NPROC``
  never applies to uid 0, and a user namespace would map the program back to uid 0;
* a **minimal read-only view** (:func:`_view`): the interpreter binary, its standard library and
  ``lib-dynload``, the shared libraries they link against (a multiarch folder such as
  ``/usr/lib/x86_64-linux-gnu`` in one piece) and ``/etc/ld.so.cache``, each mapped on its own: nothing of home
  folders, dataset caches, the project or the rest of ``/usr/lib``. No installed package: the standard library's
  own ``site-packages`` (any ``site-``/``dist-packages`` folder inside the view) is covered by an empty tmpfs
  nobody may list;
* a private **tmpfs of ``disk_mb``** as ``/tmp`` and working folder (the run's disk quota; ``main.py`` is copied
  in from memory), one of ``shm_mb`` on ``/dev/shm``; ``/`` and ``/dev`` read-only;
* stdin a read-only descriptor of a sealed anonymous memory file (it cannot be written, grown or shrunk),
  stdout/stderr anonymous memory files of the parent capped by ``RLIMIT_FSIZE`` (no host file for other runs
  to read), and no other inherited descriptor (bwrap closes those it reads its set-up from);
* as root, no capability left after the uid drop, the inheritable set included;
* ``--die-with-parent``, and teardown of the whole PID namespace when the program ends or is killed (the
  parent waits for bwrap's PID 1 to be gone, which the kernel allows only after every other process is);
* the **seccomp filter** below, and the limits: ``RLIMIT_CPU``, ``RLIMIT_AS`` (per process), ``RLIMIT_NPROC``,
  ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``, no core dumps, wall-clock timeout, output cap.

**Memory bound.** cgroup v2 ``memory.max``/``pids.max`` need a delegated cgroup v2 subtree with the memory and
pids controllers; the hosts this was built and tested on have none writable (cgroup v1 controllers, an empty
unified hierarchy; :func:`diagnose` reports ``limits_via``), so the limits are rlimits, and what one run can
hold is their sum (:func:`memory_bound_mb`): ``max_processes * memory_mb`` (``RLIMIT_AS`` per process) ``+
disk_mb + shm_mb`` (the two tmpfs) ``+ 2 * max(max_file_size_mb, max_output_bytes)`` (stdout/stderr, capped by
``RLIMIT_FSIZE``; stdin is sealed) ``+`` kernel buffers of at most ``(max_processes + 1) * max_open_files``
pipes and sockets (the filter refuses ``F_SETPIPE_SZ`` and ``SO_SNDBUF``/``SO_RCVBUF``: 64 KiB per pipe, twice
``net.core.wmem_default`` per socket). SysV IPC and ``memfd_create`` are refused. With the defaults that is about
16.5 GiB, almost all of it the 16 processes' address spaces, so :func:`run_batch` runs as many programs at once
as fit their bound into the host's available memory (:func:`batch_workers`), not one per core.

**Weaker modes** (hosts where bwrap cannot create namespaces), used only when the user opts in with
``SCGRPO_SANDBOX_MODE=<mode>`` or the reward kwarg ``sandbox_mode``, logged at WARNING whenever a process selects
one; :data:`INVARIANTS` says what each holds. ``"landlock"``: Landlock lets the program read only the
interpreter view (carved around the package folders, so they cannot even be listed; the boot code enters the
Landlock domain after the interpreter's start-up) and its own fresh 0700 folder (owned by the per-run uid as
root), write only that folder, and the seccomp filter refuses every ``socket()``; no disk quota.
``"seccomp"``: the filter also refuses every file creation or change; reads are limited only by the uid.
``"audit"``: an in-interpreter audit hook, no security boundary. Without bwrap and without an opt-in,
:func:`select_mode` raises :class:`SandboxError` with :data:`REFUSAL`: code rewards fail closed. A sandbox that
breaks after start-up (a failed run whose stderr reads like bwrap's, the boot code's or the interpreter's own
start-up failure) is probed again, and :class:`SandboxError` stops training when the probe fails too.

The **seccomp filter** (every kernel mode; checks the arch, denies x32) refuses ``ptrace``, ``process_vm_*``,
``kcmp``, mount and namespace calls (``clone``/``clone3`` with namespace flags included), ``bpf``,
``perf_event_open``, keyrings, ``io_uring``, ``userfaultfd``, ``pidfd_*``, module loading, ``kexec``,
``personality``, privileged clock/host calls, SysV IPC ``*get``, ``memfd_create``, ``F_SETPIPE_SZ`` and socket
buffer sizes; without a PID namespace (``landlock``/``seccomp``) also ``setsid``/``setpgid``, ``prlimit`` on
other processes and signal-owner changes. Signals there stay inside the program's own process tree through a
Landlock signal scope (ABI >= 6, both modes) or the per-run uid (root); only where neither exists does the filter
allow signals to the program's own pid and process group alone (then ``os.kill(child_pid)`` fails).

Linux only. ``python -m scgrpo_verl.rewards.sandbox`` and ``scgrpo-verl sandbox`` print :func:`diagnose`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import errno
import fcntl
import functools
import glob
import json
import logging
import math
import os
import resource
import secrets
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Mapping, Sequence

logger = logging.getLogger(__name__)

__all__ = [
    "ENV_MODE",
    "KERNEL_MODES",
    "MODES",
    "REFUSAL",
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
    "batch_workers",
    "memory_bound_mb",
    "select_mode",
]

MODES = ("bwrap", "landlock", "seccomp", "audit")
"""Isolation modes, strongest first."""
KERNEL_MODES = MODES[:-1]
"""The modes whose containment the kernel enforces (all but ``audit``)."""
WEAK_MODES = MODES[1:]
"""Modes used only after an explicit opt-in."""
ENV_MODE = "SCGRPO_SANDBOX_MODE"
"""Environment variable that selects a mode (``bwrap``, ``auto`` or an opt-in weaker mode)."""
REFUSAL = ("code rewards need the bubblewrap sandbox, which does not work here ({reason}); fix: "
           "`apt-get install -y bubblewrap` (run as root or allow unprivileged user namespaces), or opt into "
           "weaker isolation with " + ENV_MODE + "=landlock|seccomp|audit or reward_kwargs.sandbox_mode")
"""The one-line error of :func:`select_mode` when bwrap cannot run and no weaker mode was chosen."""

STATUSES = ("ok", "runtime_error", "compile_error", "timeout", "memory", "output_limit")

UID_BASE = 2_000_000
UID_SPAN = 1 << 20
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
SYSTEM_LIB_DIRS = ("/lib", "/lib64", "/lib32", "/libx32", "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32")
_KERNEL_MODES_DROP_UID = True  # tests turn this off to check the Landlock/seccomp layers without the uid drop

# <sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000


# <linux/prctl.h>, <linux/seccomp.h>, <linux/filter.h>, <linux/audit.h>
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2
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
F_SETPIPE_SZ = 1031
SOL_SOCKET = 1  # <asm-generic/socket.h> (x86_64, aarch64)
SO_SNDBUF, SO_RCVBUF, SO_SNDBUFFORCE, SO_RCVBUFFORCE = 7, 8, 32, 33
PIPE_BUF_BYTES = 16 * 4096
"""Kernel buffer of a pipe at its default size (16 pages); the filter refuses ``F_SETPIPE_SZ``."""
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
        memory_mb: address-space limit per process in MiB (``RLIMIT_AS``); a run's whole bound is
            :func:`memory_bound_mb`.
        max_processes: processes/threads the sandbox uid may own (``RLIMIT_NPROC``).
        max_file_size_mb: largest file the program may write, in MiB (``RLIMIT_FSIZE``).
        max_open_files: ``RLIMIT_NOFILE``.
        max_output_bytes: captured stdout cap; more output -> status ``output_limit``.
        stderr_tail_bytes: how many trailing bytes of stderr are kept.
        disk_mb: size of the private ``/tmp`` tmpfs (working folder) in bwrap mode: the run's disk quota.
        shm_mb: size of the private ``/dev/shm`` tmpfs in bwrap mode (POSIX shared memory).
    """

    wall_time_s: float = 5.0
    cpu_time_s: int | None = None
    memory_mb: int = 1024
    max_processes: int = 16
    max_file_size_mb: int = 16
    max_open_files: int = 64
    max_output_bytes: int = 1 << 20
    stderr_tail_bytes: int = 4096
    disk_mb: int = 64
    shm_mb: int = 16

    def __post_init__(self) -> None:
        for name in ("wall_time_s", "memory_mb", "max_processes", "max_file_size_mb", "max_open_files",
                     "max_output_bytes", "stderr_tail_bytes", "disk_mb", "shm_mb"):
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
        uid: the random unprivileged host uid the program ran as (host running as root, any mode but ``audit``),
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


def _landlock_ruleset(workdir: str | None) -> int:
    """A Landlock ruleset fd for a program whose private folder is ``workdir`` (built in the parent).

    The interpreter view (:func:`_view_paths`, carved around package folders): execute, read files, list
    folders; ``workdir``: everything; ``/dev/null``: read + write, ``/dev/urandom``: read; nothing else (no
    ``/proc``, no home folders, no other run's folder). TCP bind/connect denied (ABI >= 4); signals and abstract
    Unix sockets scoped to the domain (ABI >= 6). ``workdir=None``: only that scoping, no file or network rule
    (``seccomp`` mode, ABI >= 6). The child inherits the fd and its boot code calls ``landlock_restrict_self``.
    """
    abi = landlock_abi()
    if abi < 1:
        raise SandboxError(f"Landlock is unavailable: {_errno_text(-abi)}")
    fs = _landlock_fs_rights(abi)
    if workdir is None:
        if abi < 6:
            raise SandboxError(f"Landlock ABI {abi} cannot scope signals (ABI >= 6 can)")
        attr, size = struct.pack("=QQQ", 0, 0, LL_SCOPE_ABSTRACT_UNIX_SOCKET | LL_SCOPE_SIGNAL), 24
    elif abi >= 6:
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
    if workdir is None:
        return int(fd)
    file_rw = LL_FS_READ_FILE | LL_FS_WRITE_FILE | (LL_FS_TRUNCATE if abi >= 3 else 0)
    read_dir = LL_FS_EXECUTE | LL_FS_READ_FILE | LL_FS_READ_DIR
    rules = [(path, read_dir, True) for path in _view_paths()]
    rules += [(workdir, fs, False), ("/dev/null", file_rw, False), ("/dev/urandom", LL_FS_READ_FILE, True)]
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
    "open": 2, "ioctl": 16, "socket": 41, "setsockopt": 54, "clone": 56, "kill": 62, "fcntl": 72, "truncate": 76,
    "ftruncate": 77,
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
    "bpf": 321, "userfaultfd": 323, "shmget": 29, "semget": 64, "msgget": 68, "memfd_create": 319,
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
    "adjtimex": 171, "socket": 198, "setsockopt": 208, "add_key": 217, "request_key": 218, "keyctl": 219,
    "clone": 220,
    "swapon": 224, "swapoff": 225, "migrate_pages": 238, "move_pages": 239, "rt_tgsigqueueinfo": 240,
    "perf_event_open": 241, "prlimit64": 261, "fanotify_init": 262, "open_by_handle_at": 265,
    "clock_adjtime": 266, "setns": 268, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272,
    "finit_module": 273, "renameat2": 276, "bpf": 280, "userfaultfd": 282, "kexec_file_load": 294,
    "msgget": 186, "semget": 190, "shmget": 194, "memfd_create": 279,
}
_COMMON_NEW = {  # unified numbering (>= 424) on both architectures
    "pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "pidfd_open": 434, "clone3": 435, "openat2": 437, "pidfd_getfd": 438, "process_madvise": 440,
    "mount_setattr": 442, "quotactl_fd": 443, "memfd_secret": 447, "fchmodat2": 452, "setxattrat": 463, "removexattrat": 466,
    "open_tree_attr": 467,
}
_SECCOMP_ARCHES = {  # uname machine -> (AUDIT_ARCH_*, syscall table, has the x32 ABI)
    "x86_64": (AUDIT_ARCH_X86_64, {**_X86_64, **_COMMON_NEW}, True),
    "aarch64": (AUDIT_ARCH_AARCH64, {**_AARCH64, **_COMMON_NEW}, False),
    "arm64": (AUDIT_ARCH_AARCH64, {**_AARCH64, **_COMMON_NEW}, False),
}

_DENY_EPERM = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "process_madvise",
    "migrate_pages", "move_pages", "mount", "umount2", "unshare", "setns", "pivot_root", "chroot", "bpf",
    "perf_event_open", "keyctl", "add_key", "request_key", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "userfaultfd", "pidfd_send_signal", "pidfd_getfd", "pidfd_open", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "open_by_handle_at", "open_tree", "open_tree_attr",
    "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "personality", "acct", "swapon",
    "swapoff", "reboot", "sethostname", "setdomainname", "settimeofday", "clock_settime", "clock_adjtime",
    "adjtimex", "syslog", "quotactl", "quotactl_fd", "vhangup", "iopl", "ioperm", "uselib", "lookup_dcookie",
    "fanotify_init", "shmget", "msgget", "semget", "memfd_create", "memfd_secret",
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
def _seccomp_program(deny_writes: bool, allow_unix_sockets: bool, confine_signals: bool = True,
                     confine_kill: bool = True) -> tuple[bytes, tuple[int, ...], tuple[int, ...]]:
    """The hardening filter as ``struct sock_filter`` bytes, plus the byte offsets of the ``k`` fields to patch
    with the child's pid and with ``-pid`` (32-bit two's complement).

    ``deny_writes`` adds the seccomp-mode file-modification denials; ``allow_unix_sockets`` lets ``socket()``
    create ``AF_UNIX`` sockets (otherwise every ``socket()`` fails); ``confine_signals`` (the modes without a PID
    namespace) refuses ``setsid``/``setpgid``, ``prlimit`` on other processes and signal-owner changes, and with
    ``confine_kill`` also signals to anything but the program's own pid or process group. Without
    ``confine_kill`` something else confines signals (a Landlock signal scope or the per-run uid), so a program
    may signal its own children. Every variant refuses ``F_SETPIPE_SZ`` and setting socket buffer sizes (the
    kernel-buffer part of the memory bound, :func:`memory_bound_mb`).
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
    # setsockopt(fd, SOL_SOCKET, SO_*BUF*): level in args[1], name in args[2]
    block("setsockopt", [(BPF_LD_W_ABS, 0, 0, _arg_lo(1)), (BPF_JEQ_K, 1, 0, SOL_SOCKET),
                         (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW)]
          + deny_values(2, [SO_SNDBUF, SO_RCVBUF, SO_SNDBUFFORCE, SO_RCVBUFFORCE], e.EPERM))
    if not confine_signals:
        block("fcntl", deny_values(1, [F_SETPIPE_SZ], e.EPERM))
        ret(SECCOMP_RET_ALLOW)
        return _assemble(ins)
    deny("setsid", e.EPERM)
    deny("setpgid", e.EPERM)
    if confine_kill:
        block("kill", allow_values(0, [0, _PID, _NEG_PID], e.EPERM))
        block("rt_sigqueueinfo", allow_values(0, [_PID, _NEG_PID], e.EPERM))
        block("tkill", allow_values(0, [_PID], e.EPERM))
        block("tgkill", allow_values(0, [_PID], e.EPERM))
        block("rt_tgsigqueueinfo", allow_values(0, [_PID], e.EPERM))
    block("prlimit64", allow_values(0, [0, _PID], e.EPERM))
    block("fcntl", deny_values(1, [F_SETPIPE_SZ, F_SETOWN, F_SETOWN_EX], e.EPERM))
    block("ioctl", deny_values(1, [FIOSETOWN, SIOCSPGRP], e.EPERM))
    ret(SECCOMP_RET_ALLOW)
    return _assemble(ins)


def _assemble(ins: list) -> tuple[bytes, tuple[int, ...], tuple[int, ...]]:
    """``struct sock_filter`` bytes of ``ins`` and the offsets of the pid / -pid placeholders."""
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
    """What the child of a ``landlock``/``seccomp`` run installs on itself (prepared in the parent): the seccomp
    hardening filter (before exec) and a Landlock ruleset (by the boot code): the full one in ``landlock`` mode,
    a signal/abstract-socket scope in ``seccomp`` mode where Landlock ABI >= 6 has one."""

    ruleset_fd: int | None
    filter_buf: ctypes.Array
    fprog: _SockFprog
    pid_offsets: tuple[int, ...]
    neg_pid_offsets: tuple[int, ...]

    @classmethod
    def build(cls, mode: str, workdir: str, uid: int | None) -> "_KernelLayers":
        scope = landlock_abi() >= 6  # Landlock can keep signals inside the program's own process tree
        ruleset_fd = _landlock_ruleset(workdir) if mode == "landlock" else \
            _landlock_ruleset(None) if scope else None
        # No socket() at all without a network namespace: Landlock does not confine connecting to host Unix
        # sockets by path (socketpair() stays available). Signals to any pid (e.g. a program's own child) are
        # allowed where the Landlock scope or the per-run uid confines them; else only the own process group.
        prog, pid_offs, neg_offs = _seccomp_program(deny_writes=mode == "seccomp", allow_unix_sockets=False,
                                                    confine_kill=not (scope or uid is not None))
        buf = ctypes.create_string_buffer(prog, len(prog))
        fprog = _SockFprog(len(prog) // 8, ctypes.addressof(buf))
        return cls(ruleset_fd, buf, fprog, pid_offs, neg_offs)

    def close(self) -> None:
        if self.ruleset_fd is not None:
            os.close(self.ruleset_fd)
            self.ruleset_fd = None



# --------------------------------------------------------------------------- the interpreter view


def _hidden_ancestors(path: str) -> list[str]:
    """Ancestors of ``path`` that other users cannot traverse (e.g. ``/root`` of a pyenv under ``/root``)."""
    parts = os.path.realpath(path).strip("/").split("/")
    return [a for a in ("/" + "/".join(parts[:i]) for i in range(1, len(parts))) if not os.stat(a).st_mode & 0o001]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


PACKAGE_DIRS = ("site-packages", "dist-packages")
"""Folder names of installed third-party packages: never part of the view, wherever they sit."""


def _package_dirs(root: str, depth: int = 3) -> list[str]:
    """``site-packages`` / ``dist-packages`` folders at most ``depth`` levels below ``root`` (a bounded scan: e.g.
    ``<stdlib>/site-packages``)."""
    found, level = [], [root]
    for _ in range(depth):
        nxt = []
        for d in level:
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                if e.name in PACKAGE_DIRS:
                    found.append(e.path)
                elif e.is_dir(follow_symlinks=False):
                    nxt.append(e.path)
        level = nxt
    return found


def _carve(root: str, excluded: Sequence[str]) -> list[str]:
    """The paths that grant ``root`` without the paths in ``excluded`` (for Landlock rules, which grant whole
    trees): ``root`` itself when nothing excluded lies below it; else each child of ``root`` on its own, recursing
    into the children that hold an excluded path and dropping the excluded ones. Symlink children need no rule
    (Landlock checks the file they resolve to, which is granted only if it is in the view itself)."""
    if not any(_under(x, root) for x in excluded):
        return [root]
    if root in excluded:
        return []
    paths = []
    for e in sorted(os.scandir(root), key=lambda e: e.name):
        if e.path in excluded or e.is_symlink():
            continue
        paths += _carve(e.path, excluded) if e.is_dir(follow_symlinks=False) else [e.path]
    return paths


def _resolve(path: str, links: list[tuple[str, str]], depth: int = 0) -> str:
    """The real path of ``path``, appending ``(target, link)`` for every symlink met on the way (to recreate in
    the view, so that e.g. ``/lib64/ld-linux-x86-64.so.2`` resolves there as it does on the host)."""
    if depth > 40:
        raise SandboxError(f"too many levels of symbolic links resolving {path}")
    cur = "/"
    for part in path.strip("/").split("/"):
        nxt = os.path.join(cur, part)
        if os.path.islink(nxt):
            target = os.readlink(nxt)
            links.append((target, nxt))
            cur = _resolve(os.path.normpath(os.path.join(cur, target)), links, depth + 1)
        else:
            cur = nxt
    return cur


def _linked_libraries(binaries: Sequence[str]) -> list[str]:
    """Shared libraries (as the loader names them) that ``binaries`` need: ``ldd`` of each, the loader itself,
    ``libgcc_s.so.1`` (glibc loads it for thread cancellation and unwinding) and the C.UTF-8 locale if it is a
    folder of its own."""
    ldd = shutil.which("ldd")
    out = ""
    if ldd:
        try:
            out = subprocess.run([ldd, *binaries], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
    libs = set()
    for line in out.splitlines():
        path = line.split("=>")[-1].strip().split(" (")[0].strip()
        if path.startswith("/") and os.path.exists(path):
            libs.add(path)
    for d in SYSTEM_LIB_DIRS:
        for extra in (f"{d}/libgcc_s.so.1", *glob.glob(f"{d}/*/libgcc_s.so.1"), f"{d}/locale/C.utf8"):
            if os.path.exists(extra):
                libs.add(extra)
    return sorted(libs)


@functools.lru_cache(maxsize=1)
def _view() -> dict:
    """What a sandboxed interpreter needs, mapped read-only at the same paths (cached):

    ``exe`` (the real interpreter binary), ``binds`` (host paths: the binary, a ``pyvenv.cfg`` next to a copied
    venv binary, the isolated interpreter's ``sys.path`` entries but ``site-``/``dist-packages``, each shared
    library the binary and the standard library's extension modules link against (:func:`_linked_libraries`),
    ``/etc/ld.so.cache``), ``symlinks`` (``(target, path)`` met on the way to those libraries, e.g. Debian's
    ``/lib -> usr/lib`` and ``/lib64/ld-linux-x86-64.so.2``) and ``dirs`` (every ancestor folder to create with
    mode 0755 first: bwrap would create them 0700, which a per-run uid cannot traverse). Every path is mapped on
    its own, so e.g. ``~/.pyenv`` and ``~/.cache/venv`` never hide each other and nothing else of the home
    folder, and nothing else of the system library folders (other interpreters' packages, applications under
    ``/usr/lib``), exists in the sandbox.

    No ``site-packages``/``dist-packages`` content is in the view (``excluded``: those found at most three levels
    below a mapped folder, e.g. the standard library's own ``site-packages``). bwrap maps an empty mode-0000 tmpfs
    over each (one mount each; carving the standard library into ~200 single mounts would cost bwrap ~0.4 s per
    run), so the folder's name stays and it cannot even be listed; Landlock grants ``readable``: the mapped
    folders carved child by child around them (:func:`_carve`), so nothing under them can be listed or read.
    """
    exe = os.path.realpath(sys.executable)
    probe = subprocess.run([exe, "-I", "-c", "import json, sys; print(json.dumps(sys.path))"], capture_output=True,
                           text=True, timeout=60, env={"PATH": SANDBOX_PATH, "LC_ALL": "C.UTF-8"})
    if probe.returncode != 0:
        raise SandboxError(f"could not ask {exe} for its sys.path: {last_lines(probe.stderr, 2) or probe.returncode}")
    entries = [os.path.realpath(p) for p in json.loads(probe.stdout) if p and os.path.exists(p)
               and not any(part in PACKAGE_DIRS for part in p.split("/"))]
    binds = [exe] + [c for c in (os.path.join(os.path.dirname(exe), "pyvenv.cfg"),
                                 os.path.join(os.path.dirname(os.path.dirname(exe)), "pyvenv.cfg")) if os.path.isfile(c)]
    binds += entries + ([f] if os.path.isfile(f := "/etc/ld.so.cache") else [])
    extensions = [e.path for d in entries if os.path.isdir(d) for e in os.scandir(d) if e.name.endswith(".so")]
    symlinks: list[tuple[str, str]] = []
    system = {os.path.realpath(d) for d in SYSTEM_LIB_DIRS if os.path.isdir(d)}
    for lib in _linked_libraries([exe, *extensions]):
        real = _resolve(lib, symlinks)
        folder = real if os.path.isdir(real) else os.path.dirname(real)
        # a library in a system folder's sub-folder (Debian's multiarch /usr/lib/x86_64-linux-gnu) maps that folder
        # in one mount; one directly in a system folder (/usr/lib64 on Fedora), or elsewhere, maps on its own
        inside = folder not in system and any(_under(folder, d) for d in system)
        binds.append(folder if inside else real)
    binds = sorted(set(binds), key=lambda p: (p.count("/"), p))
    binds = [p for p in binds if not any(q != p and _under(p, q) for q in binds)]
    symlinks = sorted({(t, link) for t, link in symlinks if not any(_under(link, q) for q in binds)},
                      key=lambda tl: (tl[1].count("/"), tl[1]))
    excluded = sorted({x for r in binds if os.path.isdir(r) for x in _package_dirs(r)})
    readable = [p for r in binds for p in _carve(r, excluded)]
    leaves = binds + [link for _, link in symlinks]
    dirs = sorted({a for p in leaves for a in ("/" + "/".join(p.strip("/").split("/")[:i])
                                                for i in range(1, p.count("/")))
                   if not any(_under(a, q) for q in leaves)}, key=lambda p: (p.count("/"), p))
    return {"exe": exe, "binds": binds, "symlinks": symlinks, "dirs": dirs, "excluded": excluded,
            "readable": readable}


def _view_paths() -> list[str]:
    """Host paths a Landlock-confined program may read (the interpreter view, carved around package folders)."""
    return list(_view()["readable"])


def _expose_dirs() -> list[str]:
    """Interpreter folders below a folder other users cannot traverse: the ``landlock``/``seccomp`` boot code keeps
    them importable after the uid drop through ``/proc/self/fd/<n>`` handles opened before it (exactly these
    folders: a handle on an ancestor would expose its other children, e.g. a dataset cache; in ``landlock`` mode
    only the carved view below them is readable)."""
    return [p for p in _view()["binds"] if os.path.isdir(p) and _hidden_ancestors(p)]


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
    import builtins
    import os

    class Quitter:  # what `site` (skipped with -S: it costs more than the rest of start-up) would install
        def __init__(self, name):
            self.name = name

        def __repr__(self):
            return "Use %s() or Ctrl-D (i.e. EOF) to exit" % self.name

        def __call__(self, code=None):
            raise SystemExit(code)

    builtins.exit, builtins.quit = Quitter("exit"), Quitter("quit")
    if _LIMITS:
        import resource
        for _res, _soft, _hard in _LIMITS:
            resource.setrlimit(_res, (_soft, _hard))
    if _UID is not None:
        if _EXPOSE:
            # Interpreter folders below a folder the sandbox uid cannot traverse: keep them importable through
            # /proc/self/fd/<n> (a handle opened now, while still root, needs no traversal later).
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
    if _CLEAR_INHERITABLE or _LANDLOCK_FD is not None:
        import _ctypes  # not ctypes: its import costs a bwrap run ~5 ms of CPU

        class Long(_ctypes._SimpleCData):
            _type_ = "l"

        class Fn(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = Long

        class Libc:
            _handle = _ctypes.dlopen(None, _ctypes.RTLD_LOCAL)

    if _CLEAR_INHERITABLE:
        # the uid change cleared the permitted and effective sets; clear the inheritable one too (bwrap leaves
        # CAP_SETUID/CAP_SETGID there): capset(v3 header, all-zero data)
        if Fn(("capset", Libc))((0x20080522).to_bytes(4, sys.byteorder) + bytes(4), bytes(24)) != 0:
            raise SystemExit("sandbox: could not clear the inheritable capabilities: errno %d" % _ctypes.get_errno())
    if _LANDLOCK_FD is not None:
        # Landlock from here, not before exec: the start-up above listed the standard library folder (which the
        # ruleset does not let the program list: it is carved around site-packages), and every path finder
        # fills its listing now, so imports keep working inside the domain.
        import importlib.machinery
        importlib.machinery.PathFinder.find_spec("_scgrpo_sandbox_warm_up_")
        if Fn(("syscall", Libc))(Long(446), Long(_LANDLOCK_FD), Long(0)) != 0:
            raise SystemExit("sandbox: landlock_restrict_self failed: errno %d" % _ctypes.get_errno())
        os.close(_LANDLOCK_FD)
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
    while _tb is not None and _tb.tb_frame.f_code.co_filename == "<string>":
        _tb = _tb.tb_next  # hide the boot frames: the traceback starts in main.py, as with `python main.py`
    sys.excepthook(type(_e), _e.with_traceback(_tb), _tb)
    raise SystemExit(1)
'''


def _boot_source(audit: bool, uid: int | None, expose: Sequence[str],
                 limits: Sequence[tuple[int, tuple[int, int]]] = (), landlock_fd: int | None = None,
                 clear_inheritable: bool = False) -> str:
    """The ``python -c`` boot code: optional audit hook, rlimits, uid drop, the inheritable capabilities cleared
    (``clear_inheritable``: bwrap as root leaves some), Landlock (``landlock_fd``: an inherited ruleset), then
    ``main.py`` as ``__main__``."""
    lim = [(int(res), int(soft), int(hard)) for res, (soft, hard) in limits]
    return (f"_AUDIT = {audit!r}\n_UID = {uid!r}\n_EXPOSE = {list(expose)!r}\n_LIMITS = {lim!r}\n"
            f"_LANDLOCK_FD = {landlock_fd!r}\n_CLEAR_INHERITABLE = {clear_inheritable!r}\n" + _BOOT)


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


def _kill_uid(uid: int, attempts: int = 200) -> None:
    """SIGKILL every process of ``uid`` (from a helper that runs as ``uid``, so ``kill(-1)`` is scoped)."""
    for i in range(attempts):
        if not _live_pids_of_uid(uid):
            return
        if i % 10 == 0:
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


def _memfd(name: str, data: bytes = b"") -> int:
    """An anonymous memory file (close-on-exec) holding ``data``, positioned at 0."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _stdin_fd(text: str) -> int:
    """A read-only descriptor of a sealed anonymous memory file holding ``text``: the program can neither write,
    grow (``fallocate``), shrink nor unseal it, even if it reopens ``/proc/self/fd/0`` for writing."""
    fd = os.memfd_create("stdin", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(text.encode("utf-8", errors="surrogateescape"))
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(fd)


def _read_fd(fd: int, n: int, tail: bool = False) -> tuple[bytes, int]:
    """The first (or last) ``n`` bytes of the file ``fd`` and its total size."""
    size = os.fstat(fd).st_size
    start = max(0, size - n) if tail else 0
    return os.pread(fd, min(n, size), start), size


def _remove_tree(path: str) -> None:
    """Delete ``path`` whatever a program left in it (deep trees, odd modes); never raises."""
    try:
        shutil.rmtree(path)
    except (OSError, RecursionError):
        pass
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--one-file-system", "--", path], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
    if os.path.lexists(path):
        logger.warning("sandbox: could not delete %s", path)


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


def _rlimits(limits: SandboxLimits, nproc: int) -> list[tuple[int, tuple[int, int]]]:
    mem = limits.memory_mb << 20
    fsize = max(limits.max_file_size_mb << 20, limits.max_output_bytes + 1)
    cpu = limits.cpu_seconds
    return [(resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (mem, mem)),
            (resource.RLIMIT_FSIZE, (fsize, fsize)), (resource.RLIMIT_NOFILE, (limits.max_open_files,) * 2),
            (resource.RLIMIT_CORE, (0, 0)), (resource.RLIMIT_NPROC, (nproc, nproc)),
            (resource.RLIMIT_MSGQUEUE, (0, 0)), (resource.RLIMIT_MEMLOCK, (0, 0))]  # no POSIX mqueue, no mlock


@functools.lru_cache(maxsize=1)
def _bwrap_filter() -> bytes:
    prog, _, _ = _seccomp_program(deny_writes=False, allow_unix_sockets=True, confine_signals=False)
    return prog


def _bwrap_argv(limits: SandboxLimits, uid: int | None, files: Sequence[tuple[int, str]], seccomp_fd: int,
                info_fd: int) -> list:
    """The bwrap command line of one run (module docstring). The rlimits are set by the boot code inside the
    sandbox, before the uid drop and before any program code, so the parent needs no ``preexec_fn`` and
    ``subprocess`` can spawn bwrap with ``vfork`` (a trainer process with a large address space forks slowly).
    ``RLIMIT_NPROC`` then counts the per-run uid (root host) or the processes of the run's user namespace
    (including bwrap's PID 1)."""
    nproc = limits.max_processes if uid is not None else limits.max_processes + 1
    view = _view()
    argv = [shutil.which("bwrap") or "bwrap"]
    if os.geteuid() == 0:
        # privileged bwrap: no user namespace (it would map the program back to host uid 0, which RLIMIT_NPROC
        # exempts); the boot code drops to the per-run uid with the two capabilities kept for that
        argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                 "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-all", "--unshare-user", "--disable-userns"]
    argv += ["--die-with-parent", "--info-fd", str(info_fd), "--hostname", "sandbox", "--clearenv"]
    for key, value in _ENV.items():
        argv += ["--setenv", key, value]
    for d in view["dirs"]:
        argv += ["--perms", "0755", "--dir", d]
    for target, link in view["symlinks"]:
        argv += ["--symlink", target, link]
    for path in view["binds"]:
        argv += ["--ro-bind", path, path]
    for path in view["excluded"]:  # an empty tmpfs nobody may list over each package folder
        argv += ["--perms", "0000", "--size", "4096", "--tmpfs", path]
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(limits.shm_mb << 20), "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
             "--perms", "1777", "--size", str(limits.disk_mb << 20), "--tmpfs", "/tmp"]
    for fd, name in files:
        argv += ["--perms", "0644", "--file", str(fd), f"/tmp/{name}"]
    argv += ["--remount-ro", "/", "--chdir", "/tmp", "--seccomp", str(seccomp_fd),
             "--", view["exe"], "-I", "-B", "-S", "-c",
             _boot_source(False, uid, (), _rlimits(limits, nproc), clear_inheritable=uid is not None)]
    return argv


def _wait(proc: subprocess.Popen, limits: SandboxLimits) -> tuple[bool, float]:
    """Wait for ``proc`` up to the wall-clock limit, then kill its process group; (timed out, seconds)."""
    t0 = time.monotonic()
    timed_out = False
    try:
        proc.wait(timeout=limits.wall_time_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    _killpg(proc.pid)  # the session leader's pid is the process-group id
    proc.wait()
    return timed_out, time.monotonic() - t0


def _wait_for_teardown(info_fd: int, timeout_s: float = 10.0) -> None:
    """Wait until bwrap's PID 1 (pid from ``--info-fd``) has exited: the kernel lets the init of a PID namespace
    finish exiting only after every other process of the namespace is gone. bwrap's outer process may report the
    program's exit status before that, so its exit alone does not mean the run is over."""
    try:
        info = json.loads(os.read(info_fd, 4096) or b"{}")
        pid = int(info["child-pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # bwrap did not get as far as starting the sandbox
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already exited and reaped
    try:
        if not select.select([pidfd], [], [], timeout_s)[0]:
            logger.warning("sandbox: bwrap's init (pid %d) still runs %.0f s after the program ended", pid, timeout_s)
    finally:
        os.close(pidfd)


def _result(mode: str, uid: int | None, rc: int | None, timed_out: bool, wall: float, out_fd: int, err_fd: int,
            limits: SandboxLimits) -> SandboxResult:
    stdout_b, stdout_size = _read_fd(out_fd, limits.max_output_bytes)
    stderr_b, _ = _read_fd(err_fd, limits.stderr_tail_bytes, tail=True)
    stderr_s = stderr_b.decode("utf-8", errors="replace")
    if mode == "bwrap" and rc is not None and rc > 128 and rc - 128 in signal.valid_signals():
        rc = -(rc - 128)  # bwrap reports a child killed by signal N as exit status 128 + N
    status = classify(None if timed_out else rc, timed_out, stdout_size, stderr_s, limits)
    return SandboxResult(status=status, stdout=stdout_b.decode("utf-8", errors="replace"), stderr=stderr_s,
                         returncode=None if timed_out else rc, wall_time_s=wall, isolation=mode, uid=uid)


def _run_bwrap(source: str, stdin: str, limits: SandboxLimits, files: Mapping[str, str]) -> SandboxResult:
    uid = UID_BASE + secrets.randbelow(UID_SPAN) if os.geteuid() == 0 else None
    fds: list[int] = []
    try:
        file_fds = []
        for name, text in {**files, "main.py": source}.items():
            fds.append(_memfd(name, text.encode("utf-8", errors="surrogateescape")))
            file_fds.append((fds[-1], name))
        seccomp_fd = _memfd("seccomp", _bwrap_filter())
        info_r, info_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        fds += [seccomp_fd, info_r, info_w]
        argv = _bwrap_argv(limits, uid, file_fds, seccomp_fd, info_w)
        in_fd, out_fd, err_fd = _stdin_fd(stdin), _memfd("stdout"), _memfd("stderr")
        fds += [in_fd, out_fd, err_fd]
        try:
            proc = subprocess.Popen(argv, stdin=in_fd, stdout=out_fd, stderr=err_fd, cwd="/", env={},
                                    start_new_session=True, close_fds=True,
                                    pass_fds=[fd for fd, _ in file_fds] + [seccomp_fd, info_w])
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxError(f"could not start bwrap: {exc!r}") from exc
        fds.remove(info_w)
        os.close(info_w)
        timed_out, wall = _wait(proc, limits)
        _wait_for_teardown(info_r)
        if uid is not None and timed_out:
            _kill_uid(uid)
        return _result("bwrap", uid, proc.returncode, timed_out, wall, out_fd, err_fd, limits)
    finally:
        for fd in fds:
            os.close(fd)


def _run_unshared(source: str, stdin: str, limits: SandboxLimits, mode: str,
                  files: Mapping[str, str]) -> SandboxResult:
    """``landlock`` / ``seccomp`` / ``audit``: a private host folder, kernel layers, the uid drop as root."""
    base = tempfile.mkdtemp(prefix="scgrpo_sbx_")
    uid = None
    layers: _KernelLayers | None = None
    fds: list[int] = []
    try:
        workdir = os.path.join(base, "w")
        os.mkdir(workdir, 0o700)
        if os.geteuid() == 0 and mode != "audit" and _KERNEL_MODES_DROP_UID:
            uid = UID_BASE + secrets.randbelow(UID_SPAN)
        for name, text in {**files, "main.py": source}.items():
            with open(os.path.join(workdir, name), "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(text)
        if uid is not None:
            for name in [".", "main.py", *files]:
                os.chown(os.path.join(workdir, name), uid, uid)
            os.chmod(base, 0o711)
        nproc = limits.max_processes if uid is not None else _user_process_count(os.getuid()) + limits.max_processes
        rl = _rlimits(limits, nproc)
        if mode != "audit":
            layers = _KernelLayers.build(mode, workdir, uid)
        ruleset_fd = layers.ruleset_fd if layers is not None else None
        boot = _boot_source(mode == "audit", uid, _expose_dirs() if uid is not None else [], landlock_fd=ruleset_fd)
        args = [os.path.realpath(sys.executable) if mode != "audit" else sys.executable, "-I", "-B", "-S", "-c", boot]
        in_fd, out_fd, err_fd = _stdin_fd(stdin), _memfd("stdout"), _memfd("stderr")
        fds += [in_fd, out_fd, err_fd]
        byteorder = sys.byteorder

        def preexec() -> None:
            if layers is not None:  # before RLIMIT_AS: installing the layers allocates a little
                _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
                pid = os.getpid()  # unchanged by exec; the child leads its own session and process group
                buf = layers.filter_buf
                for off in layers.pid_offsets:
                    buf[off:off + 4] = pid.to_bytes(4, byteorder)
                for off in layers.neg_pid_offsets:
                    buf[off:off + 4] = ((-pid) & 0xFFFFFFFF).to_bytes(4, byteorder)
                _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(layers.fprog), 0, 0),
                       "prctl(PR_SET_SECCOMP)")
            for res, value in rl:
                resource.setrlimit(res, value)

        try:
            proc = subprocess.Popen(args, stdin=in_fd, stdout=out_fd, stderr=err_fd, cwd=workdir, env=dict(_ENV),
                                    start_new_session=True, preexec_fn=preexec, close_fds=True,
                                    pass_fds=[ruleset_fd] if ruleset_fd is not None else [])
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxError(f"could not start a sandboxed process (mode={mode}): {exc!r}") from exc
        finally:
            if layers is not None:
                layers.close()
        timed_out, wall = _wait(proc, limits)
        if uid is not None:
            _kill_uid(uid)
        return _result(mode, uid, proc.returncode, timed_out, wall, out_fd, err_fd, limits)
    finally:
        for fd in fds:
            os.close(fd)
        if layers is not None:
            layers.close()
        _remove_tree(base)


def _run(source: str, stdin: str, limits: SandboxLimits, mode: str,
         files: Mapping[str, str] | None = None) -> SandboxResult:
    """Run ``source`` once under ``mode`` (no selection)."""
    if mode == "bwrap":
        return _run_bwrap(source, stdin, limits, files or {})
    return _run_unshared(source, stdin, limits, mode, files or {})


def run_program(source: str, stdin: str = "", limits: SandboxLimits | None = None, *,
                files: Mapping[str, str] | None = None, mode: str | None = None) -> SandboxResult:
    """Run Python ``source`` with ``stdin`` in the sandbox.

    Args:
        source: the program text (``main.py`` in the run's private working folder).
        stdin: text fed on standard input.
        limits: resource limits (defaults: :class:`SandboxLimits`).
        files: extra ``{basename: text}`` files placed next to ``main.py`` (e.g. a solution a harness imports).
        mode: an isolation mode in :data:`MODES`, or ``None``/``"auto"``: :func:`select_mode` (bwrap, or the
            mode opted into with ``SCGRPO_SANDBOX_MODE``). Forcing a mode skips the opt-in (tests, benchmarks).

    Returns:
        A :class:`SandboxResult`. Program failures are statuses, never exceptions.

    Raises:
        TypeError: ``source``/``stdin`` not ``str``.
        SandboxError: the sandbox cannot run at all (:data:`REFUSAL` when bwrap does not work and nothing weaker
            was opted into), or it broke after start-up (a failed run that looks like a sandbox failure is
            re-probed, :func:`_recheck`).
    """
    if not isinstance(source, str) or not isinstance(stdin, str):
        raise TypeError(f"source and stdin must be str, got {type(source).__name__}, {type(stdin).__name__}")
    for name in files or {}:
        if not isinstance(name, str) or name in ("main.py", "", ".", "..") or "/" in name or "\0" in name:
            raise ValueError(f"invalid sandbox file name {name!r}")
    limits = limits or SandboxLimits()
    mode = select_mode(mode)
    res = _run(source, stdin, limits, mode, files)
    if _looks_broken(res):
        _recheck(mode)
    return res


_BROKEN_PREFIXES = ("bwrap: ", "sandbox: ", "Fatal Python error: ")
"""How a failure of the sandbox itself starts a line of stderr: bwrap's own errors (``bwrap: No permissions to
create new namespace...``), the boot code's (``sandbox: could not drop privileges``), an interpreter that cannot
start in the view."""


def _looks_broken(res: SandboxResult) -> bool:
    """Whether a failed run may be the sandbox's failure rather than the program's (then :func:`_recheck`)."""
    return res.status != "ok" and not res.stdout and any(
        line.startswith(_BROKEN_PREFIXES) for line in res.stderr.splitlines())


def _recheck(mode: str) -> None:
    """Probe ``mode`` again, uncached; raise :class:`SandboxError` when it no longer works (a sandbox that broke
    after start-up must stop training, never score every program 0). A program that only prints such a line
    costs one probe run and keeps its own result."""
    reason = probe_mode.__wrapped__(mode)
    if reason is None:
        return
    probe_mode.cache_clear()
    _select.cache_clear()
    raise SandboxError(f"the {mode!r} code sandbox stopped working after start-up ({reason}); code rewards stop "
                       f"here rather than score every program 0: fix the host and restart (`scgrpo-verl sandbox` "
                       f"prints the probes)")


def default_workers() -> int:
    """The CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _sysctl_int(path: str, default: int) -> int:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def memory_bound_mb(limits: SandboxLimits, socket_buffer_bytes: int | None = None) -> int:
    """The most memory one run can hold, in MiB, from the limits the sandbox enforces (bwrap mode):

    ``max_processes * memory_mb`` (``RLIMIT_AS`` per process, ``RLIMIT_NPROC`` processes and threads)
    ``+ disk_mb + shm_mb`` (the size-limited ``/tmp`` and ``/dev/shm`` tmpfs)
    ``+ 2 * file_cap`` (stdout and stderr memory files, each capped by ``RLIMIT_FSIZE`` = ``file_cap`` =
    ``max(max_file_size_mb, max_output_bytes + 1)``; stdin is sealed: it cannot grow)
    ``+ (max_processes + 1) * max_open_files * per_descriptor`` (kernel buffers: every descriptor, plus as many in
    flight in Unix-socket messages, may be a pipe of :data:`PIPE_BUF_BYTES` (``F_SETPIPE_SZ`` is refused) or a
    socket holding up to twice ``net.core.wmem_default`` (``socket_buffer_bytes``; ``SO_SNDBUF``/``SO_RCVBUF`` are
    refused)). SysV IPC and ``memfd_create`` are refused. Small per-object kernel structures are not counted.
    """
    if socket_buffer_bytes is None:
        socket_buffer_bytes = 2 * _sysctl_int("/proc/sys/net/core/wmem_default", 212992)
    file_cap = max(limits.max_file_size_mb << 20, limits.max_output_bytes + 1)
    per_fd = max(PIPE_BUF_BYTES, socket_buffer_bytes)
    total = ((limits.max_processes * limits.memory_mb << 20) + ((limits.disk_mb + limits.shm_mb) << 20)
             + 2 * file_cap + (limits.max_processes + 1) * limits.max_open_files * per_fd)
    return -(-total // (1 << 20))


MEMORY_SHARE = 0.8
"""Share of the host's available memory :func:`run_batch` lets its concurrent runs' bounds add up to."""


def batch_workers(bound_mb: int, available_mb: int, cores: int, max_workers: int | None = None,
                  share: float = MEMORY_SHARE) -> int:
    """Concurrent runs for :func:`run_batch` (pure): as many as fit their worst-case memory (``bound_mb`` each,
    :func:`memory_bound_mb`) into ``share`` of ``available_mb``, at most ``cores`` (or ``max_workers`` when
    given), and at least 1 (a single run is never refused: its limits are the user's choice)."""
    if bound_mb <= 0 or cores <= 0:
        raise ValueError(f"bound_mb and cores must be > 0, got {bound_mb}, {cores}")
    fit = int(max(0, available_mb) * share) // bound_mb
    return max(1, min(max_workers or cores, fit))


def run_batch(jobs: Iterable[tuple[str, str]], limits: SandboxLimits | None = None,
              max_workers: int | None = None, **kwargs) -> list[SandboxResult]:
    """Run ``(source, stdin)`` jobs concurrently; results are in job order (length ``len(jobs)``).

    Threads only wait on child processes; the pool (:func:`batch_workers`) runs as many programs at once as
    fit their worst-case memory (:func:`memory_bound_mb`) into the host's available memory (psutil), at most
    one per core or ``max_workers``.
    """
    import psutil

    jobs = list(jobs)
    limits = limits or SandboxLimits()
    workers = batch_workers(memory_bound_mb(limits), psutil.virtual_memory().available >> 20, default_workers(),
                            max_workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: run_program(job[0], job[1], limits, **kwargs), jobs))


# --------------------------------------------------------------------------- mode selection and diagnostics

_PROBE_SOURCE = "import json, math, collections, fractions\nprint({mode!r})\n"


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


@functools.lru_cache(maxsize=None)
def probe_mode(mode: str) -> str | None:
    """``None`` if a trivial program (stdlib imports + print) runs under ``mode`` on this host, else the reason
    it does not, on one line. Cached per mode."""
    if mode not in MODES:
        raise ValueError(f"unknown sandbox mode {mode!r}")
    if not sys.platform.startswith("linux"):
        return f"the sandbox supports Linux only, not {sys.platform}"
    if mode == "bwrap" and shutil.which("bwrap") is None:
        return "bwrap is not installed (no `bwrap` on PATH)"
    if mode in KERNEL_MODES and _seccomp_arch() is None:
        return f"no seccomp syscall table for machine {os.uname().machine!r}"
    if mode == "landlock" and landlock_abi() < 1:
        return f"Landlock unavailable: landlock_create_ruleset(VERSION) failed with {_errno_text(-landlock_abi())}"
    try:
        res = _run(_PROBE_SOURCE.format(mode=mode), "", SandboxLimits(wall_time_s=20), mode)
    except (OSError, subprocess.SubprocessError, SandboxError) as exc:
        return _one_line(f"{type(exc).__name__}: {exc}")
    if res.status != "ok" or res.stdout.strip() != mode:
        return _one_line(f"probe program failed: status={res.status} returncode={res.returncode} "
                         f"stderr: {last_lines(res.stderr, 4)}")
    return None


def select_mode(requested: str | None = None) -> str:
    """The isolation mode for code rewards: ``requested`` (a mode, ``"auto"`` or ``None``), else the
    ``SCGRPO_SANDBOX_MODE`` environment variable, else ``"auto"``.

    ``auto``/``bwrap`` need bwrap to work (else :class:`SandboxError` with :data:`REFUSAL`: code rewards fail
    closed). A weaker mode is used only when named explicitly, and is logged at WARNING (once per process) with
    the invariants it does not hold and why bwrap was not used.
    """
    req = requested if requested is not None else os.environ.get(ENV_MODE, "") or "auto"
    req = str(req).strip().lower()
    if req not in ("auto",) + MODES:
        raise SandboxError(f"sandbox mode {req!r} (from {ENV_MODE} or sandbox_mode) is not one of "
                           f"{('auto',) + MODES}")
    return _select(req)


@functools.lru_cache(maxsize=None)
def _select(req: str) -> str:
    if req in ("auto", "bwrap"):
        reason = probe_mode("bwrap")
        if reason is not None:
            raise SandboxError(REFUSAL.format(reason=reason))
        return "bwrap"
    reason = probe_mode(req)
    if reason is not None:
        raise SandboxError(f"sandbox mode {req!r} (chosen with {ENV_MODE} or sandbox_mode) does not work here: "
                           f"{reason}")
    broken = [name for name, held in INVARIANTS[req].items() if not held]
    logger.warning("scgrpo_verl sandbox: code rewards run in the weaker %r mode you opted into; invariants it does "
                   "NOT hold here: %s; bwrap: %s", req, ", ".join(broken) or "none",
                   probe_mode("bwrap") or "works on this host (unset the opt-in for full isolation)")
    return req


def isolation_mode() -> str:
    """The mode :func:`run_program` uses by default (:func:`select_mode` with no argument)."""
    return select_mode()


INVARIANT_DOCS = {
    "other_runs_invisible": "no run can read or touch another run's files or processes",
    "host_processes_invisible": "host processes' command lines and environment cannot be read or signalled",
    "only_mapped_host_paths": "no host path outside the interpreter view is readable (datasets, home, project)",
    "nothing_survives": "files, processes, IPC objects and memory a run creates are gone when it ends",
    "disk_bounded": "total disk a run can fill is bounded",
    "memory_bounded": "memory (shm and memfd included) is bounded",
    "processes_bounded": "processes and threads are bounded per run",
    "no_network": "no network at all, Unix sockets to host services included",
}
_ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False
INVARIANTS = {
    "bwrap": dict.fromkeys(INVARIANT_DOCS, True),
    "landlock": {**dict.fromkeys(INVARIANT_DOCS, True), "disk_bounded": False, "processes_bounded": _ROOT,
                 "nothing_survives": _ROOT},
    "seccomp": {"other_runs_invisible": _ROOT, "host_processes_invisible": False, "only_mapped_host_paths": False,
                "nothing_survives": _ROOT, "disk_bounded": True, "memory_bounded": True, "processes_bounded": _ROOT,
                "no_network": True},
    "audit": dict.fromkeys(INVARIANT_DOCS, False),
}
"""Which invariants each mode holds on this host (as root the per-run uid adds some); the red-team suite checks
every ``True`` entry."""


def _cgroup_status() -> str:
    """Whether per-run cgroup v2 limits could be used here, and why not (limits then come from rlimits)."""
    try:
        with open("/proc/self/cgroup") as f:
            own = [line.split(":", 2)[2].strip() for line in f if line.startswith("0::")]
    except OSError as exc:
        return f"rlimits: /proc/self/cgroup unreadable ({exc.strerror})"
    for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        path = root + (own[0] if own else "")
        try:
            with open(os.path.join(path, "cgroup.controllers")) as f:
                controllers = f.read().split()
        except OSError:
            continue
        missing = [c for c in ("memory", "pids") if c not in controllers]
        if missing:
            return f"rlimits: the cgroup v2 hierarchy at {path} has no {'/'.join(missing)} controller " \
                   f"(they are on cgroup v1 here); memfd/SysV IPC refused, shm/disk in size-limited tmpfs"
        return f"rlimits: cgroup v2 {path} has memory+pids but per-run cgroups are not delegated to this process"
    return "rlimits: no cgroup v2 hierarchy mounted"


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
    """What isolation code rewards get on this host, which invariants hold, and why (for CI logs and
    ``scgrpo-verl sandbox``; runs every probe, cached).

    Returns a JSON-serialisable dict: host facts (``euid``, ``kernel``, ``bwrap`` path and version, Landlock ABI,
    seccomp support, ``limits_via``), ``modes`` (``"ok"`` or the reason each probe failed), ``selected`` (the mode
    :func:`select_mode` picks, or ``None`` with ``refusal``: the one-line error code rewards raise),
    ``invariants`` (each invariant -> held in the selected mode), ``not_held`` and ``why_not_stronger`` (why
    bwrap is not the selected mode, if it is not).
    """
    info: dict = {"platform": sys.platform, "euid": os.geteuid(), "python": sys.executable,
                  "requested": os.environ.get(ENV_MODE) or "auto"}
    if sys.platform.startswith("linux"):
        uname = os.uname()
        info.update(kernel=uname.release, machine=uname.machine, host_status=_host_status())
        bwrap = shutil.which("bwrap")
        info["bwrap"] = bwrap
        if bwrap:
            try:
                info["bwrap_version"] = subprocess.run([bwrap, "--version"], capture_output=True, text=True,
                                                       timeout=10).stdout.strip()
            except (OSError, subprocess.SubprocessError) as exc:
                info["bwrap_version"] = repr(exc)
        abi = landlock_abi()
        info["landlock_abi"] = abi if abi >= 1 else None
        if abi < 1:
            info["landlock_error"] = _errno_text(-abi)
        arch = _seccomp_arch()
        info["seccomp_arch"] = None if arch is None else hex(arch[0])
        info["limits_via"] = _cgroup_status()
        try:
            view = _view()  # the Landlock paths (hundreds: the standard library carved) as a count
            info["interpreter_view"] = {**view, "readable": f"{len(view['readable'])} paths (Landlock rules)"}
        except (OSError, subprocess.SubprocessError, SandboxError) as exc:
            info["interpreter_view"] = repr(exc)
    info["modes"] = {m: probe_mode(m) or "ok" for m in MODES}
    try:
        info["selected"] = select_mode()
    except SandboxError as exc:
        info["selected"], info["refusal"] = None, str(exc)
    selected = info["selected"]
    info["invariants"] = {k: INVARIANTS[selected][k] if selected else False for k in INVARIANT_DOCS}
    info["not_held"] = [INVARIANT_DOCS[k] for k, held in info["invariants"].items() if not held]
    if selected != "bwrap":
        info["why_not_stronger"] = {"bwrap": info["modes"]["bwrap"] if info["modes"]["bwrap"] != "ok" else
                                    f"bwrap works, but {ENV_MODE}={info['requested']} selects a weaker mode"}
    return info


if __name__ == "__main__":  # python -m scgrpo_verl.rewards.sandbox: why this host gets its isolation mode
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print(json.dumps(diagnose(), indent=2))
