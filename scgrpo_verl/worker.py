"""The self-teacher role: verl's ``ActorRolloutRefWorker`` with the teacher bound into verl's own passes (glue).

The teacher is the actor engine's own model (``live``), or the ref engine's model, which then holds the
initial weights (``frozen``), an exponential moving average of the policy (``ema``, blended by the worker after
every actor update and saved with verl's checkpoints), or the frozen end of the trust-region mix
(``trust_region``).

No pass of its own: the actor engine's forward step is wrapped
(:func:`scgrpo_verl.teacher.engine_forward.forward_step_with_teacher`) so that, in the passes that need the
teacher, each micro-batch runs the teacher forward first and the loss gets the teacher's and the student's last
hidden states:

- a method whose teacher runs in the log-prob pass (``SelfTeacherMethod.teacher_pass``; SC-GRPO): verl's
  old-log-prob pass (:meth:`compute_log_prob` with the trainer's ``self_teacher_pass`` option), which then also
  returns D = KL(q || p) per token;
- a method whose teacher runs in the update (SDPO, SDPG, OPSD): the actor update (the loss installed with
  :meth:`set_loss_fn`).

A ref-engine teacher's weights: verl keeps a forward-only FSDP2 ref engine's shards on the CPU (a CPU offload
policy) and streams them to the device in every forward. The worker moves them to the device once per training
step, before the first teacher pass, and back after the step's last use (the actor update, where the EMA blend
runs on the device); with ``actor_rollout_ref.ref.fsdp_config.param_offload=false`` they move once and stay.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import partial

import torch
from tensordict import TensorDict

from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.workers.engine_workers import ActorRolloutRefWorker

from scgrpo_verl.batch_keys import PASS_OPTION, TEACHER_MASK_KEY, TEACHER_ROWS_KEY, TEACHER_TOKENS_KEY
from scgrpo_verl.losses import self_teacher_log_prob_pass, self_teacher_loss
from scgrpo_verl.teacher.engine_forward import (
    count_teacher_tokens,
    dp_all_reduce_sum,
    forward_step_with_teacher,
    full_weight,
    teacher_response_hidden,
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

    # -- where the ref-engine teacher's weights live ------------------------------------------------------
    _ref_on_device = False
    _ref_moves = 0  # host <-> device moves of the ref teacher's shards (a test counts them per step)
    _ref_head = None

    def _ref_offloads(self) -> bool:
        """verl keeps the forward-only ref engine's shards on the CPU (FSDP2 CPU offload policy): with
        ``ref.fsdp_config.param_offload`` on, they go back there after each step; off, they stay on the device."""
        fsdp_config = getattr(getattr(self.config, "ref", None), "fsdp_config", None)
        return bool(getattr(fsdp_config, "param_offload", True)) if fsdp_config is not None else True

    def _actor_device(self) -> torch.device:
        return next(self.actor.engine.module.parameters()).device

    def _place_ref(self, on_device: bool) -> None:
        """Move the ref engine's shards next to the actor's (its device) or back to the CPU."""
        target = self._actor_device() if on_device else torch.device("cpu")
        self.ref.engine.module.to(target)

    def _move_ref(self, on_device: bool) -> None:
        if self._ref_on_device == on_device:
            return
        self._place_ref(on_device)
        self._ref_moves += 1
        self._ref_on_device = on_device

    @contextmanager
    def _ref_teacher_loaded(self, release: bool = True, teacher_runs: bool = True):
        """The ref teacher's shards on the device for a pass (one move per step: see the module docstring), its
        lm_head gathered once for the pass when the teacher runs in it; ``release`` moves them back after it when
        the ref offloads."""
        if not self._uses_ref_engine():
            yield
            return
        with self.ref.engine.eval_mode():
            self._move_ref(True)
            if teacher_runs:
                head = self.ref.engine.module.get_output_embeddings()
                device = self._actor_device()
                self._ref_head = (full_weight(head.weight, device), full_weight(getattr(head, "bias", None), device))
            try:
                yield
            finally:
                self._ref_head = None
                if release and self._ref_offloads():
                    self._move_ref(False)

    def micro_batch_teacher(self, data: TensorDict):
        """The teacher side of one micro-batch: hidden states (N_t, H) at its response tokens that have a teacher."""
        module, frozen = self._teacher_modules()
        ref_head = self._ref_head
        if self._teacher_weights in ("frozen", "ema"):
            return teacher_response_hidden(self.actor.engine, data, module, head=ref_head)
        return teacher_response_hidden(
            self.actor.engine, data, module, frozen=None if frozen is None else (frozen, ref_head),
            trust_region_mix=self._trust_region_mix,
        )

    _teacher_in_pass = False

    @contextmanager
    def _teacher_pass(self):
        self._teacher_in_pass = True
        try:
            yield
        finally:
            self._teacher_in_pass = False

    def _install_teacher_forward_step(self) -> None:
        """Wrap the actor engine's forward step: in a teacher pass, each micro-batch runs the teacher first."""
        engine = self.actor.engine
        forward_step = engine.forward_step
        if getattr(forward_step, "_runs_self_teacher", False):
            return

        def with_teacher(micro_batch, loss_function, forward_only=False):
            if not self._teacher_in_pass or loss_function is None:
                return forward_step(micro_batch, loss_function, forward_only)
            micro_batch = micro_batch.to(self._actor_device())
            settings = self._loss_config.policy_loss.self_teacher if self._loss_config else None
            chunk = settings.teacher.divergence_chunk_bytes if settings is not None else None
            return forward_step_with_teacher(forward_step, engine.module, micro_batch, loss_function, forward_only,
                                             self.micro_batch_teacher, chunk)

        with_teacher._runs_self_teacher = True
        engine.forward_step = with_teacher

    # -- verl's passes with the teacher in them --------------------------------------------------------
    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_log_prob(self, data: TensorDict) -> TensorDict:
        """verl's log-prob pass; with the trainer's ``self_teacher_pass`` option it also returns SC-GRPO's D.

        The teacher forward runs before each micro-batch's student forward, so D = KL(q || p) costs one teacher
        forward over the rows that have a teacher.
        """
        if tu.get_non_tensor_data(data=data, key=PASS_OPTION, default=None) is None:
            return super().compute_log_prob(data)
        if self._loss_config is None:
            raise RuntimeError("the self-teacher pass needs the plugin loss installed first (set_loss_fn)")
        tu.assign_non_tensor(data, compute_loss=True)
        previous = self.actor.loss_fn
        self.actor.loss_fn = partial(self_teacher_log_prob_pass, config=self._loss_config)
        try:
            # an EMA teacher stays on the device until its blend after the actor update
            with self._ref_teacher_loaded(release=not self._ema_teacher), self._teacher_pass():
                return super().compute_log_prob(data)
        finally:
            self.actor.loss_fn = previous

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def update_actor(self, data: TensorDict) -> TensorDict:
        """verl's actor update, with the teacher in each micro-batch when the method's loss needs it; then the
        EMA teacher's blend, on the device where the ref shards are for this step."""
        in_update = self._teacher_in_update
        if not in_update and not self._ema_teacher:
            return super().update_actor(data)
        with self._ref_teacher_loaded(teacher_runs=in_update):
            if in_update:
                with self._teacher_pass():
                    output = super().update_actor(data)
            else:
                output = super().update_actor(data)
            if self._ema_teacher:
                ema_update_(self.ref.engine.module, self.actor.engine.module, self._ema_rate)
        return output

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
    _teacher_in_update = False
    _ema_rate = 0.05

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def configure_self_teacher(self, weights: str, trust_region_mix: float, teacher_in_update: bool = False,
                               ema_rate: float = 0.05) -> None:
        """Which weights the teacher uses, whether the actor update runs it (the trainer asks the method) and the EMA
        rate; an ``ema`` teacher is blended after every update and saved and restored with checkpoints."""
        self._teacher_weights = weights
        self._trust_region_mix = float(trust_region_mix)
        self._ema_teacher = weights == "ema"
        self._ema_rate = float(ema_rate)
        self._teacher_in_update = bool(teacher_in_update)
        self._count_teacher_tokens_per_mini_batch()
        self._install_teacher_forward_step()

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def set_loss_fn(self, loss_fn):
        """Install the actor loss (the plugin's: its config is kept for the teacher passes)."""
        if isinstance(loss_fn, partial) and loss_fn.func is self_teacher_loss:
            self._loss_config = loss_fn.keywords["config"]
        self.actor.set_loss_fn(loss_fn=loss_fn)

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
