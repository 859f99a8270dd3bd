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
  ``sc_threshold`` (non-tensor) the batch-wide c when ``threshold_scope: batch``.
- SDPO / SDPG: ``teacher_input_ids`` nested (B, j) (teacher prompt + the same response); the teacher runs
  inside the update, one packed forward per micro-batch, through ``teacher_logits_fn`` (bound by
  ``SelfTeacherWorker``), so nothing per-vocabulary is stored between passes.
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

from scgrpo_verl.algos.divergence import (
    divergence_from_log_probs,
    full_vocab_divergence,
    student_topk_ids,
    topk_log_probs,
)
from scgrpo_verl.algos.sc_grpo import ROUTE_WEIGHTED, sc_weight
from scgrpo_verl.algos.sdpg import REFERENCE_KL_TERMS, gated_opd_token_loss, sdpg_beta
from scgrpo_verl.algos.sdpo import sampled_token_distillation_loss, sdpo_importance_weight
from scgrpo_verl.config import PLUGIN_LOSS_MODES
from scgrpo_verl.teacher.engine_forward import response_token_rows

DIVERGENCE_KEY = "self_teacher_divergence"
TEACHER_LOG_PROB_KEY = "self_teacher_log_prob"
# non-tensor micro-batch entries: the global teacher-token / teacher-row counts (SDPO normalize=teacher_tokens)
# and the batch-wide c of SC-GRPO (threshold_scope=batch)
TEACHER_TOKENS_KEY = "self_teacher_num_tokens"
TEACHER_ROWS_KEY = "self_teacher_num_rows"
SC_THRESHOLD_KEY = "sc_threshold"
# batch option set by the trainer: verl's old-log-prob pass also runs SC-GRPO's teacher (SelfTeacherWorker)
PASS_OPTION = "self_teacher_pass"


# The policy-gradient part of every plugin method is verl's clipped (dual-clip) surrogate; the method's
# own term is added by ``self_teacher_loss``. Registering the names lets verl's config and registry
# resolve ``policy_loss.loss_mode: sc_grpo | sdpo | sdpg``.
for _name in PLUGIN_LOSS_MODES:
    register_policy_loss(_name)(compute_policy_loss_vanilla)


def _padded(data: TensorDict, key: str, fill: float = 0.0) -> torch.Tensor:
    value = data[key]
    return value.to_padded_tensor(fill) if getattr(value, "is_nested", False) else value


def _response_rows(data: TensorDict, num_rows: int) -> torch.Tensor:
    """Packed row of every response token's prediction, in (sample, position) order (``no_padding_2_padding``)."""
    input_lengths = data["input_ids"].offsets().diff().cpu()
    if int(input_lengths.sum()) != num_rows:
        raise ValueError(
            f"student_logits has {num_rows} rows but the micro-batch holds {int(input_lengths.sum())} tokens; "
            "sequence parallelism and static padding are not supported by the self-teacher logits processor"
        )
    rows = response_token_rows(input_lengths, data["responses"].offsets().diff().cpu())
    return rows.to(data["responses"].device)


