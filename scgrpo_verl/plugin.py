"""Entry point loaded by ``import verl`` (group ``verl.plugins``) in every process: registers everything.

verl swallows plugin import errors at DEBUG level, so a failure here is logged at WARNING with its
cause before it propagates.

It also adds the plugin's start-up checks (:mod:`scgrpo_verl.startup_checks`: data files, data_source vs reward
function, rollout name, GPUs) to verl's ``validate_config``, which ``main_ppo`` calls in the driver before
``ray.init``, for configs that carry the plugin's ``self_teacher`` section; stock verl configs are left alone.
"""

import functools
import logging
import sys

logger = logging.getLogger("scgrpo_verl")

GLUE_MODULES = ("scgrpo_verl.estimator", "scgrpo_verl.losses", "scgrpo_verl.trainer")


def _initialising(name: str) -> bool:
    """``name`` is being imported right now (its import imported verl, which loaded this plugin): its decorators
    register it when its import finishes, so it must not be imported (or checked) from here."""
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    return module is not None and bool(getattr(spec, "_initializing", False))


def register() -> None:
    """Import the glue modules whose decorators fill verl's registries, then check the registries."""
    import importlib

    ready = {name: not _initialising(name) for name in GLUE_MODULES}
    for name, ok in ready.items():
        if ok:
            importlib.import_module(name)  # registers the methods' estimators / loss modes / the trainer mode
    from scgrpo_verl.methods import method_estimators, method_names
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn, get_policy_loss_fn
    from verl.trainer.ppo.v1.trainer_base import get_trainer_cls

    if ready["scgrpo_verl.estimator"]:
        sys.modules["scgrpo_verl.estimator"].register_estimators()  # methods registered after its import, too
        for name in method_estimators():
            get_adv_estimator_fn(name)
    if ready["scgrpo_verl.losses"]:
        sys.modules["scgrpo_verl.losses"].register_loss_modes()
        for name in method_names():
            get_policy_loss_fn(name)
    if ready["scgrpo_verl.trainer"]:
        get_trainer_cls(sys.modules["scgrpo_verl.trainer"].TRAINER_MODE)
    install_startup_checks()


def install_startup_checks() -> None:
    """Wrap ``verl.utils.config.validate_config`` so that ``main_ppo``'s driver runs the start-up checks for plugin
    configs (``self_teacher`` in the config) before ``ray.init``. The original stays reachable as ``__wrapped__``."""
    import verl.utils.config as verl_config

    original = verl_config.validate_config
    if getattr(original, "_scgrpo_startup_checks", False):
        return

    @functools.wraps(original)
    def validate_config(config, *args, **kwargs):
        result = original(config, *args, **kwargs)
        if "self_teacher" in config:
            from scgrpo_verl.startup_checks import run_startup_checks

            run_startup_checks(config)
        return result

    validate_config._scgrpo_startup_checks = True
    verl_config.validate_config = validate_config


try:
    from scgrpo_verl.cpu_backend import maybe_activate

    maybe_activate()  # the CPU debugging backend, only when SCGRPO_VERL_CPU_BACKEND=1 (before verl's engines import)
    register()
except Exception as error:
    logger.warning("scgrpo_verl: registering with verl failed: %r", error, exc_info=True)
    raise
