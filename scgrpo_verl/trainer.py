"""The ``self_teacher`` trainer mode: verl's sync V1 PPO trainer plus the self-teacher step (glue).

Selected with ``trainer.v1.trainer_mode=self_teacher`` (the method configs set it). It behaves as
``sync`` wherever verl compares the mode, and per step adds:

1. teacher contexts for every rollout from its group (``scgrpo_verl.teacher.context``), written to
   TransferQueue next to the batch (``teacher_input_ids``, ``self_teacher_mask``, SC-GRPO's routes);
2. SC-GRPO: verl's old-log-prob pass also runs the teacher (``SelfTeacherWorker.compute_log_prob``) and
   returns D, kept as ``sc_divergence``; SDPO / SDPG: the teacher runs inside the actor update;
3. SC-GRPO's solve-none pseudo-advantages in the advantage step;
4. the plugin loss (installed once with ``set_loss_fn``), the step counter for SDPG's beta(k) and SC-GRPO's
   batch-wide c (``threshold_scope: batch``); the workers blend an EMA teacher after the actor update.

With ``self_teacher.enable=false`` every step is exactly verl's sync step.
"""

from __future__ import annotations

import hashlib
import logging
from functools import partial
from typing import Any

import numpy as np
import ray
import torch
from omegaconf import DictConfig
from tensordict import TensorDict

from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1 import trainer_base
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.config import omega_conf_to_dataclass

