"""``scgrpo-verl``: command-line checks of the plugin's configs on any machine (no GPU needed)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict


def _check(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from scgrpo_verl.compose import compose_config, validate

    config = compose_config(args.config_name, args.overrides)
    actor = validate(config)
    print(f"config {args.config_name!r}: composed on verl's ppo_trainer and passed verl's validate_config")
    print(f"  algorithm.adv_estimator = {config.algorithm.adv_estimator}")
    print(f"  actor.policy_loss.loss_mode = {actor.policy_loss.loss_mode}")
    self_teacher = getattr(actor.policy_loss, "self_teacher", None)
    if self_teacher is not None:
        print("  self_teacher =")
        print("    " + OmegaConf.to_yaml(OmegaConf.create(asdict(self_teacher))).replace("\n", "\n    ").rstrip())
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scgrpo-verl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="compose a shipped config and run verl's and the plugin's validation")
    check.add_argument("--config-name", required=True, help="grpo | dapo | sc_grpo | sdpo | sdpg")
    check.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. self_teacher.sdpo.alpha=1.0")
    check.set_defaults(func=_check)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
