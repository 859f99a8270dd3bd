"""``scgrpo-verl``: the plugin's command line (no GPU needed).

- ``check``: compose a shipped config, run verl's and the plugin's validation and the start-up checks
  (:mod:`scgrpo_verl.startup_checks`);
- ``dry-run``: one self-teacher step on a synthetic batch, stage by stage (:mod:`scgrpo_verl.dry_run`);
- ``cpu-run``: a few real ``main_ppo`` steps on the CPU debugging backend (:mod:`scgrpo_verl.cpu_backend`);
- ``explain``: an HTML page of a rollout's tokens shaded by D and f(D) (:mod:`scgrpo_verl.explain`);
- ``ttsd``: SDPO's test-time self-distillation on single questions vs best-of-k and multi-turn (:mod:`scgrpo_verl.ttsd`);
- ``eval``: sample a checkpoint on validation parquets, grade it, avg@k / mean@k / pass@k (:mod:`scgrpo_verl.eval`);
- ``report``: tables in a paper's layout and plots from verl's logs and eval outputs (:mod:`scgrpo_verl.report`);
- ``sandbox``: which isolation the code sandbox gets on this host, and why (:func:`scgrpo_verl.rewards.sandbox.diagnose`).

Adding a subcommand: write ``_name(args) -> int``, register it in :func:`build_parser`, and raise
:class:`scgrpo_verl.errors.UserError` for anything the user can fix; :func:`main` prints it as one line
(``scgrpo-verl name: error: ...``, exit status 2) and shows the traceback only with ``--debug`` or
``HYDRA_FULL_ERROR=1``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings

from scgrpo_verl.errors import EXIT_USER_ERROR, UserError, debug_requested, one_line

DESCRIPTION = """\
SC-GRPO, SDPO, SDPG and OPSD for verl: check a config, try it on a CPU, explain a rollout's token credit.

Add --debug (or set HYDRA_FULL_ERROR=1) to any command for full tracebacks.
Training itself runs with verl's own launcher:
  python -m verl.trainer.main_ppo --config-path=pkg://scgrpo_verl.configs --config-name=sc_grpo
"""

CONFIG_HELP = ("a config of scgrpo_verl/configs: grpo | dapo | sc_grpo | sdpo | sdpg, or a paper recipe "
               "recipes/<name> (e.g. recipes/sdpg_math_urkl; docs/reproduce.md); a wrong name lists them all")
CONFIG_SECTIONS = ("self_teacher", "actor_rollout_ref", "algorithm", "trainer", "data", "reward", "critic",
                   "ray_kwargs", "transfer_queue")
_KEYED_MESSAGE = re.compile(r"^([a-z_]+)(\.[A-Za-z0-9_]+)*\b")

# verl's import-time notices on a machine without accelerators or optional engines: true, and not the user's
# concern in the plugin's own commands (other warnings from verl pass through)
_NOISE_MESSAGES = (
    r"(torchtitan|veomni|automodel|mindspeed|megatron) engine is not available",
)
_NOISE_LOGS = {
    "verl.plugin.platform.platform_manager": ("No supported accelerator detected",
                                              "is registered but not available"),
}


class _DropMessages(logging.Filter):
    def __init__(self, starts: tuple):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not any(part in text for part in self.starts)


def quiet_verl_import_noise() -> None:
    """Silence verl's "no accelerator" / "engine not available" notices, and only those."""
    for pattern in _NOISE_MESSAGES:
        warnings.filterwarnings("ignore", message=pattern, category=UserWarning)
    for name, parts in _NOISE_LOGS.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in log.filters):
            log.addFilter(_DropMessages(parts))


def _is_keyed_config_error(error: BaseException) -> bool:
    """A ``ValueError`` whose message starts with a config key (``self_teacher.teacher.weights: ...``): the
    project's convention for an option the user can fix."""
    if not isinstance(error, ValueError):
        return False
    match = _KEYED_MESSAGE.match(str(error))
    return bool(match) and match.group(1) in CONFIG_SECTIONS and "." in match.group(0)


