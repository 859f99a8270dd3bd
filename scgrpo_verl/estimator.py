"""The advantage estimators the methods name (``SelfTeacherMethod.adv_estimator``), registered with verl (glue).

SC-GRPO's ``sc_grpo`` estimator is GRPO's z-score: verl calls it with the rewards, the mask, the uids and the
``algorithm`` config only. The solve-none pseudo-advantages need D from the teacher's log-prob pass; the trainer
step applies them right after the estimator (:func:`scgrpo_verl.step.adjust_advantages`, the method's
``adjust_advantages``), in the trainer and in the dry-run alike.
"""

from __future__ import annotations

import torch

from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, register_adv_est

from scgrpo_verl.methods import method_estimators


def grpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    config=None,
    **unused,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO's outcome advantages (verl's ``compute_grpo_outcome_advantage``), reading ``norm_adv_by_std_in_grpo``
    from the ``algorithm`` config as verl's ``grpo`` does."""
    if config is not None:
        norm_adv_by_std_in_grpo = config.get("norm_adv_by_std_in_grpo", norm_adv_by_std_in_grpo)
    return compute_grpo_outcome_advantage(token_level_rewards, response_mask, index, epsilon,
                                          norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo, config=config)


def register_estimators() -> None:
    """Register the estimators the methods name (again for methods registered since) as GRPO's."""
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

    for name in method_estimators():
        if name not in ADV_ESTIMATOR_REGISTRY:
            register_adv_est(name)(grpo_outcome_advantage)


register_estimators()