def self_teacher_token_divergence(
    config, data: TensorDict, student_logits: torch.Tensor, teacher_logits_fn
) -> dict[str, torch.Tensor]:
    """Logits-processor step on the live student logits of one micro-batch, (1, nnz, V) -> {key: (1, nnz)}.

    ``teacher_logits_fn(data) -> (teacher logits (N_t, V), token index (N_t,))`` runs the teacher forward
    of the micro-batch's rows that have a teacher (:func:`scgrpo_verl.teacher.engine_forward.teacher_response_logits`).
    Per method:
    - ``sc_grpo`` (the log-prob pass): D = KL(q || p) over the full vocabulary (no gradient);
    - ``sdpo`` ``topk``: JSD_alpha on the student's top-k ids (+ tail bucket when ``add_tail``);
    - ``sdpo`` ``full`` and ``sdpg``: JSD_alpha / KL(p || q) over the full vocabulary (chunked kernel);
    - ``sdpo`` ``sampled_token``: the teacher's log-prob of the sampled token (``TEACHER_LOG_PROB_KEY``).
    Tokens without a teacher get 0.
    """
    if teacher_logits_fn is None:
        raise ValueError("the self-teacher logits processor needs teacher_logits_fn (bound by SelfTeacherWorker)")
    st = config.policy_loss.self_teacher
    mode = config.policy_loss.loss_mode
    logits = student_logits.squeeze(0)
    rows = _response_rows(data, logits.shape[0])
    teacher, token_index = teacher_logits_fn(data)
    rows = rows[token_index.to(rows.device)]
    student = logits[rows]  # (N_t, V), already scaled by the rollout temperature in the engine
    chunk_bytes = int(st.teacher.divergence_chunk_mib * (1 << 20))
    key = TEACHER_LOG_PROB_KEY if mode == "sdpo" and st.sdpo.distillation == "sampled_token" else DIVERGENCE_KEY
    out = torch.zeros(logits.shape[0], dtype=torch.float32, device=logits.device)
    if rows.numel() == 0:  # no row of this micro-batch has a teacher: zeros, still attached to the student logits
        return {key: (out + 0.0 * logits[:1, :1].sum()).unsqueeze(0)}
    if mode == "sdpo" and st.sdpo.distillation == "topk":
        ids = student_topk_ids(student, min(st.sdpo.topk, student.shape[-1]))
        values = divergence_from_log_probs(
            topk_log_probs(student, ids, add_tail=st.sdpo.add_tail),
            topk_log_probs(teacher, ids, add_tail=st.sdpo.add_tail),
            "jsd",
            st.sdpo.alpha,
        )
    elif mode == "sdpo" and st.sdpo.distillation == "sampled_token":
        sampled = data["input_ids"].values()[rows + 1].to(teacher.device)
        values = teacher.gather(-1, sampled.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(teacher, dim=-1)
    elif mode in ("sdpo", "sdpg", "sc_grpo"):
        kind, alpha = {"sdpo": ("jsd", st.sdpo.alpha), "sdpg": ("reverse_kl", None), "sc_grpo": ("forward_kl", None)}[mode]
        if teacher.shape != student.shape:
            raise ValueError(f"teacher logits {tuple(teacher.shape)} do not match the student's {tuple(student.shape)}")
        values = full_vocab_divergence(student, teacher, kind, alpha, chunk_bytes=chunk_bytes)
    else:
        raise ValueError(f"loss_mode {mode!r} with these options needs no logits processor")
    return {key: out.index_put((rows,), values.float()).unsqueeze(0)}


def self_teacher_log_prob_pass(
    config,
    model_output: Optional[dict] = None,
    data: Optional[TensorDict] = None,
    dp_group=None,
    student_logits: Optional[torch.Tensor] = None,
    teacher_logits_fn=None,
):
    """The logits processor of verl's old-log-prob pass when it also runs SC-GRPO's teacher (no loss).

    Installed by ``SelfTeacherWorker.compute_log_prob`` for that one pass: with ``student_logits`` it returns
    D per token (:func:`self_teacher_token_divergence`); the final call returns a zero loss.
    """
    if student_logits is not None:
        return self_teacher_token_divergence(config, data, student_logits, teacher_logits_fn)
    return torch.zeros((), device=model_output["log_probs"].values().device if model_output else None), {}


def self_teacher_loss(
    config,
    model_output: Optional[dict] = None,
    data: Optional[TensorDict] = None,
    dp_group=None,
    student_logits: Optional[torch.Tensor] = None,
    teacher_logits_fn=None,
):
    """Actor loss of SC-GRPO / SDPO / SDPG (ALGORITHMS.md sections 1-3); any other mode is ``ppo_loss``.

    ``teacher_logits_fn``: the teacher forward of a micro-batch (see :func:`self_teacher_token_divergence`),
    bound by ``SelfTeacherWorker``; SDPO and SDPG run it in the logits-processor call.
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
    teacher_log_prob = model_output.get(TEACHER_LOG_PROB_KEY, None)
    if teacher_log_prob is not None:
        teacher_log_prob = no_padding_2_padding(teacher_log_prob, data)

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
    if mode == "sdpo" and st.sdpo.pg_coef < 1.0:
        distill = _sdpo_token_loss(st, data, log_prob, old_log_prob, divergence, teacher_log_prob, rollout_is_weights)
        distill_mask, distill_info = response_mask, global_info
        if st.sdpo.normalize == "teacher_tokens":  # the authors' scaling: over the tokens that have a teacher
            distill_mask = response_mask & (_padded(data, "self_teacher_mask").reshape(-1, 1) > 0)
            distill_info = dict(global_info, **_teacher_token_counts(data))
        distill_loss = agg_loss(loss_mat=distill, loss_mask=distill_mask, loss_agg_mode=loss_agg_mode, **distill_info)
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


def _sdpo_token_loss(st, data, log_prob, old_log_prob, divergence, teacher_log_prob, rollout_is_weights):
    """SDPO per-token distillation loss x sg(min(ratio, is_clip)) x teacher mask, (B, T)."""
    if st.sdpo.distillation == "sampled_token":
        if teacher_log_prob is None:
            raise ValueError(f"model_output has no {TEACHER_LOG_PROB_KEY!r}: sampled_token SDPO needs distillation_use_topk=True")
        per_token = sampled_token_distillation_loss(log_prob, teacher_log_prob)
    else:
        per_token = _require_divergence(divergence)
    weight = sdpo_importance_weight(log_prob, old_log_prob, st.sdpo.is_clip, rollout_is_weights)
    return per_token * weight * _padded(data, "self_teacher_mask").float().reshape(-1, 1)


def _sdpg_beta(st, global_steps) -> float:
    if global_steps is None:
        raise ValueError("loss_mode 'sdpg' needs the training step: put 'global_steps' in the batch extra_info")
    cfg = st.sdpg
    return sdpg_beta(int(global_steps), cfg.beta_base, cfg.warmup_steps, cfg.decay_steps, cfg.total_steps)
