"""Compose and validate the shipped configs the way ``python -m verl.trainer.main_ppo`` does.

Both functions raise :class:`scgrpo_verl.errors.ConfigError` (a ``ValueError``) with one line naming the key, the
override or the config name, so the CLI can print it without a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from omegaconf import DictConfig

from scgrpo_verl.errors import ConfigError, config_error_message, innermost, one_line

METHOD_CONFIGS = ("grpo", "dapo", "sc_grpo", "sdpo", "sdpg", "opsd")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def available_configs() -> list[str]:
    """Names ``--config-name`` offers: the method configs and the paper recipes -- every YAML under
    ``scgrpo_verl/configs`` with a ``defaults`` list, except the method bodies ``methods/*`` (included by the
    configs, not launched on their own) and the fragments (``self_teacher_defaults``, ``setup_*``, ``recipes/_*``)."""
    names = []
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        name = path.relative_to(CONFIG_DIR).with_suffix("").as_posix()
        if path.stem == "self_teacher_defaults" or path.stem.startswith("_") or name.startswith("methods/"):
            continue
        text = path.read_text(encoding="utf-8")
        if any(line.startswith("defaults:") for line in text.splitlines()):
            names.append(name)
    return names


def nearest(word: str, choices) -> Optional[str]:
    """The choice closest to a mistyped ``word`` (difflib's ratio >= 0.6), or None."""
    import difflib

    found = difflib.get_close_matches(word, [str(c) for c in choices], n=5, cutoff=0.6)
    if not found:
        return None
    best = difflib.SequenceMatcher(None, word, found[0]).ratio()
    tied = [c for c in found if difflib.SequenceMatcher(None, word, c).ratio() == best]
    return next((c for c in tied if sorted(c) == sorted(word)), tied[0])  # a transposition wins a tie


def _did_you_mean(config_name: str, error: BaseException) -> str:
    """`` (did you mean <key>?)`` for an override of a key that the config lacks (``Key 'beta_bas' is not in
    struct``): the nearest key of the same section in the config composed without overrides; else ''."""
    from hydra import compose

    root = innermost(error)
    full_key = getattr(root, "full_key", None) or getattr(error, "full_key", None)
    if "not in struct" not in str(root) or not full_key:
        return ""
    parent, _, leaf = str(full_key).rpartition(".")
    try:
        section = compose(config_name=config_name)
        for part in parent.split(".") if parent else ():
            section = section[part]
    except Exception:  # noqa: BLE001 - a suggestion is optional
        return ""
    guess = nearest(leaf, section.keys()) if isinstance(section, DictConfig) else None
    return f" (did you mean {parent + '.' if parent else ''}{guess}?)" if guess else ""


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
            if config_name not in known and not (CONFIG_DIR / f"{config_name}.yaml").is_file():
                guess = nearest(config_name, known)
                raise ConfigError(f"--config-name {config_name!r}: no such config; "
                                  + (f"did you mean {guess}? " if guess else "")
                                  + f"valid names: {', '.join(known)}") from error
            raise ConfigError(config_error_message(error)) from error
        except OverrideParseException as error:  # "Error parsing override '<it>'" + the grammar's complaint
            raise ConfigError(f"override {getattr(error, 'override', '?')!r}: {one_line(str(error))}") from error
        except (HydraException, OmegaConfBaseException, ValueError) as error:
            raise ConfigError(f"{config_error_message(error)}{_did_you_mean(config_name, error)} "
                              f"(config {config_name!r})") from error


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
