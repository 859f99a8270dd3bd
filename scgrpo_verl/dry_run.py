"""``scgrpo-verl dry-run``: one self-teacher step of a shipped config on the CPU, stage by stage.

It composes and validates the config as ``main_ppo`` would, samples a synthetic batch of rollout groups
from a model (the tiny random model of the CPU backend unless ``model.path=`` names a local checkpoint),
gives the groups a fixed pattern of rewards (some mixed, one all-wrong, one all-right, so that every
routing case appears) and then runs the plugin's own functions in the trainer's order:

    student log-prob pass -> teacher contexts -> teacher pass -> advantages -> loss + backward (verl's engine path)

printing per-stage wall times, the masks, the divergence and weight quantiles, and the teacher / student
pass time ratio next to the ratio of their token counts. Nothing here is a stand-in for the trainer: the
same context builder, teacher pass, estimator and loss callable are used; only Ray, TransferQueue and FSDP
are left out.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Optional, Sequence

import numpy as np
import torch

from scgrpo_verl.batch_keys import SC_ROUTE_KEY

#: reward pattern per group, cycled: mixed (weighted), all wrong (solve-none), all right (plain)
GROUP_PATTERNS = ("mixed", "none", "all")


@dataclass
class DryRunReport:
    config_name: str
    loss_mode: str
    adv_estimator: str
    model_path: str
    num_rollouts: int
    timings: dict[str, float] = field(default_factory=dict)
    student_tokens: int = 0
    teacher_tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    masks: dict[str, list] = field(default_factory=dict)
    divergence_quantiles: dict[str, float] = field(default_factory=dict)
    loss: float = float("nan")
    grad_norm: float = float("nan")

    @property
    def time_ratio(self) -> float:
        """Teacher pass time / student log-prob pass time."""
        return self.timings.get("teacher_pass", float("nan")) / max(self.timings.get("student_log_probs", 0.0), 1e-9)

    @property
    def token_ratio(self) -> float:
        """Tokens the teacher pass forwards / tokens of the student log-prob pass."""
        return self.teacher_tokens / max(self.student_tokens, 1)

    def format(self) -> str:
        lines = [
            f"dry-run {self.config_name}: loss_mode={self.loss_mode} adv_estimator={self.adv_estimator} "
            f"model={self.model_path} rollouts={self.num_rollouts}",
            "stage timings (s): " + ", ".join(f"{k}={v:.3f}" for k, v in self.timings.items()),
        ]
        if "teacher_pass" in self.timings:
            lines.append(
                f"teacher pass / student log-prob pass: time {self.time_ratio:.2f}x, tokens {self.token_ratio:.2f}x "
                f"({self.teacher_tokens} vs {self.student_tokens})"
            )
        for name, values in self.masks.items():
            lines.append(f"{name}: {values}")
            if name == SC_ROUTE_KEY:
                lines.append("  " + _route_legend())
        if self.divergence_quantiles:
            lines.append("divergence D quantiles: " + _fmt(self.divergence_quantiles))
        lines.append(f"loss={self.loss:.6g} grad_norm={self.grad_norm:.6g}")
        if self.metrics:
            lines.append("metrics: " + _fmt(self.metrics))
        return "\n".join(lines)


def _route_legend() -> str:
    from scgrpo_verl.algos.sc_grpo import ROUTE_PLAIN, ROUTE_SOLVE_NONE, ROUTE_WEIGHTED

    return (f"sc_route per rollout: {ROUTE_PLAIN} = plain GRPO (1 or all of its group verified), "
            f"{ROUTE_WEIGHTED} = GRPO weighted by f(D) (2 <= verified < group size), "
            f"{ROUTE_SOLVE_NONE} = solve-none (none verified: pseudo-advantage against a reference rollout)")


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items())


def _quantiles(values: torch.Tensor) -> dict[str, float]:
    if values.numel() == 0:
        return {}
    probs = torch.tensor([0.0, 0.25, 0.5, 0.75, 0.95, 1.0])
    q = torch.quantile(values.float().flatten(), probs)
    return {f"p{int(p * 100)}": float(v) for p, v in zip(probs, q)}


@contextmanager
def _timed(timings: dict[str, float], name: str):
    start = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def _padded(rows) -> torch.Tensor:
    """Per-rollout rows (a list of (r_i,) tensors, or one (B,) tensor) as a padded tensor."""
    if torch.is_tensor(rows):
        return rows
    return torch.nn.utils.rnn.pad_sequence([torch.as_tensor(r) for r in rows], batch_first=True)


def _timed_call(fn, timings: dict[str, float], name: str):
    def timed(*args, **kwargs):
        with _timed(timings, name):
            return fn(*args, **kwargs)

    return timed


def _split_model_path(overrides: Sequence[str]) -> tuple[Optional[str], list[str]]:
    """``model.path=X`` is shorthand for ``actor_rollout_ref.model.path=X``; returns (path or None, overrides)."""
    path, rest = None, []
    for item in overrides:
        key, _, value = item.partition("=")
        if key in ("model.path", "actor_rollout_ref.model.path", "+model.path"):
            path = value
            rest.append(f"actor_rollout_ref.model.path={value}")
        else:
            rest.append(item)
    return path, rest


def _load_model(model_path: Optional[str], workdir: Optional[str]):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_path is None:
        from scgrpo_verl.cpu_backend.assets import prepare_assets

        folder = workdir or os.path.join(tempfile.gettempdir(), "scgrpo_verl_dry_run_assets")
        model_path = prepare_assets(folder).model
    elif not os.path.isdir(model_path):
        raise FileNotFoundError(f"model.path={model_path!r} is not a local folder (nothing is downloaded)")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    return model_path, model, tokenizer


def _problems(count: int, seed: int) -> list[tuple[list[dict], str, str]]:
    """(chat messages, answer, worked reference solution) of ``count`` small arithmetic problems."""
    from scgrpo_verl.cpu_backend.assets import math_rows

    return [(list(row["prompt"]), row["reward_model"]["ground_truth"], row["extra_info"]["reference_solution"])
            for row in math_rows(count, "dry_run", seed)]


@torch.no_grad()
def _sample(model, tokenizer, prompt_ids: list[int], count: int, max_new_tokens: int, seed: int) -> list[list[int]]:
    torch.manual_seed(seed)
    input_ids = torch.tensor([prompt_ids] * count)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=True,
        max_new_tokens=max_new_tokens,
        min_new_tokens=2,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    rows = []
    for row in out[:, len(prompt_ids):].tolist():
        stop = next((i + 1 for i, t in enumerate(row) if t == tokenizer.eos_token_id), len(row))
        rows.append(row[:stop])
    return rows


def _group_scores(pattern: str, size: int) -> list[float]:
    if pattern == "mixed":
        correct = max(2, size // 2) if size > 2 else 1
        return [1.0] * correct + [0.0] * (size - correct)
    return [1.0 if pattern == "all" else 0.0] * size


def dry_run(
    config_name: str,
    overrides: Sequence[str] = (),
    groups: int = 3,
    group_size: Optional[int] = None,
    max_new_tokens: int = 24,
    seed: int = 0,
    workdir: Optional[str] = None,
) -> DryRunReport:
    """One step of ``config_name`` on a synthetic batch (module docstring); returns the report."""
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.losses import ppo_loss

    from scgrpo_verl import step
    from scgrpo_verl.batch_keys import TEACHER_INPUT_KEY, TEACHER_ROWS_KEY, TEACHER_TOKENS_KEY
    from scgrpo_verl.compose import compose_config, validate
    from scgrpo_verl.engine_path import build_micro_batch, engine_loss, log_prob_pass, sc_grpo_divergence, stand_in_teacher
    from scgrpo_verl.losses import self_teacher_loss
    from scgrpo_verl.methods import LOG_PROB_PASS, UPDATE_PASS, get_method
    from scgrpo_verl.settings import SelfTeacherConfig
    from scgrpo_verl.teacher.engine_forward import count_teacher_tokens
    from scgrpo_verl.teacher.templates import chat_prompt_ids
    from scgrpo_verl.trainer import validate_self_teacher_config

    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    timings: dict[str, float] = {}
    model_path, overrides = _split_model_path(overrides)
    from scgrpo_verl.errors import deferred_warnings

    with _timed(timings, "compose_validate"), deferred_warnings():  # verl's notices only for a valid config
        config = compose_config(config_name, overrides)
        # the plugin section first, so a bad plugin option fails with the key it names
        settings = validate_self_teacher_config(config)[0] if "self_teacher" in config else SelfTeacherConfig()
        actor = validate(config)
    loss_mode = actor.policy_loss.loss_mode
    adv_estimator = config.algorithm.adv_estimator
    size = int(group_size or min(int(config.actor_rollout_ref.rollout.n), 4))
    if size < 2:
        raise ValueError(f"a group needs >= 2 rollouts, got group_size={size}")
    temperature = float(config.actor_rollout_ref.rollout.temperature)

    with _timed(timings, "load_model"):
        model_path, model, tokenizer = _load_model(model_path, workdir)
    with _timed(timings, "sample_rollouts"):  # the batch as verl's rollout leaves it, one row per rollout
        uids, keys, messages_per_row, prompt_ids, response_ids, scores = [], [], [], [], [], []
        feedback, ground_truths, reference_solutions = [], [], []
        template_kwargs = step.chat_template_kwargs(config)  # data.apply_chat_template_kwargs, student and teacher
        for g, (messages, answer, solution) in enumerate(_problems(groups, seed)):
            ids = chat_prompt_ids(tokenizer, messages, template_kwargs)
            pattern = GROUP_PATTERNS[g % len(GROUP_PATTERNS)]
            for i, (response, score) in enumerate(zip(_sample(model, tokenizer, ids, size, max_new_tokens, seed + g),
                                                      _group_scores(pattern, size))):
                text = tokenizer.decode(response, skip_special_tokens=True)
                uids.append(f"group{g}")
                keys.append(f"group{g}_{i}_0")  # verl's TransferQueue key {uid}_{session}_{output}
                messages_per_row.append(messages)
                prompt_ids.append(ids)
                response_ids.append(response)
                scores.append(score)
                feedback.append("" if score >= 1.0 else f"Wrong answer: expected {answer}, got {text.strip()[:40]!r}.")
                ground_truths.append(answer)
                reference_solutions.append(solution)
    lengths = [len(r) for r in response_ids]
    student_sequences = [p + r for p, r in zip(prompt_ids, response_ids)]
    report = DryRunReport(config_name, loss_mode, adv_estimator, model_path, len(response_ids))
    report.student_tokens = sum(map(len, student_sequences))

    with _timed(timings, "student_log_probs"):  # verl's log-prob pass on one micro-batch
        student_output = log_prob_pass(model, build_micro_batch(prompt_ids, response_ids, temperature=temperature))
        old_log_probs = [row[len(p) - 1 : len(p) - 1 + len(r)]
                         for row, p, r in zip(student_output["log_probs"].unbind(), prompt_ids, response_ids)]

    fields: dict[str, Any] = {"old_log_probs": old_log_probs}
    info: dict[str, Any] = {}
    teacher_fn = None
    method = get_method(loss_mode) if settings.enable else None
    runs_in = step.teacher_pass(method, settings) if settings.enable else None
    if settings.enable:
        # step 1, as the trainer runs it on the rows it reads from TransferQueue
        with _timed(timings, "teacher_contexts"):
            batch = {"uid": uids, "raw_prompt": messages_per_row,
                     "input_ids": [torch.tensor(s) for s in student_sequences],
                     "responses": [torch.tensor(r) for r in response_ids],
                     "rm_scores": [torch.tensor([0.0] * (len(r) - 1) + [sc]) for r, sc in zip(response_ids, scores)],
                     "extra_fields": [{"reward_extra_info": {"feedback": fb}} for fb in feedback],
                     "reward_model": [{"ground_truth": gt} for gt in ground_truths],
                     "extra_info": [{"reference_solution": ref} for ref in reference_solutions]}
            rows = {name: batch[name] for name in step.context_fields(method, settings)}  # what the trainer reads
            rollouts = step.rollouts_from_rows(method, settings, rows, keys)
            contexts = step.build_contexts(method, settings, rollouts, tokenizer,
                                           torch.Generator().manual_seed(settings.sc_grpo.seed), template_kwargs)
        report.metrics.update(contexts.metrics())
        staged = step.stage_teacher_inputs(method, contexts, rows["responses"], rows["input_ids"])
        for key, value in staged.items():
            fields[key] = list(value.unbind()) if getattr(value, "is_nested", False) else value
            if not getattr(value, "is_nested", False):
                report.masks[key] = [int(x) for x in value.tolist()]
        report.masks["source"] = [s or "-" for s in contexts.source]
        mask = contexts.mask.float()
        # the teacher forwards only the rows that have a teacher, inside verl's passes (workers do the same)
        report.teacher_tokens = sum(len(t) for t, m in zip(fields[TEACHER_INPUT_KEY], mask) if m > 0)
        # at step 0 a frozen / EMA teacher and the trust-region's frozen end hold the initial weights
        weights = settings.teacher.weights
        other = copy.deepcopy(model) if weights != "live" else None
        stand_in = stand_in_teacher(model, other if weights in ("frozen", "ema") else None,
                                    other if weights == "trust_region" else None, settings.teacher.trust_region_mix)
        teacher_fn = _timed_call(stand_in, timings, "teacher_pass")

        state = {}
        if runs_in == LOG_PROB_PASS:  # steps 2-3: D from verl's log-prob pass, the teacher forward before the student's
            pieces, _ = sc_grpo_divergence(model, prompt_ids, contexts.teacher_prompt_ids, response_ids, temperature,
                                           chunk_mib=settings.teacher.divergence_chunk_mib, teacher_fn=teacher_fn,
                                           loss_mode=loss_mode)
            kept = step.keep_log_prob_pass(method, settings, pieces, contexts, report.metrics)
            fields.update(kept.fields)
            state = kept.update_options
            active = [d for d, m in zip(pieces, mask) if m > 0]
            report.divergence_quantiles = _quantiles(torch.cat(active)) if active else {}
        info.update(step.update_options(method, settings, 1, state))  # step 5

    with _timed(timings, "advantages"):  # verl's estimator, then step 4
        response_mask = torch.nn.utils.rnn.pad_sequence([torch.ones(n) for n in lengths], batch_first=True)
        token_level_rewards = torch.zeros_like(response_mask)
        for i, n in enumerate(lengths):
            token_level_rewards[i, n - 1] = scores[i]
        estimator = get_adv_estimator_fn(adv_estimator)
        advantages, _ = estimator(token_level_rewards=token_level_rewards, response_mask=response_mask,
                                  index=np.array(uids, dtype=object), config=config.algorithm)
        if method is not None and method.advantage_fields:
            padded = {key: _padded(fields[key]) for key in method.advantage_fields}
            adjusted = step.adjust_advantages(method, settings, advantages, response_mask, uids, padded, report.metrics)
            advantages = advantages if adjusted is None else adjusted
    report.masks["scores"] = scores
    report.metrics["advantages/mean_abs"] = float(advantages.abs().sum() / response_mask.sum())
    fields["advantages"] = [advantages[i, :n] for i, n in enumerate(lengths)]
    if actor.use_kl_loss:
        fields["ref_log_prob"] = old_log_probs  # the reference is the initial policy: equal at step 0

    with _timed(timings, "loss_backward"):
        micro_batch = build_micro_batch(prompt_ids, response_ids, fields, tokenizer.pad_token_id or 0, temperature, info)
        if settings.enable:  # the global teacher-token counts the worker adds before each mini-batch
            tokens, rows_with_teacher = count_teacher_tokens(micro_batch)
            tu.assign_non_tensor(micro_batch, **{TEACHER_TOKENS_KEY: tokens, TEACHER_ROWS_KEY: rows_with_teacher})
        loss_fn = partial(self_teacher_loss if settings.enable else ppo_loss, config=actor)
        model.train()
        model.zero_grad(set_to_none=True)
        chunk = settings.teacher.divergence_chunk_bytes if settings.enable else None
        loss, loss_metrics = engine_loss(model, micro_batch, loss_fn, teacher_fn if runs_in == UPDATE_PASS else None,
                                         chunk)
        loss.backward()
        model.eval()
    grads = [p.grad.float().norm() for p in model.parameters() if p.grad is not None]
    report.grad_norm = float(torch.stack(grads).norm()) if grads else 0.0
    report.loss = float(loss.detach())
    for key, value in loss_metrics.items():
        if hasattr(value, "aggregate"):  # verl's Metric
            value = value.aggregate()
        if torch.is_tensor(value):
            value = value.detach().float().mean().item()
        if isinstance(value, (int, float)) and key.startswith("self_teacher/"):
            report.metrics[key] = float(value)
    report.timings = timings
    if not (math.isfinite(report.loss) and math.isfinite(report.grad_norm)):
        raise FloatingPointError(f"dry-run {config_name}: non-finite loss {report.loss} or gradient norm {report.grad_norm}")
    return report


def main(args) -> int:
    report = dry_run(args.config_name, args.overrides, groups=args.groups, group_size=args.group_size,
                     max_new_tokens=args.max_new_tokens, seed=args.seed, workdir=args.workdir)
    print(report.format())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({**report.__dict__, "time_ratio": report.time_ratio, "token_ratio": report.token_ratio},
                      handle, indent=2)
    return 0
