"""The self-teacher role: verl's ``ActorRolloutRefWorker`` plus registered teacher passes (glue).

The teacher is the actor engine's own model (``live``), or the ref engine's model, which then holds
the initial weights (``frozen``), an exponential moving average of the policy (``ema``, blended by
:meth:`update_ema_teacher` after every actor update and saved with verl's checkpoints), or the frozen
end of the trust-region mix (``trust_region``). The math is :func:`scgrpo_verl.teacher.passes.teacher_pass`.
"""

from __future__ import annotations

import os
from contextlib import ExitStack

import torch
from tensordict import TensorDict

from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.workers.engine_workers import ActorRolloutRefWorker

from functools import partial

from scgrpo_verl.losses import self_teacher_loss
from scgrpo_verl.teacher.passes import ema_update_, teacher_pass, teacher_response_logits

EMA_CHECKPOINT_DIR = "self_teacher_ema"


def _nested(pieces: list[torch.Tensor]) -> torch.Tensor:
    return torch.nested.as_nested_tensor(pieces, layout=torch.jagged)


class SelfTeacherWorker(ActorRolloutRefWorker):
    """``ActorRolloutRefWorker`` with the self-teacher passes registered for the trainer."""

    def _teacher_models(self, weights: str):
        student = self.actor.engine.module
        if weights == "live":
            return student, None, None
        if self.ref is None:
            raise RuntimeError(f"self_teacher.teacher.weights={weights!r} needs the ref engine in the actor worker")
        other = self.ref.engine.module
        return student, (other if weights in ("frozen", "ema") else None), (other if weights == "trust_region" else None)

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_self_teacher(self, data: TensorDict) -> TensorDict:
        """Teacher pass on this rank's rollouts.

        Reads ``input_ids`` (prompt + response), ``teacher_input_ids`` (teacher prompt + the same
        response), ``responses`` and the non-tensor ``self_teacher_pass`` options (weights,
        divergence_kind, alpha, topk, temperature, chunk_size, trust_region_mix). Returns nested
        ``teacher_log_probs`` (B, r), ``self_teacher_pass_divergence`` (B, r) and, when top-k is
        asked, ``teacher_topk_ids`` (B, r, K) and ``teacher_topk_log_probs`` (B, r, K+1).
        """
        options = tu.get_non_tensor_data(data=data, key="self_teacher_pass", default=None)
        if options is None:
            raise ValueError("compute_self_teacher needs the non-tensor 'self_teacher_pass' options")
        student, teacher, frozen = self._teacher_models(options["weights"])
        lengths = data["responses"].offsets().diff().tolist()
        student_sequences = [row.tolist() for row in data["input_ids"].unbind()]
        teacher_sequences = [row.tolist() for row in data["teacher_input_ids"].unbind()]
        with ExitStack() as stack:
            stack.enter_context(self.actor.engine.eval_mode())
            if teacher is not None or frozen is not None:
                stack.enter_context(self.ref.engine.eval_mode())
            out = teacher_pass(
                student,
                student_sequences,
                teacher_sequences,
                lengths,
                teacher_model=teacher,
                frozen_model=frozen,
                trust_region_mix=options.get("trust_region_mix", 0.05),
                divergence_kind=options.get("divergence_kind"),
                alpha=options.get("alpha"),
                topk=options.get("topk"),
                temperature=options.get("temperature", 1.0),
                chunk_size=options.get("chunk_size", 1024),
            )
        result = {"teacher_log_probs": _nested([x.cpu() for x in out.split(out.teacher_log_probs)])}
        if out.divergence is not None:
            result["self_teacher_pass_divergence"] = _nested([x.cpu() for x in out.split(out.divergence)])
        if out.teacher_topk_ids is not None:
            result["teacher_topk_ids"] = _nested([x.cpu() for x in out.split(out.teacher_topk_ids)])
            result["teacher_topk_log_probs"] = _nested([x.cpu() for x in out.split(out.teacher_topk_log_probs)])
        return TensorDict(result, batch_size=[len(lengths)])

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def update_ema_teacher(self, rate: float) -> None:
        """EMA step of the teacher held by the ref engine (same sharding as the actor's)."""
        if self.ref is None:
            raise RuntimeError("the EMA teacher lives in the ref engine, which this worker does not have")
        ema_update_(self.ref.engine.module, self.actor.engine.module, rate)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None):
        super().save_checkpoint(local_path, hdfs_path, global_step, max_ckpt_to_keep)
        if getattr(self, "_ema_teacher", False):
            self._teacher_weights_only()
            self.ref.save_checkpoint(os.path.join(local_path, EMA_CHECKPOINT_DIR), None, global_step, None)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=False):
        super().load_checkpoint(local_path, hdfs_path, del_local_after_load)
        ema_path = os.path.join(local_path, EMA_CHECKPOINT_DIR)
        if getattr(self, "_ema_teacher", False) and os.path.isdir(ema_path):
            self._teacher_weights_only()
            self.ref.load_checkpoint(ema_path, None, False)

    def _teacher_weights_only(self) -> None:
        """The ref engine has no optimizer: its checkpoint (the EMA teacher) holds the model weights only."""
        manager = getattr(getattr(self.ref, "engine", None), "checkpoint_manager", None)
        if manager is not None:
            manager.checkpoint_save_contents = ["model"]
            manager.checkpoint_load_contents = ["model"]

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def configure_self_teacher(self, weights: str, trust_region_mix: float) -> None:
        """Which weights the teacher uses; an ``ema`` teacher is saved and restored with checkpoints."""
        self._teacher_weights = weights
        self._trust_region_mix = float(trust_region_mix)
        self._ema_teacher = weights == "ema"

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def set_loss_fn(self, loss_fn):
        """Install the actor loss; the plugin loss gets the in-update teacher forward bound to it."""
        if isinstance(loss_fn, partial) and loss_fn.func is self_teacher_loss:
            loss_fn = partial(loss_fn, teacher_logits_fn=self.micro_batch_teacher_logits)
        self.actor.set_loss_fn(loss_fn=loss_fn)

    def micro_batch_teacher_logits(self, data: TensorDict) -> torch.Tensor:
        """Teacher logits (N, V) at a micro-batch's response tokens, computed inside the actor update."""
        if "teacher_input_ids" not in data:
            raise KeyError("the micro-batch has no 'teacher_input_ids' (written by the trainer's teacher step)")
        _, teacher, frozen = self._teacher_models(getattr(self, "_teacher_weights", "live"))
        model = teacher if teacher is not None else self.actor.engine.module
        temperature = tu.get_non_tensor_data(data=data, key="temperature", default=1.0)
        if torch.is_tensor(temperature):
            temperature = float(temperature.reshape(-1)[0])
        return teacher_response_logits(
            model,
            [row.tolist() for row in data["teacher_input_ids"].unbind()],
            data["responses"].offsets().diff().tolist(),
            frozen_model=frozen,
            trust_region_mix=getattr(self, "_trust_region_mix", 0.05),
            temperature=temperature,
        )
