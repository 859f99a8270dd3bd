"""Whether the CPU debugging backend (:mod:`scgrpo_verl.cpu_backend`) is on, and the names it registers with verl.

A leaf module (standard library only): :mod:`scgrpo_verl.startup_checks` asks it without importing
:mod:`scgrpo_verl.cpu_backend`, whose ``run`` module runs those checks before a launch. The imports stay one-way:
``cpu_backend -> startup_checks -> cpu_flag`` and ``cpu_backend -> cpu_flag``.
"""

from __future__ import annotations

import os

ENV_FLAG = "SCGRPO_VERL_CPU_BACKEND"
ROLLOUT_NAME = "hf"  # the backend's HF-generate rollout (scgrpo_verl.cpu_backend.hf_rollout)
PLATFORM_NAME = "cpu"  # the backend's verl platform (scgrpo_verl.cpu_backend.platform)


def is_enabled() -> bool:
    """``SCGRPO_VERL_CPU_BACKEND`` is 1 / true / yes / on."""
    return os.environ.get(ENV_FLAG, "").strip().lower() in ("1", "true", "yes", "on")
