"""``scgrpo-verl``: the plugin's command line (no GPU needed).

- ``check``: compose a shipped config and run verl's and the plugin's validation;
- ``dry-run``: one self-teacher step on a synthetic batch, stage by stage (:mod:`scgrpo_verl.dry_run`);
- ``cpu-run``: a few real ``main_ppo`` steps on the CPU debugging backend (:mod:`scgrpo_verl.cpu_backend`);
- ``explain``: an HTML page of a rollout's tokens shaded by D and f(D) (:mod:`scgrpo_verl.explain`);
- ``ttsd``: SDPO's test-time self-distillation on single questions vs best-of-k and multi-turn (:mod:`scgrpo_verl.ttsd`);
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
    import json

    from scgrpo_verl.rewards.sandbox import diagnose

    print(json.dumps(diagnose(), indent=2, default=str))
    return 0


def _ttsd(args: argparse.Namespace) -> int:
    from scgrpo_verl.ttsd import main

    return main(args)


def _add_ttsd_parser(commands) -> None:
    """``scgrpo-verl ttsd``: discovery probability vs attempts of test-time SDPO, best-of-k and multi-turn."""
    from scgrpo_verl.ttsd import TTSDConfig

    d = TTSDConfig()
    p = commands.add_parser("ttsd", help="SDPO's test-time self-distillation on single hard questions, reported as "
                                         "discovery@k next to best-of-k and multi-turn (docs/reproduce.md)")
    p.add_argument("--model-path", required=True, help="local Hugging Face checkpoint folder")
    p.add_argument("--data", required=True, help="verl parquet (prompt, data_source, reward_model.ground_truth)")
    p.add_argument("--questions", default=None, help="comma-separated row indices (default: every row)")
    p.add_argument("--limit", type=int, default=None, help="at most this many questions")
    p.add_argument("--out", required=True, help="folder for report.json, attempts.jsonl, discovery.png")
    p.add_argument("--budget", type=int, default=d.budget, help="attempts per question and run")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="attempts per SDPO round")
    p.add_argument("--group-size", type=int, default=d.group_size, help="rollouts per SDPO update")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--topk", type=int, default=d.topk)
    p.add_argument("--alpha", type=float, default=d.alpha, help="0 forward KL, 1 reverse KL, else JSD")
    p.add_argument("--teacher", choices=("ema", "live", "frozen"), default=d.teacher)
    p.add_argument("--ema-rate", type=float, default=d.ema_rate)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--runs", type=int, default=d.runs, help="independent runs per question and method")
    p.add_argument("--baseline-samples", type=int, default=d.baseline_samples,
                   help="base-model samples per question for best-of-k (0: skip)")
    p.add_argument("--no-multiturn", action="store_true", help="skip the multi-turn baseline")
    p.add_argument("--enable-thinking", choices=("true", "false"), default=None,
                   help="chat template's enable_thinking (Qwen3; the SDPO paper runs with thinking off)")
    p.add_argument("--reward-path", default=None, help="file or pkg:// module of another compute_score")
    p.add_argument("--reward-name", default="compute_score")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    p.set_defaults(func=_ttsd)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scgrpo-verl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="compose a shipped config and run verl's and the plugin's validation")
    check.add_argument("--config-name", required=True,
                       help="grpo | dapo | sc_grpo | sdpo | sdpg, or a paper recipe recipes/<name> "
                            "(scgrpo_verl/configs/recipes/, e.g. recipes/sdpg_math_urkl; docs/reproduce.md)")
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

    _add_ttsd_parser(commands)

    box = commands.add_parser("sandbox", help="print the code sandbox's isolation diagnostics as JSON")
    box.set_defaults(func=_sandbox)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["cpu-run"]:
        return _cpu_run(argv[1:])
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
