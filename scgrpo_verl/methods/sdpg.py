"""SDPG (arXiv 2606.04036; ALGORITHMS.md section 3): GRPO + beta(k) * L_OPD + alpha * L_K, where L_OPD is the
advantage-gated, full-vocabulary reverse KL(p || q) to the self-teacher conditioned on the dataset's privileged
context, and L_K the exact reference KL (URKL / UFKL).

The teacher runs in the actor update.
"""

from __future__ import annotations

from typing import Optional

import torch

from scgrpo_verl.algos.sdpg import REFERENCE_KL_TERMS, opd_gate, sdpg_beta
from scgrpo_verl.batch_keys import GLOBAL_STEPS_KEY
from scgrpo_verl.methods.base import LossInputs, SelfTeacherMethod, register_method
from scgrpo_verl.teacher.plans import BatchPlan, privileged_plans, refuse_routes
from scgrpo_verl.teacher.templates import sdpg_teacher_messages

#: L_OPD = KL(p || q): the student's distribution against the teacher's
DIVERGENCE_KIND = "reverse_kl"


@register_method("sdpg")
class SDPG(SelfTeacherMethod):
    options = "sdpg"
    template_fields = ("sdpg_privileged",)
    loss_metric = "opd_loss"

    def context_fields(self, settings) -> tuple[str, ...]:
        return ("reward_model",) if settings.teacher.use_privileged_context else ()

    def privileged_text(self, settings, row: dict) -> Optional[str]:
        """The row's reference answer (``reward_model.ground_truth``) when ``teacher.use_privileged_context``."""
        if not settings.teacher.use_privileged_context:
            return None
        return str(dict(row.get("reward_model") or {}).get("ground_truth", ""))

    def plan_contexts(self, batch, settings, generator=None, routes=None, references=None) -> BatchPlan:
        """The rollout's privileged text (dataset hint / reference answer) when ``use_privileged_context``; none:
        no teacher."""
        refuse_routes(self.name, routes, references)
        if not settings.teacher.use_privileged_context:
            return BatchPlan([None] * len(batch))
        return privileged_plans(batch, "privileged", hint_template)

    def loss(self, inputs: LossInputs, pg_loss: torch.Tensor) -> torch.Tensor:
        cfg = inputs.settings.sdpg
        if inputs.global_steps is None:
            raise ValueError(f"loss_mode 'sdpg' needs the training step: put {GLOBAL_STEPS_KEY!r} in the batch "
                             "extra_info")
        beta = sdpg_beta(int(inputs.global_steps), cfg.beta_base, cfg.warmup_steps, cfg.decay_steps, cfg.total_steps)
        inputs.metrics["self_teacher/sdpg_beta"] = beta
        if beta <= 0:
            return pg_loss
        teacher = inputs.require_teacher(self.name)
        gate = opd_gate(inputs.advantages).float() * inputs.teacher_rows()
        coefficients = inputs.token_weights(inputs.response_mask) * gate
        opd_loss, _ = teacher.divergence(coefficients, DIVERGENCE_KIND, clamp=cfg.opd_clamp)
        inputs.log_metric(f"self_teacher/{self.loss_metric}", opd_loss.detach())
        return pg_loss + beta * opd_loss

    def reference_kl(self, inputs: LossInputs, ref_log_prob: torch.Tensor) -> torch.Tensor:
        """SDPG's exact per-token reference KL (``sdpg.ref_kl``) in place of verl's estimator."""
        return REFERENCE_KL_TERMS[inputs.settings.sdpg.ref_kl](inputs.log_prob, ref_log_prob)


def hint_template(prompt, pieces, templates):
    """(student prompt, piece texts, templates) -> teacher messages: the question plus the hint section."""
    return sdpg_teacher_messages(prompt, pieces[0], templates)
