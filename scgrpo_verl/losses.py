"""The actor loss of every registered self-teacher method, with the signature of verl's ``ppo_loss`` (glue).

``self_teacher_loss(config, model_output, data, dp_group)`` is installed on the actor with
``actor_rollout_wg.set_loss_fn(partial(self_teacher_loss, config=actor_config))``. It follows
verl 0.9.1's ``verl/workers/utils/losses.py::ppo_loss`` term by term (policy surrogate through the
policy-loss registry, entropy bonus, reference KL, aggregation with ``agg_loss`` over the global batch
info) and asks the method (:mod:`scgrpo_verl.methods`) at each term: weights on the surrogate's tokens, its own
term, its reference KL. With the method's term switched off it equals ``ppo_loss``.

The self-teacher terms need the teacher: ``SelfTeacherWorker`` runs the teacher forward of each micro-batch
before verl's own student forward, keeps the student's last hidden states from that forward, and hands both to
the loss as ``self_teacher`` (a :class:`scgrpo_verl.teacher.engine_forward.MicroBatchTeacher`). Every divergence
comes from hidden states on both sides through the fused linear kernel: no (N, V) buffer, and the same numbers
whether verl builds the student's logits (``use_fused_kernels`` off) or not (on). A log-prob-pass method's pass
(SC-GRPO) returns D per token as a ``model_output`` entry, as verl returns its own log-probs.

The micro-batch keys it reads are :mod:`scgrpo_verl.batch_keys`'.
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

from scgrpo_verl.batch_keys import DIVERGENCE_KEY, GLOBAL_STEPS_KEY, TEACHER_MASK_KEY
from scgrpo_verl.methods import LossInputs, get_method, is_method, method_names
from scgrpo_verl.teacher.engine_forward import response_token_rows


def register_loss_modes() -> None:
    """Register every self-teacher method's name as a verl policy loss (again for methods registered since).

    The policy-gradient part of every method is verl's clipped (dual-clip) surrogate; the method's own terms are
    added by ``self_teacher_loss``. Registering the names lets verl's config and registry resolve
    ``policy_loss.loss_mode: <method>``."""
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY

    for name in method_names():
        if name not in POLICY_LOSS_REGISTRY:
            register_policy_loss(name)(compute_policy_loss_vanilla)


register_loss_modes()


def _padded(data: TensorDict, key: str, fill: float = 0.0) -> torch.Tensor:
    value = data[key]
    return value.to_padded_tensor(fill) if getattr(value, "is_nested", False) else value


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
    """The loss of verl's old-log-prob pass when it also runs the method's teacher (a ``LOG_PROB_PASS`` method): no
    loss, and the method's D per token (SC-GRPO: KL(q || p), ALGORITHMS.md section 1) added to ``model_output`` as
    ``DIVERGENCE_KEY``, nested (B, j) over the input tokens like verl's log-probs (at the positions predicting the
    response tokens, 0 elsewhere)."""
    if self_teacher is None:
        raise ValueError("the self-teacher log-prob pass needs the micro-batch's teacher (SelfTeacherWorker runs it)")
    teacher = self_teacher
    response_mask = _padded(data, "response_mask")
    ones = torch.ones(response_mask.shape, dtype=torch.float32, device=response_mask.device)
    with torch.no_grad():
        _, divergence = teacher.divergence(ones, get_method(config.policy_loss.loss_mode).log_prob_divergence)
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
    """Actor loss of a registered self-teacher method (ALGORITHMS.md sections 1-3, :mod:`scgrpo_verl.methods`); any
    other loss mode is verl's ``ppo_loss``.

    ``self_teacher``: the micro-batch's teacher (:class:`scgrpo_verl.teacher.engine_forward.MicroBatchTeacher`),
    handed in by ``SelfTeacherWorker`` when the method's teacher runs in the update.
    """
    mode = config.policy_loss.loss_mode
    if not is_method(mode):
        return ppo_loss(config, model_output, data, dp_group)
    method = get_method(mode)
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

    response_mask = _padded(data, "response_mask").bool()
    rollout_is_weights = _padded(data, "rollout_is_weights") if "rollout_is_weights" in data else None
    loss_agg_mode = config.loss_agg_mode
    metrics: dict[str, Any] = {}

    def aggregate(loss_mat, mask, **info):
        return agg_loss(loss_mat=loss_mat, loss_mask=mask, loss_agg_mode=loss_agg_mode, **dict(global_info, **info))

    def log_metric(name, value):
        metrics[name] = Metric(value=value, aggregation=metric_aggregation)

    inputs = LossInputs(
        settings=st,
        log_prob=log_prob,
        old_log_prob=_padded(data, "old_log_probs"),
        advantages=_padded(data, "advantages"),
        response_mask=response_mask,
        rollout_is_weights=rollout_is_weights,
        teacher_mask=_padded(data, TEACHER_MASK_KEY).float().reshape(-1, 1) if TEACHER_MASK_KEY in data else None,
        teacher=self_teacher,
        global_steps=tu.get_non_tensor_data(data=data, key=GLOBAL_STEPS_KEY, default=None),
        tensor=lambda key: _padded(data, key),
        has_field=lambda key: key in data,
        non_tensor=lambda key: tu.get_non_tensor_data(data=data, key=key, default=None),
        aggregate=aggregate,
        token_weights=lambda mask, **info: agg_token_weights(mask, loss_agg_mode, **dict(global_info, **info)),
        log_metric=log_metric,
        metrics=metrics,
    )

    # 1. policy-gradient surrogate, its token terms weighted where the method says so (SC-GRPO: f(D))
    pg_weights = method.policy_gradient_weights(inputs)
    if pg_weights is not None and rollout_is_weights is not None:
        pg_weights = pg_weights * rollout_is_weights
    pg_loss, pg_metrics = get_policy_loss_fn(mode)(
        old_log_prob=inputs.old_log_prob,
        log_prob=log_prob,
        advantages=inputs.advantages,
        response_mask=response_mask,
        loss_agg_mode=loss_agg_mode,
        config=config,
        rollout_is_weights=rollout_is_weights if pg_weights is None else pg_weights,
    )
    metrics.update(Metric.from_dict(pg_metrics, aggregation=AggregationType.MEAN))
    metrics["actor/pg_loss"] = Metric(value=pg_loss, aggregation=metric_aggregation)

    # 2. the method's own term: sum_t c_t D_t with detached c_t (verl's aggregation is linear in the token terms),
    # computed from hidden states by the fused linear kernel
    policy_loss = method.loss(inputs, pg_loss)

    # 3. entropy bonus, as in ppo_loss
    if entropy is not None:
        entropy_loss = aggregate(entropy, response_mask)
        policy_loss = policy_loss - config.entropy_coeff * entropy_loss
        metrics["actor/entropy_loss"] = Metric(value=entropy_loss, aggregation=metric_aggregation)

    # 4. reference KL: verl's estimator, or the method's own (SDPG's exact URKL / UFKL; alpha = kl_loss_coef)
    if config.use_kl_loss:
        ref_log_prob = _padded(data, "ref_log_prob")
        kld = method.reference_kl(inputs, ref_log_prob)
        if kld is None:
            kld = kl_penalty(logprob=log_prob, ref_logprob=ref_log_prob, kl_penalty=config.kl_loss_type)
        kl_loss = aggregate(kld, response_mask)
        policy_loss = policy_loss + kl_loss * config.kl_loss_coef
        metrics["kl_loss"] = Metric(value=kl_loss, aggregation=metric_aggregation)
        metrics["kl_coef"] = config.kl_loss_coef

    return policy_loss, metrics
