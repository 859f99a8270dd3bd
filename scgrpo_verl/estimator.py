"""The ``sc_grpo`` advantage estimator registered with verl (glue over ``algos.sc_grpo``)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, register_adv_est

from scgrpo_verl.algos.sc_grpo import ROUTE_SOLVE_NONE, route_groups, solve_none_pseudo_advantage
from scgrpo_verl.config import SelfTeacherConfig


@register_adv_est("sc_grpo")
def compute_sc_grpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    config=None,
    sc_divergence: Optional[torch.Tensor] = None,
    sc_reference: Optional[torch.Tensor] = None,
    **unused,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SC-GRPO advantages: GRPO's z-score, with solve-none groups replaced by pseudo-advantages.

    Without ``sc_divergence`` (verl's stock call passes only rewards, mask, uids and the ``algorithm``
    config) this is exactly verl's ``grpo``. The trainer's advantage step passes
    ``sc_divergence`` (B, T), D against the reference-conditioned teacher, and ``sc_reference`` (B,)
    bool, the drawn reference rollout of every solve-none group (ALGORITHMS.md section 1).
    Token weights f(D) of the weighted groups are applied in the loss, per micro-batch.
    """
    if config is not None:
        norm_adv_by_std_in_grpo = config.get("norm_adv_by_std_in_grpo", norm_adv_by_std_in_grpo)
    advantages, returns = compute_grpo_outcome_advantage(
        token_level_rewards=token_level_rewards,
        response_mask=response_mask,
        index=index,
        epsilon=epsilon,
        norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
        config=config,
    )
    if sc_divergence is None:
        return advantages, returns
    if sc_reference is None:
        raise ValueError("sc_grpo: sc_divergence was given without sc_reference (the solve-none reference draw)")
    settings = SelfTeacherConfig.from_mapping(None if config is None else config.get("self_teacher"))
    route, _ = route_groups(token_level_rewards.sum(-1), index, settings.teacher.success_threshold)
    pseudo, _ = solve_none_pseudo_advantage(
        sc_divergence,
        response_mask,
        index,
        route,
        sc_reference,
        alpha=settings.sc_grpo.solve_none_alpha,
        epsilon=settings.sc_grpo.epsilon,
        c_min=settings.sc_grpo.c_min,
        quantile=settings.sc_grpo.quantile,
    )
    solve_none = (route == ROUTE_SOLVE_NONE).to(advantages.device).unsqueeze(-1)
    advantages = torch.where(solve_none, pseudo.to(advantages).unsqueeze(-1) * response_mask, advantages)
    return advantages, advantages