from scgrpo_verl.algos.sc_grpo import ROUTE_SOLVE_NONE, ROUTE_WEIGHTED, sc_weight_constant, solve_none_pseudo_advantage
from scgrpo_verl.config import PLUGIN_LOSS_MODES, SelfTeacherConfig
from scgrpo_verl.losses import DIVERGENCE_KEY, PASS_OPTION, SC_THRESHOLD_KEY, self_teacher_loss
from scgrpo_verl.teacher.engine_forward import TEACHER_MASK_KEY, jagged

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
    if settings.enable and loss_mode not in PLUGIN_LOSS_MODES:
        raise ValueError(
            f"actor_rollout_ref.actor.policy_loss.loss_mode: the self-teacher needs one of {PLUGIN_LOSS_MODES}, "
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
        from scgrpo_verl.startup_checks import run_startup_checks

        run_startup_checks(config)  # data files, data_source vs reward function, rollout name, GPUs: before workers
        super().__init__(config)
        self.loss_mode = self.actor_loss_config.policy_loss.loss_mode
        self.teacher_generator = torch.Generator().manual_seed(self.self_teacher.sc_grpo.seed)
        self._sc_threshold = None

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

    # -- the teacher step --------------------------------------------------------------------------
    def _compute_old_log_prob(self, batch, metrics: dict):
        if not self.self_teacher.enable:
            return super()._compute_old_log_prob(batch, metrics)
        if self.loss_mode != "sc_grpo":
            # SDPO / SDPG: the teacher runs inside the actor update; it needs only its inputs in TransferQueue
            batch = super()._compute_old_log_prob(batch, metrics)
            return self._put_teacher_contexts(batch, metrics)[0]
        # SC-GRPO: D is needed before the advantages (solve-none), so the teacher runs in verl's old-log-prob
        # pass, before each micro-batch's student forward that pass runs anyway
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
        return self._put_sc_divergence(batch, contexts, metrics)

    def _put_teacher_contexts(self, batch, metrics: dict):
        """Teacher contexts of every rollout (``teacher_input_ids``, ``self_teacher_mask``, SC-GRPO's routes)
        into TransferQueue next to the batch; returns (batch meta, contexts)."""
        from scgrpo_verl.teacher import Rollout, build_teacher_contexts

        tq = trainer_base.tq
        fields = ["uid", "raw_prompt", "input_ids", "responses", "rm_scores"]
        teacher = self.self_teacher.teacher
        if teacher.use_feedback:
            fields.append("extra_fields")  # the reward function's extra keys are in extra_fields["reward_extra_info"]
        if teacher.use_privileged_context:
            fields.append("reward_model")
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        responses = [row.tolist() for row in data["responses"].unbind()]
        scores = data["rm_scores"].values().new_tensor([float(row.sum()) for row in data["rm_scores"].unbind()])
        uids = list(data["uid"]) if not torch.is_tensor(data["uid"]) else data["uid"].tolist()
        feedback = reward_feedback(_as_list(data["extra_fields"])) if teacher.use_feedback else [""] * len(responses)
        privileged = (
            [str(dict(row).get("ground_truth", "")) for row in data["reward_model"]]
            if teacher.use_privileged_context
            else [None] * len(responses)
        )
        groups, indices = canonical_keys(uids, data["input_ids"].unbind(), responses, batch.keys)
        rollouts = [
            Rollout(
                uid=group,
                prompt=list(messages),
                response_ids=ids,
                response_text=None,  # decoded by the builder only where a template needs it
                score=float(score),
                feedback=str(fb or ""),
                privileged=priv,
                index=index,
            )
            for group, messages, ids, score, fb, priv, index in zip(
                groups, data["raw_prompt"], responses, scores, feedback, privileged, indices
            )
        ]
        contexts = build_teacher_contexts(
            rollouts, self.tokenizer, self.loss_mode, teacher, teacher.templates, generator=self.teacher_generator,
            chat_template_kwargs=chat_template_kwargs(self.config),
        )
        metrics.update(contexts.metrics())
        stage = {
            "teacher_input_ids": teacher_input_tensor(contexts.teacher_prompt_ids, data["responses"], data["input_ids"]),
            TEACHER_MASK_KEY: contexts.mask.float(),
        }
        if self.loss_mode == "sc_grpo":
            stage["sc_route"] = contexts.route.long()
            stage["sc_reference"] = contexts.reference.long()
        batch = put_fields(batch, TensorDict(stage, batch_size=[len(rollouts)]))
        return batch, contexts

    def _put_sc_divergence(self, batch, contexts, metrics: dict):
        """SC-GRPO's D from the old-log-prob pass, masked to the rows with a teacher, as ``sc_divergence``."""
        from verl.workers.utils.padding import response_from_nested

        tq = trainer_base.tq
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=[DIVERGENCE_KEY, "response_mask"]
        )
        divergence = response_from_nested(data[DIVERGENCE_KEY], data["response_mask"])
        mask = contexts.mask.float()
        pieces = [d * m for d, m in zip(divergence.unbind(), mask)]
        batch = put_fields(
            batch,
            TensorDict(
                {"sc_divergence": jagged(pieces)}, batch_size=[len(pieces)]
            ),
        )
        teacher_values = [d for d, m in zip(pieces, mask) if m > 0]
        if teacher_values:
            quantiles = torch.quantile(torch.cat(teacher_values).float(), torch.tensor([0.5, 0.75, 0.95]))
            for name, value in zip(("p50", "p75", "p95"), quantiles.tolist()):
                metrics[f"self_teacher/divergence_{name}"] = value
        weighted = [d for d, route in zip(pieces, contexts.route.tolist()) if route == ROUTE_WEIGHTED]
        self._sc_threshold = None
        if self.self_teacher.sc_grpo.threshold_scope == "batch":
            cfg = self.self_teacher.sc_grpo
            values = torch.cat(weighted) if weighted else torch.zeros(0)
            c = sc_weight_constant(values, torch.ones_like(values, dtype=torch.bool), cfg.c_min, cfg.quantile)
            self._sc_threshold = float(c)
            metrics["self_teacher/sc_c_batch"] = self._sc_threshold
        return batch

    # -- advantages, update, EMA -------------------------------------------------------------------
    def _compute_advantage(self, batch, metrics: dict):
        batch = super()._compute_advantage(batch, metrics)
        if self.self_teacher.enable and self.loss_mode == "sc_grpo":
            batch = apply_solve_none_advantages(batch, self.self_teacher, metrics)
        return batch

    def _teacher_in_update(self) -> bool:
        """SDPO (with a distillation term) and SDPG run the teacher in each micro-batch of the actor update."""
        mode = self.actor_loss_config.policy_loss.loss_mode  # set before verl's _setup, which resumes checkpoints
        return mode == "sdpg" or (mode == "sdpo" and self.self_teacher.sdpo.pg_coef < 1.0)

    def _update_options(self) -> dict:
        """Non-tensor options of the actor update the plugin loss reads."""
        options = {"global_steps": self.global_steps}  # the step k of SDPG's beta(k)
        if self.loss_mode == "sc_grpo" and self.self_teacher.sc_grpo.threshold_scope == "batch":
            options[SC_THRESHOLD_KEY] = self._sc_threshold
        return options


def _bypasses_old_log_prob(config) -> bool:
    """verl's rollout-correction bypass mode reuses the rollout's log-probs instead of an old-log-prob pass."""
    rollout_correction = config.algorithm.get("rollout_correction", None)
    return bool(rollout_correction and rollout_correction.get("bypass_mode", False))


def canonical_keys(uids, input_ids, responses, keys) -> tuple[list, list]:
    """Group keys and rollout indices for the teacher draws that no batch order, world size or run changes.

    verl's uids are random per run, and the session a sample gets depends on request arrival: the draws follow
    the content instead. Groups sort by (digest of the prompt ids, uid) and rollouts within a group by (response
    ids, verl's session / output index); the uid and the session only break ties between identical prompts or
    identical responses, whose teachers are the same texts whichever way the tie goes.
    """
    sessions = rollout_indices(keys)
    groups, indices = [], []
    for uid, ids, response, session in zip(uids, input_ids, responses, sessions):
        prompt = ids[: len(ids) - len(response)].to(torch.int64).numpy().tobytes()
        groups.append((hashlib.sha1(prompt).hexdigest(), str(uid)))
        indices.append((tuple(response), session if session is not None else ()))
    return groups, indices


