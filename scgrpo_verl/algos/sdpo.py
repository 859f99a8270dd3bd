"""SDPO (arXiv 2601.20802): self-distillation per-token terms (plain torch).

The feedback- or solution-conditioned self-teacher q is distilled into the student p. The per-token
divergence comes from :mod:`scgrpo_verl.algos.divergence` and its chunked kernel
:mod:`scgrpo_verl.algos.fused_divergence` (full vocabulary or top-k + tail); this
module adds the sampled-token form and SDPO's clipped importance weight.
"""

from __future__ import annotations

from typing import Optional

import torch


def sampled_token_distillation_loss(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """SDPO sampled-token loss (alpha = 1): sg(log p(y_t) - log q(y_t)) * log p(y_t), (B, T) -> (B, T).

    Its gradient is the single-sample REINFORCE gradient of KL(p || q) on the sampled token.
    """
    advantage = (student_log_probs - teacher_log_probs).detach().float()
    return advantage * student_log_probs.float()


def sdpo_importance_weight(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    is_clip: Optional[float] = 2.0,
    rollout_is_weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """SDPO's detached per-token weight sg(min(pi_theta / pi_old, is_clip)) (ALGORITHMS.md section 2).

    Args:
        log_prob, old_log_prob: (B, T) log-probs of the sampled tokens under pi_theta and pi_old.
        is_clip: upper clip of the ratio; None disables the importance weight (returns ones).
        rollout_is_weights: (B, T) rollout-correction weights, multiplied in when given.
    """
    if is_clip is None:
        weight = torch.ones_like(log_prob, dtype=torch.float32)
    else:
        log_ratio = (log_prob.detach().float() - old_log_prob.detach().float()).clamp(max=20.0)
        weight = torch.exp(log_ratio).clamp(max=is_clip)
    if rollout_is_weights is not None:
        weight = weight * rollout_is_weights.detach().float()
    return weight
