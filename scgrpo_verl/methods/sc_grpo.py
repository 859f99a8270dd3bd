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
    draw_solve_none_references,
    route_groups,
    sc_weight,
    sc_weight_constant,
    solve_none_pseudo_advantage,
)
from scgrpo_verl.batch_keys import SC_DIVERGENCE_KEY, SC_REFERENCE_KEY, SC_ROUTE_KEY, SC_THRESHOLD_KEY
from scgrpo_verl.errors import ConfigError
from scgrpo_verl.methods.base import LOG_PROB_PASS, LogProbPassResult, LossInputs, SelfTeacherMethod, register_method
from scgrpo_verl.teacher.plans import BatchPlan, Plan, check_references
from scgrpo_verl.teacher.rollouts import choose_sibling
from scgrpo_verl.teacher.templates import sc_grpo_teacher_messages

#: D = KL(q || p): the teacher's distribution against the student's
DIVERGENCE_KIND = "forward_kl"


@register_method("sc_grpo")
class SCGRPO(SelfTeacherMethod):
    options = "sc_grpo"
    adv_estimator = "sc_grpo"
    log_prob_divergence = DIVERGENCE_KIND
    template_fields = ("sc_grpo_default_system", "sc_grpo_guide", "sc_grpo_solve_none_guide")

    def check(self, settings) -> None:
        if not settings.teacher.exclude_self:
            raise ConfigError("self_teacher.teacher.exclude_self: SC-GRPO never conditions a rollout on itself; "
                              "must be true")

    # -- contexts -----------------------------------------------------------------------------------------
    def plan_contexts(self, batch, settings, generator=None, routes=None, references=None) -> BatchPlan:
        """Groups are routed by their number of verified rollouts n_c (:func:`route_groups`). ``2 <= n_c < G``:
        every rollout is conditioned on a verified sibling other than itself. ``n_c = 0`` (solve-none): one
        reference rollout per group is drawn uniformly (or given) and every OTHER rollout is conditioned on the
        reference's (unverified) response; the reference gets no teacher. ``n_c in {1, G}``: no teacher.
        Draws: solve-none references first, then siblings, in the batch's canonical order."""
        self.check(settings)
        teacher = settings.teacher
        n, groups = len(batch), batch.groups
        route_computed, num_correct = route_groups(batch.scores, batch.uids, teacher.success_threshold)
        if routes is None:
            route = route_computed
        else:
            route = torch.as_tensor(routes).reshape(-1).long()
            if route.shape[0] != n:
                raise ValueError(f"routes has {route.shape[0]} entries for {n} rollouts")
        if references is None:
            reference = draw_solve_none_references(route, batch.uids, generator, batch.rollout_index)
        else:
            reference = check_references(references, route, groups)
        route_list, reference_list = route.tolist(), reference.tolist()
        reference_row = {rows[0]: row for rows in groups.values() for row in rows if reference_list[row]}
        plans: list = [None] * n
        for row in batch.canonical_rows:
            kind = route_list[row]
            if kind == ROUTE_WEIGHTED:
                sibling = choose_sibling(batch.siblings(row), teacher.sibling_choice, generator)
                if sibling >= 0:
                    plans[row] = Plan("solution", sibling, solution_template, [sibling])
            elif kind == ROUTE_SOLVE_NONE:
                ref = reference_row[batch.group_of[row][0]]
                if ref != row:
                    plans[row] = Plan("reference", ref, reference_template, [ref])
        return BatchPlan(plans, route=route, reference=reference, num_correct=num_correct)

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


# -- teacher prompts: (student prompt, piece texts, templates) -> teacher messages ------------------------------
def solution_template(prompt, pieces, templates):
    return sc_grpo_teacher_messages(prompt, pieces[0], templates, solve_none=False)


def reference_template(prompt, pieces, templates):
    return sc_grpo_teacher_messages(prompt, pieces[0], templates, solve_none=True)