def rollout_indices(keys) -> list:
    """Each sample's index within its group, from verl's TransferQueue key ``{uid}_{session_id}_{output}``.

    The draws of teacher contexts follow (uid, index), so they do not depend on the batch order, which verl
    changes with the number of ranks. Keys of another form give ``None`` for all (batch order)."""
    indices = []
    for key in keys:
        parts = str(key).rsplit("_", 2)
        if len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit()):
            logger.warning("TransferQueue key %r is not {uid}_{session}_{output}: teacher draws follow batch order", key)
            return [None] * len(keys)
        indices.append((int(parts[1]), int(parts[2])))
    return indices


def chat_template_kwargs(config) -> dict:
    """verl's ``data.apply_chat_template_kwargs``: the teacher prompt is rendered as the student's."""
    from omegaconf import OmegaConf

    value = config.get("data", {}).get("apply_chat_template_kwargs", None)
    return dict(OmegaConf.to_container(value, resolve=True)) if value else {}


def teacher_input_tensor(teacher_prompt_ids, responses: torch.Tensor, student_input_ids: torch.Tensor) -> torch.Tensor:
    """``teacher_input_ids`` for TransferQueue, nested (B, j): teacher prompt ids + the rollout's own response ids
    (taken from ``responses`` as they are, never via Python lists); a row without a teacher (prompt ``None``)
    keeps its student ids as a placeholder, which costs no teacher forward."""
    response_rows, student_rows = responses.unbind(), student_input_ids.unbind()
    if len(teacher_prompt_ids) != len(response_rows):
        raise ValueError(f"{len(teacher_prompt_ids)} teacher prompts for {len(response_rows)} responses")
    rows = []
    for prompt, response, student in zip(teacher_prompt_ids, response_rows, student_rows):
        if prompt is None:
            rows.append(student)
        else:
            head = torch.from_numpy(np.asarray(prompt, dtype=np.int64)).to(response.dtype)
            rows.append(torch.cat([head, response.to(head.device)]))
    return jagged(rows)


def _as_list(values) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def reward_feedback(extra_fields: list) -> list[str]:
    """The ``feedback`` string the reward function returned for each rollout ("" when it returned none).

    verl's agent loop keeps a reward function's extra keys (everything but ``score``) per sample in the
    ``extra_fields`` TransferQueue field, under ``reward_extra_info``.
    """
    out = []
    for fields in extra_fields:
        info = (fields or {}).get("reward_extra_info") or {}
        value = info.get("feedback", "")
        out.append("" if value is None else str(value))
    return out


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


def apply_solve_none_advantages(batch, settings: SelfTeacherConfig, metrics: dict):
    """Replace the advantages of solve-none groups by SC-GRPO's pseudo-advantages, in TransferQueue.

    Returns the batch meta (updated when advantages were written)."""
    tq = trainer_base.tq
    data = tq.kv_batch_get(
        keys=batch.keys,
        partition_id=batch.partition_id,
        select_fields=["uid", "advantages", "response_mask", "sc_divergence", "sc_route", "sc_reference"],
    )
    route = data["sc_route"].reshape(-1).long()
    metrics["self_teacher/frac_solve_none"] = (route == ROUTE_SOLVE_NONE).float().mean().item()
    if not (route == ROUTE_SOLVE_NONE).any():
        return batch
    response_mask = data["response_mask"].to_padded_tensor(0.0)
    divergence = data["sc_divergence"].to_padded_tensor(0.0)
    advantages = data["advantages"].to_padded_tensor(0.0)
    uids = list(data["uid"]) if not torch.is_tensor(data["uid"]) else data["uid"].tolist()
    pseudo, _ = solve_none_pseudo_advantage(
        divergence,
        response_mask,
        np.array(uids, dtype=object),
        route,
        data["sc_reference"].reshape(-1).bool(),
        alpha=settings.sc_grpo.solve_none_alpha,
        epsilon=settings.sc_grpo.epsilon,
        c_min=settings.sc_grpo.c_min,
        quantile=settings.sc_grpo.quantile,
    )
    solve_none = (route == ROUTE_SOLVE_NONE).unsqueeze(-1)
    advantages = torch.where(solve_none, pseudo.unsqueeze(-1) * response_mask, advantages)
    lengths = data["response_mask"].offsets().diff().tolist()
    nested = jagged([advantages[i, :n] for i, n in enumerate(lengths)])
    return put_fields(batch, TensorDict({"advantages": nested, "returns": nested.clone()}, batch_size=[len(lengths)]))
