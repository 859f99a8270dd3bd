"""CPU debugging backend: run stock verl's ``main_ppo`` end to end on a CPU-only machine.

Not for training real models: it exists so that the trainer glue (configs, registrations, trainer modes, losses)
can be exercised in a real multi-process verl run (Ray, TransferQueue, FSDP2 engine, agent loop, reward loop) on a
laptop or a CI box, with a tiny randomly initialised model (see :mod:`scgrpo_verl.cpu_backend.assets`).

Activation
----------
Off unless the environment variable ``SCGRPO_VERL_CPU_BACKEND=1`` is set. verl imports the ``verl.plugins`` entry
point (``scgrpo_verl.plugin``) in every process that imports verl (driver, TaskRunner, every Ray worker), and that
module calls :func:`maybe_activate`. Without that hook, ``VERL_USE_EXTERNAL_MODULES=scgrpo_verl.cpu_backend.autoload``
does the same (and is what :mod:`.run` sets, because modules named there are imported *before* any entry point).
Activation must happen before verl's engine modules are imported: ``verl.workers.engine.fsdp.transformer_impl``
caches ``device_name = get_device_name()`` at import time, and ``scgrpo_verl.plugin.register()`` imports it.
:func:`activate` refuses verl versions other than :data:`TESTED_VERL_VERSIONS`, because it relies on
verl internals that are not a stable API (the two rollout registries, the platform registry, the engine registry's
``VERL_ENGINE_DEVICE`` override).

The shims and why each is needed
--------------------------------
1. **Platform** (:mod:`.platform`, registered as ``cpu`` in ``verl.plugin.platform.PlatformRegistry`` and selected with
   ``VERL_PLATFORM=cpu``). verl's built-in platforms are CUDA/ROCm/NPU: without a GPU, auto-detection falls back to
   ``nvidia`` and the first ``torch.cuda`` call fails. The CPU platform gives device ``cpu`` (``get_device_id()``
   returns ``"cpu"`` because verl writes ``tensor.to(get_device_id())``), the ``gloo`` process group backend, a
   ``torch.cpu`` module extended with the ``torch.cuda`` calls verl makes (``empty_cache``, ``mem_get_info``,
   ``get_rng_state``...), and the Ray resource ``GPU`` -- the run starts Ray with a *fake* ``num_gpus=1`` so verl's
   GPU placement groups schedule.
2. **Engine choice**: verl's engine registry is keyed by device; only ``cuda``/``npu`` have an FSDP entry.
   ``VERL_ENGINE_DEVICE=cuda`` makes verl pick the CUDA FSDP engine class, which then runs on the CPU platform
   (FSDP2, ``attn_implementation=sdpa``, ``use_remove_padding=False``: flash-attention and the rmpad kernels are GPU-only).
3. **Rollout** (:mod:`.hf_rollout`, registered as ``("hf", "async")`` in ``verl.workers.rollout.base._ROLLOUT_REGISTRY``
   and ``"hf"`` in ``RolloutReplicaRegistry``). verl's rollouts are vLLM / SGLang / TRT-LLM servers (GPU-only). The
   ``hf`` replica starts a Ray actor that serves token-in/token-out ``generate`` calls with Hugging Face ``generate``
   and receives the trainer's weights at every sync through the Ray object store.
4. **Ref engine offload**: verl's FSDP2 engine offloads forward-only engines with ``CPUOffloadPolicy(pin_memory=True)``;
   pinned memory needs an accelerator, so :func:`activate` gives verl's engine module an unpinned policy.
5. **Process group**: verl builds the backend string ``f"cpu:gloo,{device}:{backend}"``, i.e. ``cpu:gloo,cpu:gloo`` on
   this platform, which torch rejects; :func:`activate` rebinds ``verl.utils.distributed.initialize_global_process_group``
   and ``initialize_global_process_group_ray`` (everywhere they were imported) to use plain ``cpu:gloo``.
6. **Process-wide settings** (:data:`ENV`): set in the launching process by :func:`activate` and forwarded to the Ray
   workers through ``ray_kwargs.ray_init.runtime_env.env_vars`` by :mod:`.run` (Ray workers of a local cluster also
   inherit the driver's environment; the runtime_env makes it explicit).

Launch overrides a CPU run needs (:func:`scgrpo_verl.cpu_backend.run.cpu_overrides` writes them): the fake GPU
(``+ray_kwargs.ray_init.num_gpus=1``), ``ray_kwargs.ray_init.num_cpus=16``,
``transfer_queue.backend.SimpleStorage.num_data_storage_units=1``, ``actor_rollout_ref.rollout.agent.num_workers=1``,
``data.dataloader_num_workers=0`` -- without the Ray CPU / storage-unit settings TransferQueue waits forever for actors
that cannot be scheduled on two cores, with no error, so always run under a hard timeout.
"""

from __future__ import annotations

import logging
import os

from scgrpo_verl.cpu_flag import ENV_FLAG, PLATFORM_NAME, ROLLOUT_NAME, is_enabled

logger = logging.getLogger("scgrpo_verl.cpu_backend")

TESTED_VERL_VERSIONS = ("0.9.1",)

#: environment every process of a CPU run needs (driver, TaskRunner, Ray workers)
ENV = {
    ENV_FLAG: "1",
    "VERL_PLATFORM": PLATFORM_NAME,
    "VERL_ENGINE_DEVICE": "cuda",
    "VERL_ENGINE_VENDOR": "nvidia",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}

_activated = False


