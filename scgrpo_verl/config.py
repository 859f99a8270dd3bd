"""The verl side of the plugin's configuration: verl's ``PolicyLossConfig`` plus the ``self_teacher`` section (glue).

The options themselves are the plain dataclasses of :mod:`scgrpo_verl.settings`. verl sees
the one ``self_teacher`` section in two places, both interpolated from it:

- ``actor_rollout_ref.actor.policy_loss`` becomes :class:`SelfTeacherPolicyLossConfig` (its ``_target_``), so
  verl's own ``validate_config`` builds and checks it at start-up, and the actor's loss reads
  ``config.policy_loss.self_teacher``;
- ``algorithm.self_teacher`` reaches the advantage step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from scgrpo_verl.methods import METHOD_REGISTRY, get_method, is_method
from scgrpo_verl.settings import SelfTeacherConfig


def check_method_pairing(loss_mode: str, adv_estimator: Optional[str]) -> None:
    """A method that needs its own advantage estimator (SC-GRPO) gets it, and such an estimator is used by its
    method only (a one-line ``ValueError`` naming ``algorithm.adv_estimator`` otherwise)."""
    if adv_estimator is None:
        return
    claimed = {m.adv_estimator: m.name for m in METHOD_REGISTRY.values() if m.adv_estimator}
    needed = get_method(loss_mode).adv_estimator if is_method(loss_mode) else None
    owner = claimed.get(adv_estimator)
    if (needed is not None and adv_estimator != needed) or (owner is not None and owner != loss_mode):
        name = needed or adv_estimator
        raise ValueError(
            f"algorithm.adv_estimator and actor_rollout_ref.actor.policy_loss.loss_mode must both be {name!r} for "
            f"{claimed.get(name, name)} (got estimator {adv_estimator!r}, loss {loss_mode!r})"
        )


def _policy_loss_base():
    from verl.workers.config import PolicyLossConfig

    return PolicyLossConfig


@dataclass
class SelfTeacherPolicyLossConfig(_policy_loss_base()):
    """verl's PolicyLossConfig plus the plugin section, validated when verl builds the actor config.

    ``adv_estimator`` is interpolated from ``algorithm.adv_estimator`` so the pairing of estimator and
    loss is checked at start-up (verl itself only looks the estimator up at the first advantage step).
    """

    self_teacher: Any = None
    adv_estimator: Optional[str] = None

    def __post_init__(self):
        from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, POLICY_LOSS_REGISTRY

        object.__setattr__(self, "self_teacher", SelfTeacherConfig.from_mapping(self.self_teacher))
        if self.loss_mode not in POLICY_LOSS_REGISTRY or (
            self.adv_estimator is not None and self.adv_estimator not in ADV_ESTIMATOR_REGISTRY
        ):  # the plugin's registration may have been skipped (verl loads plugins once, swallowing errors)
            from scgrpo_verl.plugin import register

            register()
        if self.loss_mode not in POLICY_LOSS_REGISTRY:
            raise ValueError(
                f"actor_rollout_ref.actor.policy_loss.loss_mode: unknown loss {self.loss_mode!r}; "
                f"registered: {sorted(POLICY_LOSS_REGISTRY)}"
            )
        if self.adv_estimator is not None and self.adv_estimator not in ADV_ESTIMATOR_REGISTRY:
            raise ValueError(
                f"algorithm.adv_estimator: unknown estimator {self.adv_estimator!r}; "
                f"registered: {sorted(ADV_ESTIMATOR_REGISTRY)}"
            )
        check_method_pairing(self.loss_mode, self.adv_estimator)
        if is_method(self.loss_mode):
            if not self.self_teacher.enable:
                raise ValueError(f"self_teacher.enable: loss_mode {self.loss_mode!r} needs the self-teacher; "
                                 "set self_teacher.enable=true")
            get_method(self.loss_mode).check(self.self_teacher)
