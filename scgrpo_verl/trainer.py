"""The ``self_teacher`` trainer mode: verl's sync V1 PPO trainer plus the self-teacher step (glue).

Selected with ``trainer.v1.trainer_mode=self_teacher`` (the method configs set it). It behaves as
``sync`` wherever verl compares the mode, and per step runs :mod:`scgrpo_verl.step`'s functions on verl's batch,
read from and written back to TransferQueue:

1. teacher contexts for every rollout from its group, staged next to the batch (``teacher_input_ids``,
   ``self_teacher_mask`` and the method's own fields);
2. the teacher runs in the pass the method names: verl's old-log-prob pass (``SelfTeacherWorker.compute_log_prob``,
   SC-GRPO, whose D is kept as ``sc_divergence``) or the actor update (SDPO, SDPG, OPSD);
3. the method's change to the estimator's advantages (SC-GRPO's solve-none);
4. the plugin loss (installed once with ``set_loss_fn``) and the update options (the step k, SC-GRPO's batch-wide
   c); the workers blend an EMA teacher after the actor update.

With ``self_teacher.enable=false`` every step is exactly verl's sync step.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import ray
import torch
from omegaconf import DictConfig
from tensordict import TensorDict

from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1 import trainer_base
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.config import omega_conf_to_dataclass

from scgrpo_verl import step
from scgrpo_verl.batch_keys import DIVERGENCE_KEY, PASS_OPTION
from scgrpo_verl.losses import self_teacher_loss
from scgrpo_verl.methods import LOG_PROB_PASS, UPDATE_PASS, get_method, is_method, method_names
from scgrpo_verl.settings import SelfTeacherConfig
from scgrpo_verl.teacher.engine_forward import jagged

logger = logging.getLogger(__name__)

TRAINER_MODE = "self_teacher"


def validate_self_teacher_config(config: DictConfig) -> tuple[SelfTeacherConfig, Any]:
    """Check the whole plugin configuration before anything starts; returns (section, actor config).

    Raises ``ValueError`` naming the offending key.
    """
    if "self_teacher" not in config:
        raise ValueError(
            f"trainer.v1.trainer_mode={TRAINER_MODE} needs the self_teacher section: compose with the "
            "scgrpo_verl configs (defaults: [ppo_trainer, self_teacher_defaults, _self_])"
        )
    settings = SelfTeacherConfig.from_mapping(config.self_teacher)
    actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    loss_mode = actor.policy_loss.loss_mode
    if settings.enable and not is_method(loss_mode):
        raise ValueError(
            f"actor_rollout_ref.actor.policy_loss.loss_mode: the self-teacher needs one of {method_names()}, "
            f"got {loss_mode!r}"
        )
    if settings.teacher.weights == "ema" and config.actor_rollout_ref.actor.use_kl_loss:
        raise ValueError(
            "self_teacher.teacher.weights: the EMA teacher lives in the ref engine, which use_kl_loss needs for "
            "the frozen reference policy; use weights=frozen/live/trust_region or turn off use_kl_loss"
        )
    ref_dtype = str(config.actor_rollout_ref.ref.get("fsdp_config", {}).get("model_dtype", "fp32"))
    if settings.teacher.weights == "ema" and ref_dtype not in ("fp32", "float32"):
        raise ValueError(
            f"actor_rollout_ref.ref.fsdp_config.model_dtype: the EMA teacher is blended in the ref engine's weights, "
            f"which must be fp32 (rate-{settings.teacher.ema_rate} steps vanish in {ref_dtype}), got {ref_dtype!r}"
        )
    if settings.enable:
        for section in ("actor", "ref"):
            key = f"actor_rollout_ref.{section}.ulysses_sequence_parallel_size"
            if (config.actor_rollout_ref.get(section, {}) or {}).get("ulysses_sequence_parallel_size", 1) > 1:
                raise ValueError(f"{key}: the self-teacher reads whole sequences' hidden states; set it to 1 "
                                 "(Ulysses sequence parallelism is not supported)")
    return settings, actor


@register_trainer(TRAINER_MODE)
class SelfTeacherTrainer(PPOTrainerSync):
    """verl's sync V1 trainer with the self-teacher step (module docstring)."""

    def __init__(self, config: DictConfig):
        self.self_teacher, self.actor_loss_config = validate_self_teacher_config(config)
        loss_mode = self.actor_loss_config.policy_loss.loss_mode
        self.method = get_method(loss_mode) if self.self_teacher.enable else None
        from scgrpo_verl.startup_checks import run_startup_checks

        run_startup_checks(config)  # data files, data_source vs reward function, rollout name, GPUs: before workers
        super().__init__(config)
        self.loss_mode = loss_mode
        self.teacher_generator = torch.Generator().manual_seed(self.self_teacher.sc_grpo.seed)
        self._method_state: dict = {}

    # -- behave as "sync" wherever verl compares trainer_mode ----------------------------------
    def _build_replay_buffer(self):
        self.trainer_mode = "sync"
        self.parameter_sync_step = self.config.trainer.v1.get("sync", {}).get("parameter_sync_step", 1)
        return super()._build_replay_buffer()

    # -- workers -----------------------------------------------------------------------------------
    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        if not self.self_teacher.enable:
            return
        from scgrpo_verl.worker import SelfTeacherWorker

        needs_ref_engine = self.self_teacher.teacher.weights != "live"
        for role in list(self.role_worker_mapping):
            if role in (Role.ActorRollout, Role.ActorRolloutRef, Role.Actor):
                target = Role.ActorRolloutRef if (role == Role.ActorRollout and needs_ref_engine) else role
                del self.role_worker_mapping[role]
                self.role_worker_mapping[target] = ray.remote(SelfTeacherWorker)
                self.mapping[target] = self.mapping.pop(role)
        self.resource_pool_manager.mapping = self.mapping

    def _setup(self):
        super()._setup()
        if not self.self_teacher.enable:
            return
        self.actor_rollout_wg.set_loss_fn(partial(self_teacher_loss, config=self.actor_loss_config))
        self._install_update_options()

    def _load_checkpoint(self):
        # verl resumes at the end of its _setup: the workers must know by then that an EMA teacher is to be restored
        if self.self_teacher.enable:
            teacher = self.self_teacher.teacher
            self.actor_rollout_wg.configure_self_teacher(
                teacher.weights, teacher.trust_region_mix, self._teacher_in_update(), teacher.ema_rate
            )
        return super()._load_checkpoint()

    def _install_update_options(self) -> None:
        """verl's ``_update_actor`` writes its own update options (``distillation_use_topk`` among them) into
        the batch meta right before it calls the workers; ours are written last, at the call."""
        update_actor = self.actor_rollout_wg.update_actor

        def update_actor_with_self_teacher(batch, *args, **kwargs):
            batch.extra_info.update(self._update_options())
            return update_actor(batch, *args, **kwargs)

        self.actor_rollout_wg.update_actor = update_actor_with_self_teacher

    # -- the teacher step --------------------------------------------------------------------------------
    def _compute_old_log_prob(self, batch, metrics: dict):
        if not self.self_teacher.enable:
            return super()._compute_old_log_prob(batch, metrics)
        if step.teacher_pass(self.method, self.self_teacher) != LOG_PROB_PASS:
            # the teacher runs inside the actor update (or not at all): it needs only its inputs in TransferQueue
            batch = super()._compute_old_log_prob(batch, metrics)
            return self._put_teacher_contexts(batch, metrics)[0]
        # the method needs D before the advantages: the teacher runs in verl's old-log-prob pass, before each
        # micro-batch's student forward that pass runs anyway
        batch, contexts = self._put_teacher_contexts(batch, metrics)
        batch.extra_info[PASS_OPTION] = True
        try:
            if _bypasses_old_log_prob(self.config):  # verl reuses the rollout's log-probs: run the pass for D
                batch.extra_info.update(calculate_entropy=False, compute_loss=False,
                                        temperature=self.config.actor_rollout_ref.rollout.temperature)
                self.actor_rollout_wg.compute_log_prob(batch)
            batch = super()._compute_old_log_prob(batch, metrics)
        finally:
            batch.extra_info.pop(PASS_OPTION, None)
        return self._keep_log_prob_pass(batch, contexts, metrics)

    def _put_teacher_contexts(self, batch, metrics: dict):
        """Teacher contexts of every rollout (step 1 of :mod:`scgrpo_verl.step`) into TransferQueue next to the
        batch; returns (batch meta, contexts)."""
        tq = trainer_base.tq
        fields = step.context_fields(self.method, self.self_teacher)
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        rows = {name: data[name] for name in fields}
        rollouts = step.rollouts_from_rows(self.method, self.self_teacher, rows, batch.keys)
        contexts = step.build_contexts(self.method, self.self_teacher, rollouts, self.tokenizer,
                                       self.teacher_generator, step.chat_template_kwargs(self.config))
        metrics.update(contexts.metrics())
        stage = step.stage_teacher_inputs(self.method, contexts, data["responses"], data["input_ids"])
        batch = put_fields(batch, TensorDict(stage, batch_size=[len(rollouts)]))
        return batch, contexts

    def _keep_log_prob_pass(self, batch, contexts, metrics: dict):
        """What the method keeps of the D the old-log-prob pass returned (step 3), into TransferQueue."""
        from verl.workers.utils.padding import response_from_nested

        tq = trainer_base.tq
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=[DIVERGENCE_KEY, "response_mask"]
        )
        divergence = response_from_nested(data[DIVERGENCE_KEY], data["response_mask"])
        kept = step.keep_log_prob_pass(self.method, self.self_teacher, divergence.unbind(), contexts, metrics)
        self._method_state = kept.update_options
        if kept.fields:
            staged = {key: jagged(value) if isinstance(value, list) else value for key, value in kept.fields.items()}
            batch = put_fields(batch, TensorDict(staged, batch_size=[len(contexts)]))
        return batch

    # -- advantages, update, EMA -------------------------------------------------------------------------
    def _compute_advantage(self, batch, metrics: dict):
        batch = super()._compute_advantage(batch, metrics)
        if self.self_teacher.enable and self.method.advantage_fields:
            batch = apply_method_advantages(batch, self.method, self.self_teacher, metrics)
        return batch

    def _teacher_in_update(self) -> bool:
        """Whether the method's teacher runs in each micro-batch of the actor update (SDPO with a distillation
        term, SDPG, OPSD); known before verl's _setup, which resumes checkpoints."""
        return self.self_teacher.enable and step.teacher_pass(self.method, self.self_teacher) == UPDATE_PASS

    def _update_options(self) -> dict:
        """Non-tensor options of the actor update the plugin loss reads (step 5)."""
        return step.update_options(self.method, self.self_teacher, self.global_steps, self._method_state)


