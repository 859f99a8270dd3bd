"""SDPO (arXiv 2601.20802; ALGORITHMS.md section 2): the self-teacher conditioned on a verified sibling and / or the
environment's feedback is distilled into the policy, lambda * PG + (1 - lambda) * distillation.

The teacher runs in the actor update (when lambda < 1).
"""

from __future__ import annotations

from typing import Optional

import torch

from scgrpo_verl.algos.sdpo import sampled_token_distillation_loss, sdpo_importance_weight
from scgrpo_verl.batch_keys import TEACHER_ROWS_KEY, TEACHER_TOKENS_KEY
from scgrpo_verl.methods.base import UPDATE_PASS, LossInputs, SelfTeacherMethod, register_method
from scgrpo_verl.teacher.plans import BatchPlan, Plan, refuse_routes
from scgrpo_verl.teacher.rollouts import choose_sibling
from scgrpo_verl.teacher.templates import sdpo_teacher_messages

#: SDPO's divergence is the generalized JSD with ``sdpo.alpha`` (0 forward KL, 1 reverse KL)
DIVERGENCE_KIND = "jsd"


@register_method("sdpo")
class SDPO(SelfTeacherMethod):
    options = "sdpo"
    template_fields = ("sdpo_reprompt", "sdpo_solution", "sdpo_feedback")
    loss_metric = "distill_loss"

    def plan_contexts(self, batch, settings, generator=None, routes=None, references=None) -> BatchPlan:
        """A verified sibling other than the rollout itself and / or the rollout's own feedback (when
        ``use_feedback``; by default only without a sibling). Neither: no teacher. Groups where every rollout
        succeeded still get a teacher (each from another success)."""
        refuse_routes(self.name, routes, references)
        teacher = settings.teacher
        plans: list = [None] * len(batch)
        for row in batch.canonical_rows:
            rollout = batch.rollouts[row]
            sibling = choose_sibling(batch.siblings(row), teacher.sibling_choice, generator)
            use_feedback = (
                teacher.use_feedback
                and rollout.feedback.strip() != ""
                and (sibling < 0 or not teacher.feedback_only_without_solution)
            )
            if sibling >= 0 and use_feedback:
                plans[row] = Plan("solution+feedback", sibling, solution_feedback_template, [sibling, rollout.feedback])
            elif sibling >= 0:
                plans[row] = Plan("solution", sibling, solution_template, [sibling])
            elif use_feedback:
                plans[row] = Plan("feedback", -1, feedback_template, [rollout.feedback])
        return BatchPlan(plans)

    def teacher_pass(self, settings) -> Optional[str]:
        return UPDATE_PASS if settings.sdpo.pg_coef < 1.0 else None

    def loss(self, inputs: LossInputs, pg_loss: torch.Tensor) -> torch.Tensor:
        cfg = inputs.settings.sdpo
        if cfg.pg_coef >= 1.0:
            return pg_loss
        teacher = inputs.require_teacher(self.name)
        mask, info = inputs.response_mask, {}
        if cfg.normalize == "teacher_tokens":  # the authors' scaling: over the tokens that have a teacher
            mask = mask & (inputs.teacher_rows() > 0)
            info = teacher_token_counts(inputs)
        weight = sdpo_importance_weight(inputs.log_prob, inputs.old_log_prob, cfg.is_clip, inputs.rollout_is_weights)
        weight = weight * inputs.teacher_rows()
        if cfg.distillation == "sampled_token":
            teacher_log_prob = teacher.sampled_token_log_probs(inputs.tensor("responses").long())
            per_token = sampled_token_distillation_loss(inputs.log_prob, teacher_log_prob) * weight
            distill_loss = inputs.aggregate(per_token, mask, **info)
        else:
            coefficients = inputs.token_weights(mask, **info) * weight
            topk = cfg.topk if cfg.distillation == "topk" else None
            distill_loss, _ = teacher.divergence(coefficients, DIVERGENCE_KIND, cfg.alpha, topk=topk,
                                                 add_tail=cfg.add_tail)
        inputs.log_metric(f"self_teacher/{self.loss_metric}", distill_loss.detach())
        return cfg.pg_coef * pg_loss + (1.0 - cfg.pg_coef) * distill_loss


# -- teacher prompts: (student prompt, piece texts, templates) -> teacher messages ------------------------------
def solution_feedback_template(prompt, pieces, templates):
    return sdpo_teacher_messages(prompt, pieces[0], pieces[-1], templates)


def solution_template(prompt, pieces, templates):
    return sdpo_teacher_messages(prompt, pieces[0], None, templates)


def feedback_template(prompt, pieces, templates):
    return sdpo_teacher_messages(prompt, None, pieces[-1], templates)


def teacher_token_counts(inputs: LossInputs) -> dict:
    """Global counts of the tokens / rows that have a teacher (summed over data-parallel ranks by the worker), as
    verl's ``batch_num_tokens`` / ``global_batch_size``."""
    tokens, rows = inputs.non_tensor(TEACHER_TOKENS_KEY), inputs.non_tensor(TEACHER_ROWS_KEY)
    if tokens is None or rows is None:
        raise ValueError(
            f"self_teacher.sdpo.normalize=teacher_tokens needs {TEACHER_TOKENS_KEY!r} / {TEACHER_ROWS_KEY!r} in the "
            "micro-batch (counted over the global mini-batch by SelfTeacherWorker)"
        )
    return {"batch_num_tokens": max(int(tokens), 1), "global_batch_size": max(int(rows), 1)}
