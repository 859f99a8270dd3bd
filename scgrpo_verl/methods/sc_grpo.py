"""SC-GRPO (arXiv 2606.18810; ALGORITHMS.md section 1): GRPO whose token terms are weighted by f(D), D the
per-token KL(q || p) of the self-teacher conditioned on a verified sibling, plus pseudo-advantages for groups with
no verified rollout (solve-none).

The teacher runs in verl's old-log-prob pass, because D is needed before the advantages.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from scgrpo_verl.algos.sc_grpo import (
    ROUTE_SOLVE_NONE,
    ROUTE_WEIGHTED,
    sc_weight,
    sc_weight_constant,
    solve_none_pseudo_advantage,
)
from scgrpo_verl.batch_keys import SC_DIVERGENCE_KEY, SC_REFERENCE_KEY, SC_ROUTE_KEY, SC_THRESHOLD_KEY
from scgrpo_verl.errors import ConfigError
from scgrpo_verl.methods.base import LOG_PROB_PASS, LogProbPassResult, LossInputs, SelfTeacherMethod, register_method
from scgrpo_verl.teacher import plans

#: D = KL(q || p): the teacher's distribution against the student's
DIVERGENCE_KIND = "forward_kl"


@register_method("sc_grpo")
class SCGRPO(SelfTeacherMethod):
    options = "sc_grpo"
    adv_estimator = "sc_grpo"
    template_fields = ("sc_grpo_default_system", "sc_grpo_guide", "sc_grpo_solve_none_guide")

    def check(self, settings) -> None:
        if not settings.teacher.exclude_self:
            raise ConfigError("self_teacher.teacher.exclude_self: SC-GRPO never conditions a rollout on itself; "
                              "must be true")

    # -- contexts -----------------------------------------------------------------------------------------
    def plan_contexts(self, batch, settings):
        return plans.sc_grpo_plans(batch, settings.teacher)

    def stage_fields(self, contexts) -> dict[str, torch.Tensor]:
        return {SC_ROUTE_KEY: contexts.route.long(), SC_REFERENCE_KEY: contexts.reference.long()}

    # -- passes -------------------------------------------------------------------------------------------
    def teacher_pass(self, settings) -> Optional[str]:
        return LOG_PROB_PASS

    def after_log_prob_pass(self, settings, divergence: Sequence[torch.Tensor], contexts, metrics: dict):
        """D of the rows with a teacher as ``sc_divergence``, its quantiles, and the batch-wide c when
        ``threshold_scope: batch``."""
        mask = contexts.mask.float()
        pieces = [d * m for d, m in zip(divergence, mask)]
        teacher_values = [d for d, m in zip(pieces, mask) if m > 0]
        if teacher_values:
            quantiles = torch.quantile(torch.cat(teacher_values).float(), torch.tensor([0.5, 0.75, 0.95]))
            for name, value in zip(("p50", "p75", "p95"), quantiles.tolist()):
                metrics[f"self_teacher/divergence_{name}"] = value
        options = {}
        if settings.sc_grpo.threshold_scope == "batch":
            cfg = settings.sc_grpo
            weighted = [d for d, route in zip(pieces, contexts.route.tolist()) if route == ROUTE_WEIGHTED]
            values = torch.cat(weighted) if weighted else torch.zeros(0)
            c = float(sc_weight_constant(values, torch.ones_like(values, dtype=torch.bool), cfg.c_min, cfg.quantile))
            options[SC_THRESHOLD_KEY] = c
            metrics["self_teacher/sc_c_batch"] = c
        return LogProbPassResult(fields={SC_DIVERGENCE_KEY: pieces}, update_options=options)

    advantage_fields = (SC_DIVERGENCE_KEY, SC_ROUTE_KEY, SC_REFERENCE_KEY)

    def adjust_advantages(self, settings, advantages: torch.Tensor, response_mask: torch.Tensor, uids,
                          fields: dict, metrics: dict) -> Optional[torch.Tensor]:
        """Solve-none groups get the pseudo-advantages of ALGORITHMS.md section 1; every other row keeps GRPO's."""
        route = fields[SC_ROUTE_KEY].reshape(-1).long()
        solve_none = route == ROUTE_SOLVE_NONE
        metrics["self_teacher/frac_solve_none"] = solve_none.float().mean().item()
        if not solve_none.any():
            return None
        cfg = settings.sc_grpo
        pseudo, _ = solve_none_pseudo_advantage(
            fields[SC_DIVERGENCE_KEY], response_mask, np.asarray(list(uids), dtype=object), route,
            fields[SC_REFERENCE_KEY].reshape(-1).bool(), alpha=cfg.solve_none_alpha, epsilon=cfg.epsilon,
            c_min=cfg.c_min, quantile=cfg.quantile,
        )
        pseudo = pseudo.to(advantages).unsqueeze(-1) * response_mask
        return torch.where(solve_none.to(advantages.device).unsqueeze(-1), pseudo, advantages)

    def update_options(self, settings, state: dict) -> dict:
        return dict(state)

    # -- loss ---------------------------------------------------------------------------------------------
    def policy_gradient_weights(self, inputs: LossInputs) -> torch.Tensor:
        """f(D) on rollouts routed to weighting, 1 elsewhere; c from this micro-batch's active tokens
        (``threshold_scope: micro_batch``) or the one c of the whole batch (``batch``)."""
        cfg = inputs.settings.sc_grpo
        if not (inputs.has_field(SC_DIVERGENCE_KEY) and inputs.has_field(SC_ROUTE_KEY)):
            raise KeyError(f"loss_mode 'sc_grpo' needs micro-batch keys {SC_DIVERGENCE_KEY!r} and {SC_ROUTE_KEY!r} "
                           "(teacher step)")
        response_mask = inputs.response_mask
        weighted = (inputs.tensor(SC_ROUTE_KEY).reshape(-1) == ROUTE_WEIGHTED).unsqueeze(-1) & response_mask
        threshold = None
        if cfg.threshold_scope == "batch":
            threshold = inputs.non_tensor(SC_THRESHOLD_KEY)
            if threshold is None:
                raise ValueError(f"self_teacher.sc_grpo.threshold_scope=batch needs {SC_THRESHOLD_KEY!r} in the "
                                 "update options")
        weights, c = sc_weight(inputs.tensor(SC_DIVERGENCE_KEY), weighted, c_min=cfg.c_min, quantile=cfg.quantile,
                               renormalize=cfg.renormalize, threshold=threshold)
        weights = torch.where(weighted, weights, torch.ones_like(weights))
        active = response_mask & (weights != 1.0)
        inputs.metrics["self_teacher/sc_weight_mean"] = (
            weights[active].mean() if active.any() else weights.new_zeros(())).item()
        inputs.metrics["self_teacher/sc_c"] = float(c)
        inputs.metrics["self_teacher/sc_weighted_token_frac"] = (
            active.sum() / response_mask.sum().clamp_min(1)).item()
        return weights
