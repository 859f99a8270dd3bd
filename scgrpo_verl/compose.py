"""Compose and validate the shipped configs the way ``python -m verl.trainer.main_ppo`` does.

Both functions raise :class:`scgrpo_verl.errors.ConfigError` (a ``ValueError``) with one line naming the key, the
override or the config name, so the CLI can print it without a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from omegaconf import DictConfig

from scgrpo_verl.errors import ConfigError, config_error_message, one_line

METHOD_CONFIGS = ("grpo", "dapo", "sc_grpo", "sdpo", "sdpg")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def available_configs() -> list[str]:
    """Names ``--config-name`` accepts: every YAML under ``scgrpo_verl/configs`` with a ``defaults`` list (the
    fragments ``self_teacher_defaults`` / ``setup_*`` are merged into those, not composed on their own)."""
    names = []
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        name = path.relative_to(CONFIG_DIR).with_suffix("").as_posix()
        if path.stem == "self_teacher_defaults":
            continue
        text = path.read_text(encoding="utf-8")
        if any(line.startswith("defaults:") for line in text.splitlines()):
            names.append(name)
    return names


def compose_config(config_name: str, overrides: Optional[Sequence[str]] = None) -> DictConfig:
    """Compose ``scgrpo_verl/configs/<config_name>.yaml`` on verl's ``ppo_trainer`` with Hydra."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="scgrpo_verl.configs", version_base=None):
        try:
            return compose(config_name=config_name, overrides=list(overrides or []))
        except MissingConfigException as error:
            known = available_configs()
            if config_name not in known:
                raise ConfigError(f"--config-name {config_name!r}: no such config; valid names: "
                                  f"{', '.join(known)}") from error
            raise ConfigError(config_error_message(error)) from error
        except OverrideParseException as error:  # "Error parsing override '<it>'" + the grammar's complaint
            raise ConfigError(f"override {getattr(error, 'override', '?')!r}: {one_line(str(error))}") from error
        except (HydraException, OmegaConfBaseException, ValueError) as error:
            raise ConfigError(f"{config_error_message(error)} (config {config_name!r})") from error


def validate(config: DictConfig):
    """Run verl's own start-up validation (which also builds and checks the plugin section).

    Returns the actor config dataclass verl builds from the composed YAML. verl's ``validate_config`` is called
    unwrapped: the plugin's start-up checks (data files, rollout, GPUs; :mod:`scgrpo_verl.startup_checks`) that
    ``scgrpo_verl.plugin`` adds to it for ``main_ppo`` are the caller's choice here (``check`` runs them,
    ``dry-run`` does not need data files).
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    import contextlib
    import io

    validate_config = getattr(validate_config, "__wrapped__", validate_config)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):  # verl prints a success banner; anything else it prints is kept
            validate_config(config=config, use_reference_policy=need_reference_policy(config),
                            use_critic=need_critic(config))
        return omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    except ConfigError:
        raise
    except (HydraException, OmegaConfBaseException, ValueError, TypeError, AssertionError, KeyError) as error:
        raise ConfigError(config_error_message(error)) from error
    finally:
        for line in printed.getvalue().splitlines():
            if "All configuration checks passed" not in line:
                print(line)
