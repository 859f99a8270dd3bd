"""A CPU ``PlatformBase`` for verl's platform registry (``verl.plugin.platform``).

verl asks the platform for its device name, its ``torch.<device>`` module, its collective backend and its Ray
resource name. This one answers: device ``cpu``, a ``torch.cpu`` stand-in that also has the CUDA-style calls verl
makes (``empty_cache``, ``mem_get_info``, ``get_rng_state``, ...), the ``gloo`` backend, and the Ray resource
``GPU`` (the run starts Ray with a fake ``num_gpus=1`` so verl's GPU placement groups can be scheduled).
"""

from __future__ import annotations

import os
import types
from contextlib import contextmanager
from typing import Any, Optional

import torch

from verl.plugin.platform import PlatformBase

from scgrpo_verl.cpu_flag import PLATFORM_NAME


def _total_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # pragma: no cover - psutil is a ray dependency
        return 0


def _free_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover
        return 0


def _noop(*_args, **_kwargs):
    return None


def _zero(*_args, **_kwargs):
    return 0


def _build_device_module() -> types.ModuleType:
    """``torch.cpu`` plus the ``torch.cuda``-only calls verl makes through ``get_torch_device()``."""
    module = types.ModuleType("scgrpo_verl_cpu_device")
    for name in dir(torch.cpu):
        if not name.startswith("__"):
            setattr(module, name, getattr(torch.cpu, name))
    module.is_available = lambda: True
    module.current_device = lambda: "cpu"
    module.device_count = lambda: 1
    module.set_device = _noop
    module.synchronize = _noop
    module.empty_cache = _noop
    module.ipc_collect = _noop
    module.set_per_process_memory_fraction = _noop
    module.memory_allocated = _zero
    module.memory_reserved = _zero
    module.max_memory_allocated = _zero
    module.max_memory_reserved = _zero
    module.reset_peak_memory_stats = _noop
    module.mem_get_info = lambda *_a, **_k: (_free_memory(), _total_memory())
    module.get_device_name = lambda *_a, **_k: "cpu"
    module.get_rng_state = lambda *_a, **_k: torch.get_rng_state()
    module.set_rng_state = lambda state, *_a, **_k: torch.set_rng_state(state)
    module.manual_seed = lambda seed: torch.manual_seed(seed)
    module.manual_seed_all = lambda seed: torch.manual_seed(seed)
    module.memory = types.SimpleNamespace(_set_allocator_settings=_noop)
    return module


DEVICE_MODULE = _build_device_module()


class PlatformCPU(PlatformBase):
    """verl platform for a CPU-only host (debugging backend, not for speed)."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Only chosen explicitly (VERL_PLATFORM=cpu, set by activate()); never by auto-detection.
        return os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME

    def current_device(self) -> str:  # type: ignore[override]
        # verl writes ``tensor.to(get_device_id())``; the int 0 would mean cuda:0, the string means the CPU.
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        # The fake GPUs declared with ray_init.num_gpus=1 carry verl's per-rank placement.
        return "GPU"

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        return {"num_gpus": num_gpus}

    def ray_noset_envvars(self) -> list[str]:
        return ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"]

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
