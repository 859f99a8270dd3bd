"""``scgrpo-verl``: the plugin's command line (no GPU needed).

- ``check``: compose a shipped config and run verl's and the plugin's validation;
- ``dry-run``: one self-teacher step on a synthetic batch, stage by stage (:mod:`scgrpo_verl.dry_run`);
- ``cpu-run``: a few real ``main_ppo`` steps on the CPU debugging backend (:mod:`scgrpo_verl.cpu_backend`);
- ``explain``: an HTML page of a rollout's tokens shaded by D and f(D) (:mod:`scgrpo_verl.explain`);
- ``sandbox``: which isolation the code sandbox gets on this host, and why (:func:`scgrpo_verl.rewards.sandbox.diagnose`).
"""

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


def _dry_run(args: argparse.Namespace) -> int:
    from scgrpo_verl.dry_run import main

    return main(args)


def _cpu_run(argv: list) -> int:
    from scgrpo_verl.cpu_backend.run import main

    return main(argv)


def _explain(args: argparse.Namespace) -> int:
    from scgrpo_verl.explain import explain

    def text(value: str) -> str:
        if value.startswith("@"):
            with open(value[1:], encoding="utf-8") as handle:
                return handle.read()
        return value

    credit = explain(args.model_path, text(args.prompt), text(args.rollout), text(args.solution), args.out,
                     system=args.system)
    print(f"wrote {args.out}: {len(credit.tokens)} tokens, c={credit.c:.4g}, "
          f"mean f(D)={sum(credit.weights) / max(len(credit.weights), 1):.3f}")
    return 0


def _sandbox(args: argparse.Namespace) -> int:
    """Diagnostics as JSON on stdout; a summary on stderr; exit 1 when code rewards would refuse to run."""
    import json

    from scgrpo_verl.rewards.sandbox import diagnose

    info = diagnose()
    print(json.dumps(info, indent=2, default=str))
    mode = info["selected"]
    if mode is None:
        print(f"code sandbox: none -- {info['refusal']}", file=sys.stderr)
        return 1
    held = [k for k, v in info["invariants"].items() if v]
    print(f"code sandbox: {mode}; invariants held: {', '.join(held) or 'none'}"
          + (f"; NOT held: {'; '.join(info['not_held'])}" if info["not_held"] else "")
          + (f"; bwrap not used: {info['why_not_stronger']['bwrap']}" if "why_not_stronger" in info else ""),
          file=sys.stderr)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scgrpo-verl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="compose a shipped config and run verl's and the plugin's validation")
    check.add_argument("--config-name", required=True, help="grpo | dapo | sc_grpo | sdpo | sdpg")
    check.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. self_teacher.sdpo.alpha=1.0")
    check.set_defaults(func=_check)

    dry = commands.add_parser("dry-run", help="one self-teacher step of a config on a synthetic batch (CPU)")
    dry.add_argument("--config-name", required=True, help="grpo | dapo | sc_grpo | sdpo | sdpg")
    dry.add_argument("--groups", type=int, default=3, help="rollout groups (patterns: mixed, all wrong, all right)")
    dry.add_argument("--group-size", type=int, default=None, help="rollouts per group (default min(rollout.n, 4))")
    dry.add_argument("--max-new-tokens", type=int, default=24)
    dry.add_argument("--seed", type=int, default=0)
    dry.add_argument("--workdir", default=None, help="where the tiny model is built (default: a temp folder)")
    dry.add_argument("--json", default=None, help="also write the report as JSON here")
    dry.add_argument("overrides", nargs="*", help="Hydra overrides; model.path=DIR runs a local checkpoint")
    dry.set_defaults(func=_dry_run)

    # parsed by scgrpo_verl.cpu_backend.run (argparse's REMAINDER would not pass leading options through)
    commands.add_parser("cpu-run", add_help=False,
                        help="real main_ppo steps on the CPU debugging backend (cpu-run --help for options)")

    page = commands.add_parser("explain", help="write an HTML token-credit page (D and f(D) per token)")
    page.add_argument("--model-path", required=True, help="local Hugging Face checkpoint folder")
    page.add_argument("--prompt", required=True, help="the question (or @file)")
    page.add_argument("--rollout", required=True, help="the rollout to explain (or @file)")
    page.add_argument("--solution", required=True, help="a verified solution of the same question (or @file)")
    page.add_argument("--system", default=None, help="optional system prompt")
    page.add_argument("--out", default="token_credit.html")
    page.set_defaults(func=_explain)

    box = commands.add_parser("sandbox", help="print the code sandbox's isolation diagnostics as JSON")
    box.set_defaults(func=_sandbox)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["cpu-run"]:
        return _cpu_run(argv[1:])
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
