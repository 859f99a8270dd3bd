"""OPSD, On-Policy Self-Distillation (arXiv 2601.18734): the same model, with the dataset's verified reference
solution after the question, is the teacher; the student minimises the per-token divergence to it over the
vocabulary on its own rollouts. No reward enters the loss (pure distillation).

The teacher runs in the actor update; by default it holds the initial weights (``teacher.weights: frozen``, the
paper's choice) in the ref engine.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch

from scgrpo_verl.algos.divergence import resolve_kind
from scgrpo_verl.errors import ConfigError
from scgrpo_verl.methods.base import LossInputs, SelfTeacherMethod, register_method
from scgrpo_verl.settings import OPSD_TEACHER_WEIGHTS
from scgrpo_verl.teacher.plans import BatchPlan, privileged_plans, refuse_routes
from scgrpo_verl.teacher.templates import replace_last_user_message


#: which data_prep sets keep a worked solution (said in the errors about a missing one)
REFERENCE_SETS = ("data_prep's gsm8k, math500 and aime2024 write it; dapo_math, aime2025 and amc23 keep only the "
                  "final answer")


@register_method("opsd")
class OPSD(SelfTeacherMethod):
    options = "opsd"
    loss_metric = "distill_loss"

    def check(self, settings) -> None:
        if settings.teacher.weights not in OPSD_TEACHER_WEIGHTS:
            raise ConfigError(f"self_teacher.teacher.weights: OPSD's teacher is {' or '.join(OPSD_TEACHER_WEIGHTS)}, "
                              f"got {settings.teacher.weights!r}")

    # -- contexts -----------------------------------------------------------------------------------------
    def context_fields(self, settings) -> tuple[str, ...]:
        return ("extra_info",)

    def privileged_text(self, settings, row: dict) -> Optional[str]:
        """The row's reference solution, ``extra_info[opsd.reference_key]`` (``None`` when the row has none)."""
        value = dict(row.get("extra_info") or {}).get(settings.opsd.reference_key)
        return None if value is None or not str(value).strip() else str(value)

    def required_extra_info(self, settings) -> dict[str, tuple[str, str]]:
        return {settings.opsd.reference_key: ("self_teacher.opsd.reference_key", REFERENCE_SETS)}

    def plan_contexts(self, batch, settings, generator=None, routes=None, references=None) -> BatchPlan:
        """Every rollout whose row has a reference solution gets the reference-conditioned teacher; a row without
        one gets no teacher (counted in ``self_teacher/frac_rollouts_with_teacher``)."""
        refuse_routes(self.name, routes, references)
        if all(rollout.privileged is None for rollout in batch.rollouts):
            key = settings.opsd.reference_key
            raise ConfigError(f"self_teacher.opsd.reference_key: no row of this batch has extra_info[{key!r}], the "
                              f"worked reference solution OPSD's teacher reads ({REFERENCE_SETS})")
        return privileged_plans(batch, "reference", partial(reference_template, template=settings.opsd.template))

    # -- loss ---------------------------------------------------------------------------------------------
    def loss(self, inputs: LossInputs, pg_loss: torch.Tensor) -> torch.Tensor:
        """sum_t c_t D_t over the tokens with a teacher (c_t: verl's aggregation weights), D the per-token
        divergence of ``opsd.divergence`` between the reference-conditioned teacher q and the student p (OPSD,
        arXiv 2601.18734 Eq. 6-8); the policy-gradient term is not used."""
        cfg = inputs.settings.opsd
        teacher = inputs.require_teacher(self.name)
        kind, alpha = resolve_kind(cfg.divergence, cfg.beta if cfg.divergence == "jsd" else None)
        coefficients = inputs.token_weights(inputs.response_mask) * inputs.teacher_rows()
        topk = cfg.topk if cfg.distillation == "topk" else None
        distill_loss, _ = teacher.divergence(coefficients, kind, alpha, topk=topk)
        inputs.log_metric(f"self_teacher/{self.loss_metric}", distill_loss.detach())
        # 0 * the surrogate keeps verl's own logits in the backward graph, as SDPO's lambda = 0 does: FSDP2's
        # post-backward hooks must fire for every module call of the forward (dropping them crashed the backward)
        return distill_loss + 0.0 * pg_loss


def reference_template(prompt, pieces, templates, template: str):
    """(student prompt, piece texts, templates) -> teacher messages: the last user message becomes ``template``
    with the question as ``{prompt}`` and the reference solution as ``{reference}``."""
    return replace_last_user_message(prompt, lambda question: template.format(prompt=question, reference=pieces[0]))