def _plugin_options(self_teacher, loss_mode: str) -> list[str]:
    """``key = value  # help`` lines of the options the active method reads (its block and ``teacher``; templates
    only where changed), the help from each option's ``metadata["help"]`` (:mod:`scgrpo_verl.settings`)."""
    from dataclasses import fields

    from scgrpo_verl.methods import get_method
    from scgrpo_verl.settings import TemplateConfig

    method = get_method(loss_mode)
    lines = [f"self_teacher.enable = {str(self_teacher.enable).lower()}"]
    for section in (*((method.options,) if method.options else ()), "teacher"):
        options = getattr(self_teacher, section)
        for item in fields(options):
            if item.name == "templates":
                continue
            value = getattr(options, item.name)
            shown = "null" if value is None else (str(value).lower() if isinstance(value, bool) else value)
            if isinstance(value, str) and "\n" in value:
                shown = repr(value)
            help_text = item.metadata.get("help", "")
            lines.append(f"self_teacher.{section}.{item.name} = {shown}" + (f"    # {help_text}" if help_text else ""))
    defaults = TemplateConfig()
    changed = [f.name for f in fields(defaults) if getattr(self_teacher.teacher.templates, f.name)
               != getattr(defaults, f.name)]
    used = [name for name in changed if name in method.template_fields or name == "truncation_marker"]
    lines.append("self_teacher.teacher.templates = " + ("shipped defaults" if not changed else
                 "changed: " + ", ".join(f"{n}={getattr(self_teacher.teacher.templates, n)!r:.60}"
                                          for n in (used or changed))))
    return lines


def progress(command: str, message: str) -> None:
    """One ``[command] message`` line on stderr, at once (what a command is doing while it takes seconds)."""
    print(f"[{command}] {message}", file=sys.stderr, flush=True)


def _check(args: argparse.Namespace) -> int:
    from scgrpo_verl.errors import deferred_warnings

    progress("check", f"composing {args.config_name!r} on verl's ppo_trainer (importing verl: 10-60 s)")
    from scgrpo_verl.compose import compose_config, validate
    from scgrpo_verl.startup_checks import CHECKS, run_startup_checks, skipped_from_env

    skip = [name for item in args.skip for name in item.split(",") if name]
    with deferred_warnings():  # verl's notices (e.g. "Disabled critic ...") only if every check passes
        config = compose_config(args.config_name, args.overrides)
        progress("check", "verl's validate_config and the plugin's options")
        actor = validate(config)
        skipped_now = set(skip) | skipped_from_env()
        progress("check", "start-up checks: " + ", ".join(n for n in CHECKS if n not in skipped_now))
        run_startup_checks(config, skip=skip)
    skipped = f" (skipped: {', '.join(skip)})" if skip else ""
    print(f"config {args.config_name!r}: composed on verl's ppo_trainer, passed verl's validate_config and the "
          f"start-up checks{skipped}")
    print(f"  algorithm.adv_estimator = {config.algorithm.adv_estimator}")
    loss_mode = actor.policy_loss.loss_mode
    print(f"  actor_rollout_ref.actor.policy_loss.loss_mode = {loss_mode}")
    print(f"  actor_rollout_ref.rollout.name = {config.actor_rollout_ref.rollout.name}")
    print(f"  data.train_files = {config.data.train_files}")
    self_teacher = getattr(actor.policy_loss, "self_teacher", None)
    if self_teacher is not None and self_teacher.enable:
        for line in _plugin_options(self_teacher, loss_mode):
            print("  " + line)
    return 0


def _dry_run(args: argparse.Namespace) -> int:
    from scgrpo_verl.dry_run import main

    for item in args.overrides:
        key, _, value = item.partition("=")
        if key.lstrip("+") in ("model.path", "actor_rollout_ref.model.path") and not os.path.isdir(value):
            raise UserError(f"{key}={value}: not a local checkpoint folder (dry-run loads Hugging Face folders from "
                            "disk; without model.path it builds a tiny random model)")
    return main(args)


def _cpu_run(argv: list) -> int:
    from scgrpo_verl.cpu_backend.run import main

    return main(argv)


def _explain(args: argparse.Namespace) -> int:
    from scgrpo_verl.explain import explain

    def text(value: str, option: str) -> str:
        if value.startswith("@"):
            try:
                with open(value[1:], encoding="utf-8") as handle:
                    return handle.read()
            except OSError as error:
                raise UserError(f"{option} {value}: cannot read {value[1:]} ({error.strerror})") from error
        return value

    if not os.path.isfile(os.path.join(args.model_path, "config.json")):
        raise UserError(f"--model-path {args.model_path}: not a Hugging Face checkpoint folder (no config.json); "
                        "`scgrpo-verl dry-run --config-name sc_grpo --workdir DIR` leaves a tiny one in DIR/tiny_qwen2")
    from scgrpo_verl.explain import untrained_warning

    credit = explain(args.model_path, text(args.prompt, "--prompt"), text(args.rollout, "--rollout"),
                     text(args.solution, "--solution"), args.out, system=args.system, top_k=args.top_k,
                     ground_truth=args.ground_truth, data_source=args.data_source)
    print(f"wrote {args.out}: {len(credit.tokens)} tokens, c={credit.c:.4g}, "
          f"mean f(D)={sum(credit.weights) / max(len(credit.weights), 1):.3f}; {credit.verdict}")
    warning = untrained_warning(credit)
    if warning:
        print(f"scgrpo-verl explain: warning: {warning}", file=sys.stderr)
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


