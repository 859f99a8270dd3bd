"""Teacher weights kept next to the policy: the EMA teacher's update (plain torch; no verl import).

The teacher forwards themselves run inside verl's engine passes
(:mod:`scgrpo_verl.teacher.engine_forward`); this module holds what changes the teacher's weights.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def ema_update_(teacher: torch.nn.Module, student: torch.nn.Module, rate: float) -> None:
    """EMA teacher step, in place: theta_teacher <- (1 - rate) theta_teacher + rate theta_student (SDPO section 2)."""
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"EMA rate must be in (0, 1], got {rate}")
    teacher_params = dict(teacher.named_parameters())
    for name, param in student.named_parameters():
        if name not in teacher_params:
            raise KeyError(f"teacher has no parameter {name!r}")
        # FSDP2: both are DTensors sharded alike; the teacher (ref engine) may be offloaded to the CPU
        target, source = _local(teacher_params[name]), _local(param.detach())
        if target.shape != source.shape:
            raise ValueError(f"parameter {name!r}: teacher shard {tuple(target.shape)} != policy shard {tuple(source.shape)}")
        target.lerp_(source.to(device=target.device, dtype=target.dtype), rate)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 DTensor parameter (a view: in-place updates reach the parameter)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor
