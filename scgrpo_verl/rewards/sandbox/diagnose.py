"""Diagnostics: :func:`diagnose` reports what isolation code rewards get on this host and why (host facts, every
mode's probe, the selected mode, the invariants it holds, why nothing stronger), for CI logs,
``python -m scgrpo_verl.rewards.sandbox`` and ``scgrpo-verl sandbox``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from .base import SandboxError, _errno_text
from .landlock import landlock_abi
from .modes import ENV_MODE, INVARIANT_DOCS, INVARIANTS, MODES, probe_mode, select_mode
from .seccomp import _seccomp_arch
from .view import _view

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
