"""What every layer of the sandbox shares: :class:`SandboxError`, the per-run :class:`SandboxLimits` and the rlimits
they become (:func:`_rlimits`), the :class:`SandboxResult` of one run with its status (:func:`classify`) and
judge-style feedback (:func:`describe_failure`), the per-run uid range and ``PATH``, and the libc handle the kernel
layers call (:func:`_syscall`, :func:`_check`). It imports nothing else of the sandbox."""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import errno
import math
import os
import resource
import signal

STATUSES = ("ok", "runtime_error", "compile_error", "timeout", "memory", "output_limit")

UID_BASE = 2_000_000
UID_SPAN = 1 << 20
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"


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
