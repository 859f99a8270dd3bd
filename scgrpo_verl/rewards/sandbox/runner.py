"""The sandbox's entry points: :func:`run_program` (one program: argument checks, mode selection, one run, and a
re-probe that stops training when a failure looks like the sandbox's own) and :func:`run_batch` (many, on a thread
pool sized so that the runs' worst-case memory, :func:`memory_bound_mb`, fits the host's available memory:
:func:`batch_workers`)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Mapping

from .base import SandboxError, SandboxLimits, SandboxResult
from .modes import _select, probe_mode, select_mode
from .process import _run
from .seccomp import PIPE_BUF_BYTES

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