def _eval(args: argparse.Namespace) -> int:
    from scgrpo_verl.eval import run_from_args

    return run_from_args(args)  # its EvalError is a UserError: main() prints it as one line


def _report(args: argparse.Namespace) -> int:
    from scgrpo_verl.report import run_from_args

    return run_from_args(args)


def _add_eval_and_report(commands) -> None:
    from scgrpo_verl.eval import add_arguments as eval_arguments
    from scgrpo_verl.report import add_arguments as report_arguments

    evaluation = commands.add_parser("eval", help="sample a checkpoint on verl parquets and grade it (avg@k, pass@k)")
    eval_arguments(evaluation)
    evaluation.set_defaults(func=_eval)
    report = commands.add_parser("report", help="paper-layout tables and plots from verl logs and eval outputs")
    report_arguments(report)
    report.set_defaults(func=_report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scgrpo-verl", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks (also HYDRA_FULL_ERROR=1)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser("check", help="compose a config; run verl's validation and the start-up checks")
    check.add_argument("--config-name", required=True, help=CONFIG_HELP)
    check.add_argument("--skip", action="append", default=[], metavar="CHECK[,CHECK]",
                       help="start-up checks to skip: data_files, data_sources, method_data, rollout_name, model, "
                            "attention, gpus (e.g. --skip gpus to check a GPU recipe on a CPU machine)")
    check.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. self_teacher.sdpo.alpha=1.0")
    check.set_defaults(func=_check)

    dry = commands.add_parser("dry-run", help="one self-teacher step of a config on a synthetic batch (CPU)")
    dry.add_argument("--config-name", required=True, help=CONFIG_HELP)
    dry.add_argument("--groups", type=int, default=3, help="rollout groups (patterns: mixed, all wrong, all right)")
    dry.add_argument("--group-size", type=int, default=None, help="rollouts per group (default min(rollout.n, 4))")
    dry.add_argument("--max-new-tokens", type=int, default=24, help="tokens sampled per rollout")
    dry.add_argument("--seed", type=int, default=0, help="seeds sampling and the teacher's draws")
    dry.add_argument("--workdir", default=None,
                     help="where the tiny model is built (default: a temp folder); DIR/tiny_qwen2 is a checkpoint "
                          "that explain --model-path accepts")
    dry.add_argument("--json", default=None, help="also write the report as JSON here")
    dry.add_argument("overrides", nargs="*", help="Hydra overrides; model.path=DIR runs a local checkpoint")
    dry.set_defaults(func=_dry_run)

    # parsed by scgrpo_verl.cpu_backend.run (argparse's REMAINDER would not pass leading options through)
    commands.add_parser("cpu-run", add_help=False,
                        help="real main_ppo steps on the CPU debugging backend (cpu-run --help for options)")

    page = commands.add_parser("explain", help="write an HTML token-credit page (D and f(D) per token)")
    page.add_argument("--model-path", required=True,
                      help="local Hugging Face checkpoint folder (dry-run --workdir DIR leaves one in DIR/tiny_qwen2)")
    page.add_argument("--prompt", required=True, help="the question (or @file)")
    page.add_argument("--rollout", required=True, help="the rollout to explain (or @file)")
    page.add_argument("--solution", required=True, help="a verified solution of the same question (or @file)")
    page.add_argument("--system", default=None, help="optional system prompt")
    page.add_argument("--ground-truth", default=None,
                      help="the answer the rollout is graded against (default: the solution's final \\boxed{} answer)")
    page.add_argument("--data-source", default="math500",
                      help="which of the plugin's graders decides whether the rollout is right (a data_source that "
                           "data_prep writes, e.g. math500, gsm8k, sciknoweval; default: %(default)s)")
    page.add_argument("--top-k", type=int, default=10, help="most pivotal tokens listed with their context")
    page.add_argument("--out", default="token_credit.html", help="the HTML file to write")
    page.set_defaults(func=_explain)

    _add_ttsd_parser(commands)

    box = commands.add_parser("sandbox", help="print the code sandbox's isolation diagnostics as JSON")
    box.set_defaults(func=_sandbox)
    _add_eval_and_report(commands)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    quiet_verl_import_noise()
    command = next((a for a in argv if not a.startswith("-")), "")
    try:
        if command == "cpu-run":
            rest = argv[argv.index("cpu-run") + 1:]
            return _cpu_run(rest + (["--debug"] if debug and "--debug" not in rest else []))
        args = build_parser().parse_args((["--debug"] if debug else []) + [a for a in argv if a != "--debug"])
        return args.func(args)
    except Exception as error:  # noqa: BLE001 - user errors become one line, anything else keeps its traceback
        if debug or not (isinstance(error, UserError) or _is_keyed_config_error(error)):
            raise
        lines = str(error).splitlines() or [type(error).__name__]
        for line in lines:
            print(f"scgrpo-verl {command}: error: {one_line(line)}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
