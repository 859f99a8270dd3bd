"""Actor loss callables for SC-GRPO, SDPO and SDPG with the signature of verl's ``ppo_loss``.

``self_teacher_loss(config, model_output, data, dp_group)`` is installed on the actor with
``actor_rollout_wg.set_loss_fn(partial(self_teacher_loss, config=actor_config))``. It follows
verl 0.9.1's ``verl/workers/utils/losses.py::ppo_loss`` term by term (policy surrogate through the
policy-loss registry, entropy bonus, reference KL, aggregation with ``agg_loss`` over the global batch
info) and adds the method's self-teacher term. With that term switched off it equals ``ppo_loss``.

The self-teacher terms need the teacher: ``SelfTeacherWorker`` runs the teacher forward of each micro-batch
before verl's own student forward, keeps the student's last hidden states from that forward, and hands both to
the loss as ``self_teacher`` (a :class:`scgrpo_verl.teacher.engine_forward.MicroBatchTeacher`). Every divergence
comes from hidden states on both sides through the fused linear kernel: no (N, V) buffer, and the same numbers
whether verl builds the student's logits (``use_fused_kernels`` off) or not (on). SC-GRPO's log-prob pass returns
D per token as a ``model_output`` entry, as verl returns its own log-probs.

Micro-batch keys read (written to TransferQueue by the trainer's teacher step):
- ``self_teacher_mask`` (B,): 1 where the rollout has a teacher (SDPO / SDPG), else 0.
- SC-GRPO: ``sc_divergence`` nested (B, r) D = KL(q || p); ``sc_route`` (B,) ROUTE_* codes.
  ``sc_threshold`` (non-tensor) the batch-wide c when ``threshold_scope: batch``.
- SDPO / SDPG: ``teacher_input_ids`` nested (B, j) (teacher prompt + the same response); the teacher runs
  in the update, one packed forward per micro-batch, so nothing per-vocabulary is stored between passes.
- SDPO ``normalize: teacher_tokens``: non-tensor ``self_teacher_num_tokens`` / ``self_teacher_num_rows``.
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

from scgrpo_verl.algos.sc_grpo import ROUTE_WEIGHTED, sc_weight
from scgrpo_verl.algos.sdpg import REFERENCE_KL_TERMS, opd_gate, sdpg_beta
from scgrpo_verl.algos.sdpo import sampled_token_distillation_loss, sdpo_importance_weight
from scgrpo_verl.config import PLUGIN_LOSS_MODES
from scgrpo_verl.teacher.engine_forward import response_token_rows

DIVERGENCE_KEY = "self_teacher_divergence"
# non-tensor micro-batch entries: the global teacher-token / teacher-row counts (SDPO normalize=teacher_tokens)
# and the batch-wide c of SC-GRPO (threshold_scope=batch)
TEACHER_TOKENS_KEY = "self_teacher_num_tokens"
TEACHER_ROWS_KEY = "self_teacher_num_rows"
SC_THRESHOLD_KEY = "sc_threshold"
# batch option set by the trainer: verl's old-log-prob pass also runs SC-GRPO's teacher (SelfTeacherWorker)
PASS_OPTION = "self_teacher_pass"
# SDPO's / SDPG's divergence per method options: (kind, alpha)
SDPG_KIND = "reverse_kl"  # L_OPD = KL(p || q)
SC_GRPO_KIND = "forward_kl"  # D = KL(q || p)


# The policy-gradient part of every plugin method is verl's clipped (dual-clip) surrogate; the method's
# own term is added by ``self_teacher_loss``. Registering the names lets verl's config and registry
# resolve ``policy_loss.loss_mode: sc_grpo | sdpo | sdpg``.
for _name in PLUGIN_LOSS_MODES:
    register_policy_loss(_name)(compute_policy_loss_vanilla)


def _padded(data: TensorDict, key: str, fill: float = 0.0) -> torch.Tensor:
    value = data[key]
    return value.to_padded_tensor(fill) if getattr(value, "is_nested", False) else value


def divergence_chunk_bytes(st) -> Optional[int]:
    """``self_teacher.teacher.divergence_chunk_mib`` in bytes (None: the device's budget)."""
    mib = st.teacher.divergence_chunk_mib
    return None if mib is None else int(mib * (1 << 20))


def _require_teacher(self_teacher, mode: str):
    if self_teacher is None:
        raise ValueError(
            f"loss_mode {mode!r} needs the micro-batch's self-teacher (self_teacher=...): run it through "
            "SelfTeacherWorker (or scgrpo_verl.engine_path's stand-in engine), which runs the teacher forward"
        )
    return self_teacher


def agg_token_weights(loss_mask: torch.Tensor, loss_agg_mode: str, **global_info) -> torch.Tensor:
    """The detached coefficient of every token in verl's ``agg_loss`` (linear in ``loss_mat``), (B, T):
    agg_loss(X) = sum_t c_t X_t, read off as its gradient at X = 0."""
    probe = torch.zeros(loss_mask.shape, dtype=torch.float32, device=loss_mask.device, requires_grad=True)
    with torch.enable_grad():
        value = agg_loss(loss_mat=probe, loss_mask=loss_mask, loss_agg_mode=loss_agg_mode, **global_info)
        (weights,) = torch.autograd.grad(value, probe, allow_unused=True)
    return torch.zeros_like(probe).detach() if weights is None else weights.detach()


def self_teacher_log_prob_pass(config, model_output: Optional[dict] = None, data: Optional[TensorDict] = None,
                               dp_group=None, self_teacher=None):
    """The loss of verl's old-log-prob pass when it also runs SC-GRPO's teacher: no loss, and D = KL(q || p) per
    token (ALGORITHMS.md section 1) added to ``model_output`` as ``DIVERGENCE_KEY``, nested (B, j) over the input
    tokens like verl's log-probs (at the positions predicting the response tokens, 0 elsewhere)."""
    teacher = _require_teacher(self_teacher, "sc_grpo")
    response_mask = _padded(data, "response_mask")
    ones = torch.ones(response_mask.shape, dtype=torch.float32, device=response_mask.device)
    with torch.no_grad():
        _, divergence = teacher.divergence(ones, SC_GRPO_KIND)
    input_lengths = data["input_ids"].offsets().diff().cpu()
    response_lengths = data["responses"].offsets().diff().cpu()
    flat = torch.zeros(int(input_lengths.sum()), dtype=torch.float32, device=divergence.device)
    owner = torch.repeat_interleave(torch.arange(len(response_lengths)), response_lengths)
    position = torch.arange(len(owner)) - (response_lengths.cumsum(0) - response_lengths)[owner]
    rows = response_token_rows(input_lengths, response_lengths)
    flat[rows.to(flat.device)] = divergence[owner.to(flat.device), position.to(flat.device)]
    model_output[DIVERGENCE_KEY] = torch.nested.nested_tensor_from_jagged(flat, data["input_ids"].offsets())
    device = model_output["log_probs"].values().device if "log_probs" in model_output else flat.device
    return torch.zeros((), device=device), {}


def self_teacher_loss(
    config,
    model_output: Optional[dict] = None,
    data: Optional[TensorDict] = None,
    dp_group=None,
    self_teacher=None,
):
    """Actor loss of SC-GRPO / SDPO / SDPG (ALGORITHMS.md sections 1-3); any other mode is ``ppo_loss``.

    ``self_teacher``: the micro-batch's teacher (:class:`scgrpo_verl.teacher.engine_forward.MicroBatchTeacher`),
    handed in by ``SelfTeacherWorker`` when the method's term needs it in the update (SDPO, SDPG).
    """
    mode = config.policy_loss.loss_mode
    if mode not in PLUGIN_LOSS_MODES:
        return ppo_loss(config, model_output, data, dp_group)
    st = config.policy_loss.self_teacher

    log_prob = no_padding_2_padding(model_output["log_probs"], data)
    entropy = model_output.get("entropy", None)
    if entropy is not None:
        entropy = no_padding_2_padding(entropy, data)

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

    # 2. the method's self-teacher term: sum_t c_t D_t with detached c_t (verl's aggregation is linear in the token
    # terms), computed from hidden states by the fused linear kernel
    teacher_mask = _padded(data, "self_teacher_mask").float().reshape(-1, 1) if mode != "sc_grpo" else None
    if mode == "sdpo" and st.sdpo.pg_coef < 1.0:
        teacher = _require_teacher(self_teacher, mode)
        distill_mask, distill_info = response_mask, global_info
        if st.sdpo.normalize == "teacher_tokens":  # the authors' scaling: over the tokens that have a teacher
            distill_mask = response_mask & (teacher_mask > 0)
            distill_info = dict(global_info, **_teacher_token_counts(data))
        weight = sdpo_importance_weight(log_prob, old_log_prob, st.sdpo.is_clip, rollout_is_weights) * teacher_mask
        if st.sdpo.distillation == "sampled_token":
            teacher_log_prob = teacher.sampled_token_log_probs(_padded(data, "responses").long())
            per_token = sampled_token_distillation_loss(log_prob, teacher_log_prob) * weight
            distill_loss = agg_loss(loss_mat=per_token, loss_mask=distill_mask, loss_agg_mode=loss_agg_mode,
                                    **distill_info)
        else:
            coefficients = agg_token_weights(distill_mask, loss_agg_mode, **distill_info) * weight
            topk = st.sdpo.topk if st.sdpo.distillation == "topk" else None
            distill_loss, _ = teacher.divergence(coefficients, "jsd", st.sdpo.alpha, topk=topk,
                                                 add_tail=st.sdpo.add_tail)
        policy_loss = st.sdpo.pg_coef * pg_loss + (1.0 - st.sdpo.pg_coef) * distill_loss
        metrics["self_teacher/distill_loss"] = Metric(value=distill_loss.detach(), aggregation=metric_aggregation)
    elif mode == "sdpg":
        beta = _sdpg_beta(st, global_steps)
        if beta > 0:
            teacher = _require_teacher(self_teacher, mode)
            gate = opd_gate(advantages).float() * teacher_mask
            coefficients = agg_token_weights(response_mask, loss_agg_mode, **global_info) * gate
            opd_loss, _ = teacher.divergence(coefficients, SDPG_KIND, clamp=st.sdpg.opd_clamp)
            policy_loss = policy_loss + beta * opd_loss
            metrics["self_teacher/opd_loss"] = Metric(value=opd_loss.detach(), aggregation=metric_aggregation)
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


def _teacher_token_counts(data: TensorDict) -> dict:
    """Global counts of the tokens / rows that have a teacher (summed over data-parallel ranks by the worker)."""
    tokens = tu.get_non_tensor_data(data=data, key=TEACHER_TOKENS_KEY, default=None)
    rows = tu.get_non_tensor_data(data=data, key=TEACHER_ROWS_KEY, default=None)
    if tokens is None or rows is None:
        raise ValueError(
            f"self_teacher.sdpo.normalize=teacher_tokens needs {TEACHER_TOKENS_KEY!r} / {TEACHER_ROWS_KEY!r} in the "
            "micro-batch (counted over the global mini-batch by SelfTeacherWorker)"
        )
    return {"batch_num_tokens": max(int(tokens), 1), "global_batch_size": max(int(rows), 1)}


def _sc_grpo_weights(st, data: TensorDict, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """f(D) on rollouts routed to weighting, 1 elsewhere; c from this micro-batch's active tokens
    (``threshold_scope: micro_batch``) or the one c of the whole batch the trainer computed (``batch``)."""
    if "sc_divergence" not in data or "sc_route" not in data:
        raise KeyError("loss_mode 'sc_grpo' needs micro-batch keys 'sc_divergence' and 'sc_route' (teacher step)")
    divergence = _padded(data, "sc_divergence")
    weighted = (_padded(data, "sc_route").reshape(-1) == ROUTE_WEIGHTED).unsqueeze(-1) & response_mask
    threshold = None
    if st.sc_grpo.threshold_scope == "batch":
        threshold = tu.get_non_tensor_data(data=data, key=SC_THRESHOLD_KEY, default=None)
        if threshold is None:
            raise ValueError(f"self_teacher.sc_grpo.threshold_scope=batch needs {SC_THRESHOLD_KEY!r} in the update options")
    weights, c = sc_weight(
        divergence,
        weighted,
        c_min=st.sc_grpo.c_min,
        quantile=st.sc_grpo.quantile,
        renormalize=st.sc_grpo.renormalize,
        threshold=threshold,
    )
    return torch.where(weighted, weights, torch.ones_like(weights)), c


def _sdpg_beta(st, global_steps) -> float:
    if global_steps is None:
        raise ValueError("loss_mode 'sdpg' needs the training step: put 'global_steps' in the batch extra_info")
    cfg = st.sdpg
    return sdpg_beta(int(global_steps), cfg.beta_base, cfg.warmup_steps, cfg.decay_steps, cfg.total_steps)
