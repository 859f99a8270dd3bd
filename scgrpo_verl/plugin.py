"""Entry point loaded by ``import verl`` (group ``verl.plugins``) in every process: registers everything.

verl swallows plugin import errors at DEBUG level, so a failure here is logged at WARNING with its
cause before it propagates.
"""

import logging

logger = logging.getLogger("scgrpo_verl")

ADV_ESTIMATORS = ("sc_grpo",)


def register() -> None:
    """Import the glue modules whose decorators fill verl's registries, then check the registries."""
    import scgrpo_verl.estimator  # noqa: F401  (registers the sc_grpo estimator)
    import scgrpo_verl.losses  # noqa: F401  (registers the sc_grpo / sdpo / sdpg loss modes)
    import scgrpo_verl.trainer  # noqa: F401  (registers trainer.v1.trainer_mode=self_teacher)
    from scgrpo_verl.config import PLUGIN_LOSS_MODES
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn, get_policy_loss_fn
    from verl.trainer.ppo.v1.trainer_base import get_trainer_cls

    for name in ADV_ESTIMATORS:
        get_adv_estimator_fn(name)
    for name in PLUGIN_LOSS_MODES:
        get_policy_loss_fn(name)
    get_trainer_cls(scgrpo_verl.trainer.TRAINER_MODE)


try:
    from scgrpo_verl.cpu_backend import maybe_activate

    maybe_activate()  # the CPU debugging backend, only when SCGRPO_VERL_CPU_BACKEND=1 (before verl's engines import)
    register()
except Exception as error:
    logger.warning("scgrpo_verl: registering with verl failed: %r", error, exc_info=True)
    raise