def check_verl_version() -> str:
    import verl

    version = getattr(verl, "__version__", "unknown")
    if version not in TESTED_VERL_VERSIONS:
        raise RuntimeError(
            f"scgrpo_verl.cpu_backend relies on verl internals and is tested only on verl {TESTED_VERL_VERSIONS}; "
            f"found verl {version}. Unset {ENV_FLAG} or install a tested verl version."
        )
    return version


def activate() -> None:
    """Register the CPU platform and the ``hf`` rollout with verl and select them (idempotent)."""
    global _activated
    if _activated:
        return
    check_verl_version()
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    os.environ["VERL_PLATFORM"] = PLATFORM_NAME
    os.environ["VERL_ENGINE_DEVICE"] = "cuda"

    from verl.plugin.platform import PlatformRegistry, platform_manager

    from .platform import PlatformCPU

    PlatformRegistry.register(platform=PLATFORM_NAME)(PlatformCPU)
    current = platform_manager._current_platform
    if current is not None and not isinstance(current, PlatformCPU):
        platform_manager.set_platform(PlatformCPU())

    from verl.workers.rollout import base as rollout_base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    rollout_base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = "scgrpo_verl.cpu_backend.hf_rollout.HFServerAdapter"

    def _load_hf_replica():
        from .hf_rollout import HFReplica

        return HFReplica

    RolloutReplicaRegistry.register(ROLLOUT_NAME, _load_hf_replica)
    _patch_process_group_init()
    _patch_offload_pinning()
    _patch_stage_markers()
    _activated = True
    logger.info("scgrpo_verl CPU backend active (platform=%s, rollout=%s)", PLATFORM_NAME, ROLLOUT_NAME)


def _replace_everywhere(module, name: str, new) -> None:
    """Set ``module.name = new`` and rebind it in every loaded module that imported the old object by name."""
    import sys

    old = getattr(module, name)
    setattr(module, name, new)
    for other in list(sys.modules.values()):
        try:
            if other is not None and other is not module and getattr(other, name, None) is old:
                setattr(other, name, new)
        except Exception:
            continue


def _patch_process_group_init() -> None:
    """verl builds the backend string ``f"cpu:gloo,{device}:{backend}"``; on the CPU platform that reads
    ``cpu:gloo,cpu:gloo``, which torch rejects (duplicate device type). Use plain ``cpu:gloo`` instead."""
    from datetime import timedelta

    import torch.distributed

    from verl.utils import distributed

    original_ray_init = distributed.initialize_global_process_group_ray
    if getattr(original_ray_init, "_scgrpo_cpu", False):
        return

    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return original_ray_init(timeout_second=timeout_second, backend=backend or "cpu:gloo")

    def initialize_global_process_group(timeout_second=36000):
        torch.distributed.init_process_group(
            backend="cpu:gloo",
            timeout=timedelta(seconds=timeout_second),
            init_method=os.environ.get("DIST_INIT_METHOD", None),
        )
        return int(os.environ["LOCAL_RANK"]), int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])

    initialize_global_process_group_ray._scgrpo_cpu = True
    initialize_global_process_group._scgrpo_cpu = True
    _replace_everywhere(distributed, "initialize_global_process_group_ray", initialize_global_process_group_ray)
    _replace_everywhere(distributed, "initialize_global_process_group", initialize_global_process_group)


def _patch_offload_pinning() -> None:
    """verl's FSDP2 engine gives every forward-only engine (the ref engine: frozen / EMA teachers, the KL reference)
    ``CPUOffloadPolicy(pin_memory=True)``; pinning needs an accelerator. Hand verl's engine an unpinned policy."""
    from torch.distributed.fsdp import CPUOffloadPolicy

    from verl.workers.engine.fsdp import transformer_impl  # after the platform is set (it caches the device name)

    if getattr(transformer_impl.CPUOffloadPolicy, "_scgrpo_cpu", False):
        return

    class UnpinnedCPUOffloadPolicy(CPUOffloadPolicy):
        _scgrpo_cpu = True

        def __init__(self, pin_memory: bool = False):
            super().__init__(pin_memory=False)

    transformer_impl.CPUOffloadPolicy = UnpinnedCPUOffloadPolicy


#: prefix of the line each trainer stage prints when it starts (``[scgrpo-stage] gen``); ``cpu-run`` turns these
#: into its progress lines (:class:`scgrpo_verl.cpu_backend.progress.Progress`)
STAGE_MARK = "[scgrpo-stage] "
STAGES = ("gen", "reward", "old_log_prob", "ref", "adv", "update_actor", "save_checkpoint", "testing")


def _patch_stage_markers() -> None:
    """Print ``[scgrpo-stage] <name>`` when one of verl's trainer stages (``marked_timer(name, ...)``) starts, so that
    a CPU run that takes minutes per step says where it is."""
    from verl.utils import profiler

    original = profiler.marked_timer
    if getattr(original, "_scgrpo_cpu", False):
        return

    def marked_timer(name, *args, **kwargs):
        if name in STAGES:
            print(f"{STAGE_MARK}{name}", flush=True)
        return original(name, *args, **kwargs)

    marked_timer._scgrpo_cpu = True
    _replace_everywhere(profiler, "marked_timer", marked_timer)


def maybe_activate() -> bool:
    """:func:`activate` when ``SCGRPO_VERL_CPU_BACKEND`` is set; what ``scgrpo_verl.plugin`` calls."""
    if not is_enabled():
        return False
    try:
        activate()
    except Exception as error:  # verl swallows plugin errors at DEBUG level: say it loudly
        logger.warning("scgrpo_verl CPU backend: activation failed: %r", error, exc_info=True)
        raise
    return True


__all__ = ["ENV", "ENV_FLAG", "TESTED_VERL_VERSIONS", "activate", "check_verl_version", "is_enabled", "maybe_activate"]
