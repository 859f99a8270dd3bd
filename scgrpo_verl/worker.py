"""The self-teacher role: verl's ``ActorRolloutRefWorker`` with the teacher bound into verl's own passes (glue).

The teacher is the actor engine's own model (``live``), or the ref engine's model, which then holds the
initial weights (``frozen``), an exponential moving average of the policy (``ema``, blended by
:meth:`update_ema_teacher` after every actor update and saved with verl's checkpoints), or the frozen end
of the trust-region mix (``trust_region``).

No pass of its own: the teacher forward (:func:`scgrpo_verl.teacher.engine_forward.teacher_response_logits`)
runs inside verl's forward steps as the logits processor, one packed forward per micro-batch, next to the
student forward that verl runs anyway:

- SC-GRPO: in verl's old-log-prob pass (:meth:`compute_log_prob` with the trainer's ``self_teacher_pass``
  option), which then also returns D = KL(q || p) per token;
- SDPO and SDPG: in the actor update (the loss installed with :meth:`set_loss_fn`).

A ref-engine teacher is loaded for the pass and offloaded after it, as verl's ref log-prob pass does.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from functools import partial

from tensordict import TensorDict

from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.workers.engine_workers import ActorRolloutRefWorker

from scgrpo_verl.losses import (
    PASS_OPTION,
    TEACHER_ROWS_KEY,
    TEACHER_TOKENS_KEY,
    self_teacher_log_prob_pass,
    self_teacher_loss,
)
from scgrpo_verl.teacher.engine_forward import (
    TEACHER_MASK_KEY,
    count_teacher_tokens,
    dp_all_reduce_sum,
    teacher_response_logits,
)
from scgrpo_verl.teacher.passes import ema_update_

EMA_CHECKPOINT_DIR = "self_teacher_ema"


class SelfTeacherWorker(ActorRolloutRefWorker):
    """``ActorRolloutRefWorker`` with the self-teacher bound into verl's passes (module docstring)."""

    _teacher_weights = "live"
    _trust_region_mix = 0.05
    _ema_teacher = False
    _loss_config = None

    # -- which model is the teacher ------------------------------------------------------------------
    def _uses_ref_engine(self) -> bool:
        return self._teacher_weights != "live"

    def _teacher_modules(self):
        """(teacher module, frozen module of the trust-region mix or None)."""
        live = self.actor.engine.module
        if not self._uses_ref_engine():
            return live, None
        if self.ref is None:
            raise RuntimeError(f"self_teacher.teacher.weights={self._teacher_weights!r} needs the ref engine in the actor worker")
        other = self.ref.engine.module
        return (other, None) if self._teacher_weights in ("frozen", "ema") else (live, other)

    def _ref_teacher_loaded(self):
        """The ref engine's weights on the device for a pass, offloaded after it (verl's ref pass does the same)."""
        return self.ref.engine.eval_mode() if self._uses_ref_engine() else nullcontext()

    def micro_batch_teacher_logits(self, data: TensorDict):
        """Teacher logits (N_t, V) at a micro-batch's response tokens that have a teacher, and their token index."""
        module, frozen = self._teacher_modules()
        return teacher_response_logits(
            self.actor.engine, data, module, frozen_module=frozen, trust_region_mix=self._trust_region_mix
        )

    # -- verl's passes with the teacher in them --------------------------------------------------------
    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_log_prob(self, data: TensorDict) -> TensorDict:
        """verl's log-prob pass; with the trainer's ``self_teacher_pass`` option it also returns SC-GRPO's D.

        The teacher forward runs in the pass's logits processor, on the same micro-batches as the student
        forward, so D = KL(q || p) costs one teacher forward over the rows that have a teacher.
        """
        if tu.get_non_tensor_data(data=data, key=PASS_OPTION, default=None) is None:
            return super().compute_log_prob(data)
        if self._loss_config is None:
            raise RuntimeError("the self-teacher pass needs the plugin loss installed first (set_loss_fn)")
        processor = partial(
            self_teacher_log_prob_pass, config=self._loss_config, teacher_logits_fn=self.micro_batch_teacher_logits
        )
        tu.assign_non_tensor(data, compute_loss=True, distillation_use_topk=True)
        previous, self.actor.loss_fn = self.actor.loss_fn, processor
        try:
            with self._ref_teacher_loaded():
                return super().compute_log_prob(data)
        finally:
            self.actor.loss_fn = previous

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def update_actor(self, data: TensorDict) -> TensorDict:
        """verl's actor update; a ref-engine teacher stays loaded for the whole update."""
        with self._ref_teacher_loaded():
            return super().update_actor(data)

    def _count_teacher_tokens_per_mini_batch(self) -> None:
        """Before each mini-batch's forward-backward, the global count of tokens / rows that have a teacher
        (SDPO ``normalize: teacher_tokens``): summed over the data-parallel ranks, one collective per mini-batch."""
        engine = self.actor.engine
        forward_backward_batch = engine.forward_backward_batch
        if getattr(forward_backward_batch, "_counts_teacher_tokens", False):
            return

        def with_teacher_counts(data, loss_function, forward_only=False):
            if not forward_only and TEACHER_MASK_KEY in data.keys():
                tokens, rows = dp_all_reduce_sum(list(count_teacher_tokens(data)), engine.get_data_parallel_group())
                tu.assign_non_tensor(data, **{TEACHER_TOKENS_KEY: tokens, TEACHER_ROWS_KEY: rows})
            return forward_backward_batch(data, loss_function, forward_only)

        with_teacher_counts._counts_teacher_tokens = True
        engine.forward_backward_batch = with_teacher_counts

    # -- set-up, EMA, checkpoints -----------------------------------------------------------------------
    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def configure_self_teacher(self, weights: str, trust_region_mix: float) -> None:
        """Which weights the teacher uses; an ``ema`` teacher is saved and restored with checkpoints."""
        self._teacher_weights = weights
        self._trust_region_mix = float(trust_region_mix)
        self._ema_teacher = weights == "ema"
        self._count_teacher_tokens_per_mini_batch()

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def set_loss_fn(self, loss_fn):
        """Install the actor loss; the plugin loss gets the in-update teacher forward bound to it."""
        if isinstance(loss_fn, partial) and loss_fn.func is self_teacher_loss:
            self._loss_config = loss_fn.keywords["config"]
            loss_fn = partial(loss_fn, teacher_logits_fn=self.micro_batch_teacher_logits)
        self.actor.set_loss_fn(loss_fn=loss_fn)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def update_ema_teacher(self, rate: float) -> None:
        """EMA step of the teacher held by the ref engine (same sharding as the actor's)."""
        if self.ref is None:
            raise RuntimeError("the EMA teacher lives in the ref engine, which this worker does not have")
        ema_update_(self.ref.engine.module, self.actor.engine.module, rate)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None):
        super().save_checkpoint(local_path, hdfs_path, global_step, max_ckpt_to_keep)
        if self._ema_teacher:
            self._teacher_weights_only()
            self.ref.save_checkpoint(os.path.join(local_path, EMA_CHECKPOINT_DIR), None, global_step, None)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=False):
        super().load_checkpoint(local_path, hdfs_path, del_local_after_load)
        ema_path = os.path.join(local_path, EMA_CHECKPOINT_DIR)
        if self._ema_teacher and os.path.isdir(ema_path):
            self._teacher_weights_only()
            self.ref.load_checkpoint(ema_path, None, False)

    def _teacher_weights_only(self) -> None:
        """The ref engine has no optimizer: its checkpoint (the EMA teacher) holds the model weights only."""
        manager = getattr(getattr(self.ref, "engine", None), "checkpoint_manager", None)
        if manager is not None:
            manager.checkpoint_save_contents = ["model"]
            manager.checkpoint_load_contents = ["model"]
