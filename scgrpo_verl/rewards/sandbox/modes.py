"""Isolation modes: :data:`MODES` (strongest first), the invariants each holds on this host (:data:`INVARIANTS`,
checked by the red-team suite), probing whether a mode works here (:func:`probe_mode`, cached) and choosing the one
code rewards use (:func:`select_mode`: bwrap, or a weaker mode only after an explicit opt-in, logged at WARNING;
otherwise :class:`SandboxError` with :data:`REFUSAL`)."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys

from .base import SandboxError, SandboxLimits, _errno_text, last_lines
from .landlock import landlock_abi
from .process import _run
from .seccomp import _seccomp_arch

logger = logging.getLogger(__package__)  # the package's logger, as before the split into modules

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
