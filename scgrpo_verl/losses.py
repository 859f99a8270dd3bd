"""Actor loss callables for SC-GRPO, SDPO and SDPG with the signature of verl's ``ppo_loss``.

``self_teacher_loss(config, model_output, data, dp_group)`` is installed on the actor with
``actor_rollout_wg.set_loss_fn(partial(self_teacher_loss, config=actor_config))``. It follows
verl 0.9.1's ``verl/workers/utils/losses.py::ppo_loss`` term by term (policy surrogate through the
policy-loss registry, entropy bonus, reference KL, aggregation with ``agg_loss`` over the global batch
info) and adds the method's self-teacher term. With that term switched off it equals ``ppo_loss``.

It is also verl's *logits processor*: when a micro-batch carries ``distillation_use_topk=True``, the
FSDP engine calls it first with ``student_logits`` (1, total_nnz, V) and keeps what it returns as
``model_output`` entries; that is where the full-vocabulary and top-k divergences are computed, on
the live student logits, before the final call.

Micro-batch keys read (written to TransferQueue by the trainer's teacher step):
- ``self_teacher_mask`` (B,): 1 where the rollout has a teacher (SDPO / SDPG), else 0.
- SC-GRPO: ``sc_divergence`` nested (B, r) D = KL(q || p); ``sc_route`` (B,) ROUTE_* codes.
- SDPO topk: ``teacher_topk_ids`` nested (B, r, K), ``teacher_topk_log_probs`` nested (B, r, K[+1]).
- SDPO full / SDPG: ``teacher_logits`` nested (B, r, V), or ``teacher_logits_fn(data) -> (N, V)``, which
  ``SelfTeacherWorker`` binds to run the teacher forward inside the actor update (nothing stored).
- SDPO sampled_token: ``teacher_log_probs`` nested (B, r).
- SDPG: non-tensor ``global_steps`` (the step k of beta(k)).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from tensordict import TensorDict

from verl.trainer.ppo.core_algos import (
    agg_loss,
    compute_policy_loss_vanilla,
    get_policy_loss_fn,
    kl_penalty,
    register_policy_loss,
)
from verl.utils import tensordict_utils as tu
from verl.utils.metric import AggregationType, Metric
from verl.workers.utils.losses import ppo_loss
from verl.workers.utils.padding import no_padding_2_padding

from scgrpo_verl.algos.divergence import divergence_from_log_probs, full_vocab_divergence, topk_log_probs
from scgrpo_verl.algos.sc_grpo import ROUTE_WEIGHTED, sc_weight
from scgrpo_verl.algos.sdpg import REFERENCE_KL_TERMS, gated_opd_token_loss, sdpg_beta
from scgrpo_verl.algos.sdpo import sampled_token_distillation_loss, sdpo_importance_weight
from scgrpo_verl.config import PLUGIN_LOSS_MODES

DIVERGENCE_KEY = "self_teacher_divergence"


# The policy-gradient part of every plugin method is verl's clipped (dual-clip) surrogate; the method's
# own term is added by ``self_teacher_loss``. Registering the names lets verl's config and registry
# resolve ``policy_loss.loss_mode: sc_grpo | sdpo | sdpg``.
for _name in PLUGIN_LOSS_MODES:
    register_policy_loss(_name)(compute_policy_loss_vanilla)


def _padded(data: TensorDict, key: str, fill: float = 0.0) -> torch.Tensor:
    value = data[key]
    return value.to_padded_tensor(fill) if getattr(value, "is_nested", False) else value


def _response_rows(data: TensorDict, num_rows: int) -> torch.Tensor:
    """Packed-row index of every response token's prediction, in (sample, position) order.

    Mirrors ``no_padding_2_padding``: response token t of sample b is predicted at packed row
    ``offset_b + prompt_len_b - 1 + t``.
    """
    prompt_lens = data["prompts"].offsets().diff()
    response_lens = data["responses"].offsets().diff()
    ends = (prompt_lens + response_lens).cumsum(0)
    if int(ends[-1]) != num_rows:
        raise ValueError(
            f"student_logits has {num_rows} rows but the micro-batch holds {int(ends[-1])} tokens; "
            "sequence parallelism and static padding are not supported by the self-teacher logits processor"
        )
    rows = [torch.arange(int(end - length - 1), int(end - 1)) for end, length in zip(ends, response_lens)]
    return torch.cat(rows).to(data["responses"].device)


def _teacher_values(data: TensorDict, key: str) -> torch.Tensor:
    if key not in data:
        raise KeyError(f"self-teacher loss needs micro-batch key {key!r} (written by the teacher step)")
    value = data[key]
    return value.values() if getattr(value, "is_nested", False) else value.reshape(-1, *value.shape[2:])


def self_teacher_token_divergence(
    config, data: TensorDict, student_logits: torch.Tensor, teacher_logits_fn=None
) -> dict[str, torch.Tensor]:
    """Logits-processor step: per-token divergence on the live student logits, (1, nnz, V) -> (1, nnz)."""
    st = config.policy_loss.self_teacher
    mode = config.policy_loss.loss_mode
    logits = student_logits.squeeze(0)
    rows = _response_rows(data, logits.shape[0])
    student = logits[rows]  # (N, V), already scaled by the rollout temperature in the engine
    if mode == "sdpo" and st.sdpo.distillation == "topk":
        ids = _teacher_values(data, "teacher_topk_ids").long()
        teacher_log_probs = _teacher_values(data, "teacher_topk_log_probs")
        student_log_probs = topk_log_probs(student, ids, add_tail=st.sdpo.add_tail)
        if student_log_probs.shape != teacher_log_probs.shape:
            raise ValueError(
                f"teacher_topk_log_probs {tuple(teacher_log_probs.shape)} do not match the student's "
                f"{tuple(student_log_probs.shape)} (self_teacher.sdpo.add_tail={st.sdpo.add_tail})"
            )
        values = divergence_from_log_probs(student_log_probs, teacher_log_probs, "jsd", st.sdpo.alpha)
    elif (mode == "sdpo" and st.sdpo.distillation == "full") or mode == "sdpg":
        kind, alpha = ("jsd", st.sdpo.alpha) if mode == "sdpo" else ("reverse_kl", None)
        if "teacher_logits" in data or teacher_logits_fn is None:
            teacher_logits = _teacher_values(data, "teacher_logits")
        else:
            teacher_logits = teacher_logits_fn(data)
        if teacher_logits.shape != student.shape:
            raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} do not match the student's {tuple(student.shape)}")
        values = full_vocab_divergence(student, teacher_logits, kind, alpha)
    else:
        raise ValueError(f"loss_mode {mode!r} with these options needs no logits processor")
    out = torch.zeros(logits.shape[0], dtype=values.dtype, device=values.device)
    return {DIVERGENCE_KEY: out.index_put((rows,), values).unsqueeze(0)}


def self_teacher_loss(
    config,
    model_output: Optional[dict] = None,
    data: Optional[TensorDict] = None,
    dp_group=None,
    student_logits: Optional[torch.Tensor] = None,
    teacher_logits_fn=None,
):
    """Actor loss of SC-GRPO / SDPO / SDPG (ALGORITHMS.md sections 1-3); any other mode is ``ppo_loss``.

    ``teacher_logits_fn(data) -> (N, V)``: teacher logits at the micro-batch's response tokens (in
    sample order), for the full-vocabulary terms when the micro-batch carries no ``teacher_logits``.
    """
    mode = config.policy_loss.loss_mode
    if student_logits is not None:
        return self_teacher_token_divergence(config, data, student_logits, teacher_logits_fn)
    if mode not in PLUGIN_LOSS_MODES:
        return ppo_loss(config, model_output, data, dp_group)
    st = config.policy_loss.self_teacher

    log_prob = no_padding_2_padding(model_output["log_probs"], data)
    entropy = model_output.get("entropy", None)
    if entropy is not None:
        entropy = no_padding_2_padding(entropy, data)
    divergence = model_output.get(DIVERGENCE_KEY, None)
    if divergence is not None:
        divergence = no_padding_2_padding(divergence, data)

    config.global_batch_info["dp_size"] = data["dp_size"]
    config.global_batch_info["batch_num_tokens"] = data["batch_num_tokens"]
    config.global_batch_info["global_batch_size"] = data["global_batch_size"]
    config.global_batch_info["loss_scale_factor"] = config.loss_scale_factor
    global_info = config.global_batch_info
    if (
        data["dp_size"] > 1
        or data["batch_num_tokens"] is not None
        or data["global_batch_size"] is not None
        or config.loss_scale_factor is not None
    ):
        metric_aggregation = AggregationType.SUM
    else:
        metric_aggregation = AggregationType.MEAN

    global_steps = tu.get_non_tensor_data(data=data, key="global_steps", default=None)
    response_mask = _padded(data, "response_mask").bool()
    old_log_prob = _padded(data, "old_log_probs")
    advantages = _padded(data, "advantages")
    rollout_is_weights = _padded(data, "rollout_is_weights") if "rollout_is_weights" in data else None
    loss_agg_mode = config.loss_agg_mode
    metrics: dict[str, Any] = {}

    # 1. policy-gradient surrogate (SC-GRPO: token terms weighted by f(D))
    pg_weights = rollout_is_weights
    if mode == "sc_grpo":
        weights, c = _sc_grpo_weights(st, data, response_mask)
        pg_weights = weights if rollout_is_weights is None else weights * rollout_is_weights
        active = response_mask & (weights != 1.0)
        metrics["self_teacher/sc_weight_mean"] = (weights[active].mean() if active.any() else weights.new_zeros(())).item()
        metrics["self_teacher/sc_c"] = float(c)
        metrics["self_teacher/sc_weighted_token_frac"] = (active.sum() / response_mask.sum().clamp_min(1)).item()
    pg_loss, pg_metrics = get_policy_loss_fn(mode)(
        old_log_prob=old_log_prob,
        log_prob=log_prob,
        advantages=advantages,
        response_mask=response_mask,
        loss_agg_mode=loss_agg_mode,
        config=config,
        rollout_is_weights=pg_weights,
    )
    metrics.update(Metric.from_dict(pg_metrics, aggregation=AggregationType.MEAN))
    metrics["actor/pg_loss"] = Metric(value=pg_loss, aggregation=metric_aggregation)
    policy_loss = pg_loss

    # 2. the method's self-teacher term
    if mode == "sdpo":
        distill = _sdpo_token_loss(st, data, log_prob, old_log_prob, divergence, rollout_is_weights)
        distill_loss = agg_loss(loss_mat=distill, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **global_info)
        policy_loss = st.sdpo.pg_coef * pg_loss + (1.0 - st.sdpo.pg_coef) * distill_loss
        metrics["self_teacher/distill_loss"] = Metric(value=distill_loss, aggregation=metric_aggregation)
    elif mode == "sdpg":
        beta = _sdpg_beta(st, global_steps)
        if beta > 0:
            gated = gated_opd_token_loss(_require_divergence(divergence), advantages, st.sdpg.opd_clamp)
            gated = gated * _padded(data, "self_teacher_mask").float().unsqueeze(-1)
            opd_loss = agg_loss(loss_mat=gated, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **global_info)
            policy_loss = policy_loss + beta * opd_loss
            metrics["self_teacher/opd_loss"] = Metric(value=opd_loss, aggregation=metric_aggregation)
        metrics["self_teacher/sdpg_beta"] = beta

    # 3. entropy bonus, as in ppo_loss
    if entropy is not None:
        entropy_loss = agg_loss(loss_mat=entropy, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **global_info)
        policy_loss = policy_loss - config.entropy_coeff * entropy_loss
        metrics["actor/entropy_loss"] = Metric(value=entropy_loss, aggregation=metric_aggregation)

    # 4. reference KL: verl's estimator, or SDPG's exact URKL / UFKL (alpha = kl_loss_coef)
    if config.use_kl_loss:
        ref_log_prob = _padded(data, "ref_log_prob")
        if mode == "sdpg":
            kld = REFERENCE_KL_TERMS[st.sdpg.ref_kl](log_prob, ref_log_prob)
        else:
            kld = kl_penalty(logprob=log_prob, ref_logprob=ref_log_prob, kl_penalty=config.kl_loss_type)
        kl_loss = agg_loss(loss_mat=kld, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **global_info)
        policy_loss = policy_loss + kl_loss * config.kl_loss_coef
        metrics["kl_loss"] = Metric(value=kl_loss, aggregation=metric_aggregation)
        metrics["kl_coef"] = config.kl_loss_coef

    return policy_loss, metrics


def _require_divergence(divergence: Optional[torch.Tensor]) -> torch.Tensor:
    if divergence is None:
        raise ValueError(
            f"model_output has no {DIVERGENCE_KEY!r}: the micro-batch must carry distillation_use_topk=True so the "
            "engine runs self_teacher_loss as its logits processor"
        )
    return divergence


def _sc_grpo_weights(st, data: TensorDict, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """f(D) on rollouts routed to weighting, 1 elsewhere; c from this micro-batch's active tokens."""
    if "sc_divergence" not in data or "sc_route" not in data:
        raise KeyError("loss_mode 'sc_grpo' needs micro-batch keys 'sc_divergence' and 'sc_route' (teacher step)")
    divergence = _padded(data, "sc_divergence")
    weighted = (_padded(data, "sc_route").reshape(-1) == ROUTE_WEIGHTED).unsqueeze(-1) & response_mask
    weights, c = sc_weight(
        divergence, weighted, c_min=st.sc_grpo.c_min, quantile=st.sc_grpo.quantile, renormalize=st.sc_grpo.renormalize
    )
    return torch.where(weighted, weights, torch.ones_like(weights)), c


def _sdpo_token_loss(st, data, log_prob, old_log_prob, divergence, rollout_is_weights) -> torch.Tensor:
    """SDPO per-token distillation loss x sg(min(ratio, is_clip)) x teacher mask, (B, T)."""
    if st.sdpo.distillation == "sampled_token":
        per_token = sampled_token_distillation_loss(log_prob, _padded(data, "teacher_log_probs"))
    else:
        per_token = _require_divergence(divergence)
    weight = sdpo_importance_weight(log_prob, old_log_prob, st.sdpo.is_clip, rollout_is_weights)
    return per_token * weight * _padded(data, "self_teacher_mask").float().reshape(-1, 1)


def _sdpg_beta(st, global_steps) -> float:
    if global_steps is None:
        raise ValueError("loss_mode 'sdpg' needs the training step: put 'global_steps' in the batch extra_info")
    cfg = st.sdpg
    return sdpg_beta(int(global_steps), cfg.beta_base, cfg.warmup_steps, cfg.decay_steps, cfg.total_steps)