def _bypasses_old_log_prob(config) -> bool:
    """verl's rollout-correction bypass mode reuses the rollout's log-probs instead of an old-log-prob pass."""
    rollout_correction = config.algorithm.get("rollout_correction", None)
    return bool(rollout_correction and rollout_correction.get("bypass_mode", False))


def put_fields(batch, fields: TensorDict | None, written=None):
    """Write ``fields`` next to ``batch`` in TransferQueue and list them in ``batch.fields``; returns ``batch``.

    Workers read only the fields a ``KVBatchMeta`` lists (``None``: all), so fields written here, or by a
    worker call whose returned meta is ``written``, must be added to the batch meta the trainer passes on.
    """
    meta = written if fields is None else trainer_base.tq.kv_batch_put(
        keys=batch.keys, partition_id=batch.partition_id, fields=fields
    )
    added = list(getattr(meta, "fields", None) or []) or (list(fields.keys()) if fields is not None else [])
    if batch.fields is not None:
        batch.fields = list(dict.fromkeys([*batch.fields, *added]))
    return batch


def apply_method_advantages(batch, method, settings: SelfTeacherConfig, metrics: dict):
    """The method's advantages in place of the estimator's (step 4 of :mod:`scgrpo_verl.step`), in TransferQueue.

    Returns the batch meta (updated when advantages were written)."""
    tq = trainer_base.tq
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                           select_fields=["uid", "advantages", "response_mask", *method.advantage_fields])
    response_mask = data["response_mask"].to_padded_tensor(0.0)
    fields = {key: data[key].to_padded_tensor(0.0) if getattr(data[key], "is_nested", False) else data[key]
              for key in method.advantage_fields}
    uids = list(data["uid"]) if not torch.is_tensor(data["uid"]) else data["uid"].tolist()
    advantages = step.adjust_advantages(method, settings, data["advantages"].to_padded_tensor(0.0), response_mask,
                                        uids, fields, metrics)
    if advantages is None:
        return batch
    lengths = data["response_mask"].offsets().diff().tolist()
    nested = jagged([advantages[i, :n] for i, n in enumerate(lengths)])
    return put_fields(batch, TensorDict({"advantages": nested, "returns": nested.clone()}, batch_size=[len(lengths)]))
