"""Compose and validate the shipped configs the way ``python -m verl.trainer.main_ppo`` does."""

from __future__ import annotations

from typing import Optional, Sequence

from omegaconf import DictConfig

METHOD_CONFIGS = ("grpo", "dapo", "sc_grpo", "sdpo", "sdpg")


def compose_config(config_name: str, overrides: Optional[Sequence[str]] = None) -> DictConfig:
    """Compose ``scgrpo_verl/configs/<config_name>.yaml`` on verl's ``ppo_trainer`` with Hydra."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="scgrpo_verl.configs", version_base=None):
        return compose(config_name=config_name, overrides=list(overrides or []))


def validate(config: DictConfig):
    """Run verl's own start-up validation (which also builds and checks the plugin section).

    Returns the actor config dataclass verl builds from the composed YAML.
    """
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    return omega_conf_to_dataclass(config.actor_rollout_ref.actor)
