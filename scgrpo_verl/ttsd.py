"""SDPO's test-time self-distillation (arXiv 2601.20802, section 5; ``scgrpo-verl ttsd``).

The discovery problem: one hard question with a binary verifier; how many attempts until the first solution?
Three ways of spending attempts, each on one question at a time:

- **SDPO at test time** (:func:`run_ttsd`): every round samples ``batch_size`` attempts from the current policy
  (``batch_size / group_size`` copies of the question x ``group_size`` rollouts, as the reference's per-question
  data folders repeat the question 4 times with 8 rollouts each); if none succeeds, the environment's feedback on
  each failed attempt goes into the self-teacher's prompt (SDPO's feedback-only reprompt,
  :func:`scgrpo_verl.teacher.templates.sdpo_teacher_messages`) and one SDPO update per copy distils the teacher's
  next-token distribution into the policy (top-k + tail divergence of :mod:`scgrpo_verl.algos.divergence`, the
  clipped importance weight of :mod:`scgrpo_verl.algos.sdpo`), then the teacher follows the policy (EMA). Repeat
  until solved or the attempt budget is spent.
- **Multi-turn conversation** (:func:`run_multiturn`): one attempt at a time from the base model, all earlier
  feedback in the prompt (the reference's ``baseline_multiturn/multiturn.py`` "feedback_only" template; the oldest
  feedback is dropped when the prompt exceeds ``max_prompt_tokens``).
- **Best-of-k** (:func:`best_of_k_curve`): independent samples from the base model; discovery@k from the per-attempt
  success count c of m samples, 1 - C(m-c, k) / C(m, k) for k <= m and 1 - (1 - c/m)^k beyond.

Attempts inside a round are counted in sampling order: a success at position j of round r is discovered after
(r - 1) * batch_size + j attempts. discovery@k of a method is the fraction of (question, run) pairs solved within
k attempts (:func:`discovery_curve`). The report (``report.json``, ``attempts.jsonl``, ``discovery.png``) puts the
three curves side by side, with the attempts each method needs to reach the others' discovery probability.
"""

from __future__ import annotations

import copy
import json
import os
import random
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import torch

from scgrpo_verl.algos.divergence import divergence_from_log_probs, student_topk_ids, topk_log_probs
from scgrpo_verl.algos.sdpo import sdpo_importance_weight
from scgrpo_verl.evaluation.data import Question, grade, load_questions, load_reward_fn
from scgrpo_verl.evaluation.generation import sample_token_ids
from scgrpo_verl.evaluation.metrics import pass_at_k
from scgrpo_verl.settings import TemplateConfig
from scgrpo_verl.teacher.templates import (
    chat_prompt_ids,
    chat_template_kwargs,
    normalize_messages,
    sdpo_teacher_messages,
)

# the reference's multi-turn baseline prompt (baseline_multiturn/multiturn.py, template "feedback_only"), reworded
MULTITURN_PREFIX = "Feedback on your earlier, unsuccessful attempts:\n\n"
MULTITURN_SUFFIX = "\n\nNow give a correct solution to the original question."


@dataclass
class TTSDConfig:
    """Test-time self-distillation settings (defaults: the reference's LCB rich-feedback SDPO run, see
    docs/reproduce.md; the reference publishes no test-time config, so batch and budget are our reading)."""

    budget: int = 2880  # attempts per question and run (the reference multi-turn baseline's MAX_TURNS)
    batch_size: int = 32  # attempts per round: 4 copies of the question x 8 rollouts
    group_size: int = 8  # rollouts per copy; one SDPO update per copy (reference LCB run: ppo_mini_batch_size=1)
    lr: float = 1e-6  # reference LCB run
    weight_decay: float = 0.01  # verl's AdamW default
    grad_clip: float = 1.0  # verl's default
    topk: int = 20  # reference LCB run distillation_topk=20
    alpha: float = 1.0  # reference LCB run: reverse KL
    add_tail: bool = True
    is_clip: Optional[float] = 2.0
    teacher: str = "ema"  # ema | live | frozen
    ema_rate: float = 0.01  # reference LCB run ema_update_rate=0.01
    temperature: float = 1.0  # reference multi-turn baseline sampling
    top_p: float = 1.0
    max_new_tokens: int = 8192  # reference max response length
    max_prompt_tokens: int = 32000  # multi-turn prompt budget (reference MAX_CONTEXT_LEN)
    max_reprompt_len: int = 10240  # teacher prompt budget (SDPO max_reprompt_len)
    success_threshold: float = 1.0  # an attempt is a discovery when its score >= this
    runs: int = 1  # independent runs per question and method
    baseline_samples: int = 64  # best-of-k: base-model samples per question
    multiturn: bool = True
    seed: int = 0
    chat_template_kwargs: dict = field(default_factory=dict)  # e.g. {"enable_thinking": False} for Qwen3

    def __post_init__(self):
        def need(ok, key, message):
            if not ok:
                raise ValueError(f"ttsd.{key}: {message}")
        need(self.budget >= 1, "budget", f"must be >= 1, got {self.budget}")
        need(self.group_size >= 1 and self.batch_size >= self.group_size and self.batch_size % self.group_size == 0,
             "batch_size", f"must be a positive multiple of group_size={self.group_size}, got {self.batch_size}")
        need(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        need(self.topk >= 1, "topk", f"must be >= 1, got {self.topk}")
        need(0.0 <= self.alpha <= 1.0, "alpha", f"must be in [0, 1], got {self.alpha}")
        need(self.teacher in ("ema", "live", "frozen"), "teacher", f"must be ema | live | frozen, got {self.teacher!r}")
        need(0.0 < self.ema_rate <= 1.0, "ema_rate", f"must be in (0, 1], got {self.ema_rate}")
        need(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        need(0.0 < self.top_p <= 1.0, "top_p", f"must be in (0, 1], got {self.top_p}")
        need(self.runs >= 1, "runs", f"must be >= 1, got {self.runs}")
        need(self.baseline_samples >= 0, "baseline_samples", f"must be >= 0, got {self.baseline_samples}")
        need(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")


# -- discovery bookkeeping (pure) ---------------------------------------------------------------------------------
def first_success(successes: Sequence[bool]) -> Optional[int]:
    """1-based index of the first successful attempt, or None."""
    return next((i + 1 for i, ok in enumerate(successes) if ok), None)


def discovery_curve(first: Sequence[Sequence[Optional[int]]], budget: int) -> list[float]:
    """discovery@k for k = 1..budget: mean over questions of the fraction of runs solved within k attempts.

    Args:
        first: per question, per run, the 1-based attempt of the first success (None: unsolved in the budget).
    """
    if not first:
        return [0.0] * budget
    curve = []
    for k in range(1, budget + 1):
        per_question = [sum(1 for t in runs if t is not None and t <= k) / len(runs) for runs in first]
        curve.append(sum(per_question) / len(per_question))
    return curve


def best_of_k_curve(counts: Sequence[tuple[int, int]], budget: int) -> list[float]:
    """Best-of-k discovery@k, k = 1..budget, averaged over questions given (successes c, samples m) per question:
    the unbiased estimator :func:`~scgrpo_verl.evaluation.metrics.pass_at_k` for k <= m, the closed form
    1 - (1 - c/m)^k beyond (0 when c = 0)."""
    if not counts:
        return [0.0] * budget
    curve = []
    for k in range(1, budget + 1):
        values = [pass_at_k(m, c, k) if k <= m else 1.0 - (1.0 - c / m) ** k for c, m in counts]
        curve.append(sum(values) / len(values))
    return curve


def attempts_to_reach(curve: Sequence[float], target: float) -> Optional[int]:
    """The smallest k with discovery@k >= target (None if the curve never gets there; target 0 -> None)."""
    if target <= 0:
        return None
    return next((k + 1 for k, value in enumerate(curve) if value >= target - 1e-12), None)


# -- model side ---------------------------------------------------------------------------------------------------
def sample(model, tokenizer, prompt_ids: Sequence[int], count: int, cfg: TTSDConfig,
           generator_seed: int) -> list[list[int]]:
    """``count`` sampled responses (token ids, cut after the first EOS / pad) to one prompt."""
    return sample_token_ids(model, tokenizer, prompt_ids, count, temperature=cfg.temperature, top_p=cfg.top_p,
                            max_new_tokens=cfg.max_new_tokens, seed=generator_seed)


def response_logits(model, prompt_ids: Sequence[int], response: Sequence[int]) -> torch.Tensor:
    """(R, V) logits predicting each response token after ``prompt_ids``."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids) + list(response)], device=device)
    logits = model(input_ids=ids, use_cache=False).logits[0].float()
    return logits[len(prompt_ids) - 1: len(prompt_ids) - 1 + len(response)]


def sdpo_token_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, sampled: torch.Tensor,
                    old_log_probs: torch.Tensor, cfg: TTSDConfig) -> torch.Tensor:
    """SDPO per-token loss, (R, V) x 2 -> (R,): sg(min(pi/pi_old, is_clip)) x D_alpha(p || q) on the student's
    top-k + tail (ALGORITHMS.md section 2)."""
    k = min(cfg.topk, student_logits.shape[-1])
    ids = student_topk_ids(student_logits, k)
    log_p = topk_log_probs(student_logits, ids, 1.0, cfg.add_tail)
    log_q = topk_log_probs(teacher_logits.detach(), ids, 1.0, cfg.add_tail)
    divergence = divergence_from_log_probs(log_p, log_q, "jsd", cfg.alpha)
    log_prob = torch.log_softmax(student_logits.float(), -1).gather(-1, sampled[:, None])[:, 0]
    weight = sdpo_importance_weight(log_prob, old_log_probs, cfg.is_clip)
    return weight * divergence


# -- the three methods --------------------------------------------------------------------------------------------
ScoreFn = Callable[..., dict]


def judge(score_fn: ScoreFn, question: Question, text: str, cfg: TTSDConfig) -> tuple[bool, float, str]:
    """(discovered, score, feedback) of one attempt: a discovery is score >= ``success_threshold`` (the reward's
    own ``acc`` is not used)."""
    graded = grade(score_fn, question, text, cfg.success_threshold)
    return graded["score"] >= cfg.success_threshold, graded["score"], graded["feedback"]


def run_ttsd(model, tokenizer, question: Question, score_fn: ScoreFn, cfg: TTSDConfig, run: int,
             log: Callable[[dict], None]) -> Optional[int]:
    """SDPO on one question until solved; returns the 1-based attempt of the first success (None: budget spent).
    ``model`` is trained in place (pass a copy)."""
    templates = TemplateConfig()
    messages = normalize_messages(question.messages)
    prompt_ids = chat_prompt_ids(tokenizer, messages, cfg.chat_template_kwargs)
    teacher_model = None if cfg.teacher == "live" else copy.deepcopy(model).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    attempts, round_index = 0, 0
    while attempts < cfg.budget:
        round_index += 1
        count = min(cfg.batch_size, cfg.budget - attempts)
        model.eval()
        responses = sample(model, tokenizer, prompt_ids, count, cfg, generator_seed=_seed(cfg, "ttsd", question,
                                                                                        run, round_index))
        graded = []
        for response in responses:
            attempts += 1
            text = tokenizer.decode(response, skip_special_tokens=True)
            ok, score, feedback = judge(score_fn, question, text, cfg)
            graded.append((response, ok, feedback))
            log({"method": "ttsd", "question": question.row, "run": run, "attempt": attempts,
                 "round": round_index, "success": ok, "score": score, "response_tokens": len(response)})
            if ok:
                return attempts
        # no success: SDPO updates from the feedback-conditioned self-teacher, one per copy of the question
        teacher_prompts = []
        for response, _, feedback in graded:
            if not feedback.strip() or not response:
                teacher_prompts.append(None)  # SDPO: no demonstration and no feedback -> no teacher
                continue
            ids = chat_prompt_ids(tokenizer, sdpo_teacher_messages(messages, None, feedback, templates),
                                  cfg.chat_template_kwargs)
            teacher_prompts.append(ids if len(ids) <= cfg.max_reprompt_len else None)
        with torch.no_grad():
            old = [torch.log_softmax(response_logits(model, prompt_ids, r), -1).gather(
                -1, torch.tensor(r, device=_device(model))[:, None])[:, 0] if r else None for r, _, _ in graded]
        losses = []
        model.train()
        for start in range(0, len(graded), cfg.group_size):
            terms, tokens = [], 0
            for i in range(start, min(start + cfg.group_size, len(graded))):
                response = graded[i][0]
                if teacher_prompts[i] is None:
                    continue
                student = response_logits(model, prompt_ids, response)
                with torch.no_grad():
                    teacher = response_logits(teacher_model if teacher_model is not None else model,
                                              teacher_prompts[i], response)
                sampled = torch.tensor(response, device=student.device)
                terms.append(sdpo_token_loss(student, teacher, sampled, old[i], cfg).sum())
                tokens += len(response)
            if not terms:
                continue
            loss = torch.stack(terms).sum() / tokens  # mean over the tokens that have a teacher
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
            if cfg.teacher == "ema":
                from scgrpo_verl.teacher.passes import ema_update_

                ema_update_(teacher_model, model, cfg.ema_rate)
        log({"method": "ttsd", "question": question.row, "run": run, "round": round_index, "update": True,
             "loss": losses, "teachers": sum(p is not None for p in teacher_prompts)})
    return None


def multiturn_messages(messages: list, feedbacks: Sequence[str]) -> list:
    """The reference multi-turn baseline's prompt: the question, then all earlier feedback, then the request."""
    if not feedbacks:
        return messages
    out = [dict(m) for m in messages]
    for i in range(len(out) - 1, -1, -1):
        if out[i]["role"] == "user":
            joined = "\n\n".join(feedbacks)
            out[i]["content"] = f"{out[i]['content']}\n\n{MULTITURN_PREFIX}{joined}{MULTITURN_SUFFIX}"
            return out
    raise ValueError("the prompt has no user message")


def run_multiturn(model, tokenizer, question: Question, score_fn: ScoreFn, cfg: TTSDConfig, run: int,
                  log: Callable[[dict], None]) -> Optional[int]:
    """One attempt at a time with all earlier feedback in the prompt; the 1-based attempt of the first success."""
    messages = normalize_messages(question.messages)
    feedbacks: list[str] = []
    for attempt in range(1, cfg.budget + 1):
        while True:
            prompt_ids = chat_prompt_ids(tokenizer, multiturn_messages(messages, feedbacks), cfg.chat_template_kwargs)
            if len(prompt_ids) <= cfg.max_prompt_tokens or not feedbacks:
                break
            feedbacks.pop(0)  # the reference trims the earliest feedback first
        model.eval()
        response = sample(model, tokenizer, prompt_ids, 1, cfg, _seed(cfg, "multiturn", question, run, attempt))[0]
        ok, score, feedback = judge(score_fn, question, tokenizer.decode(response, skip_special_tokens=True), cfg)
        log({"method": "multiturn", "question": question.row, "run": run, "attempt": attempt, "success": ok,
             "score": score, "response_tokens": len(response), "feedbacks_in_prompt": len(feedbacks)})
        if ok:
            return attempt
        feedbacks.append(feedback)
    return None


def best_of_k_counts(model, tokenizer, question: Question, score_fn: ScoreFn, cfg: TTSDConfig,
                     log: Callable[[dict], None]) -> tuple[int, int]:
    """(successes, samples) of ``baseline_samples`` independent base-model attempts."""
    messages = normalize_messages(question.messages)
    prompt_ids = chat_prompt_ids(tokenizer, messages, cfg.chat_template_kwargs)
    successes, done = 0, 0
    while done < cfg.baseline_samples:
        count = min(cfg.batch_size, cfg.baseline_samples - done)
        for response in sample(model, tokenizer, prompt_ids, count, cfg, _seed(cfg, "best_of_k", question, 0, done)):
            done += 1
            ok, score, _ = judge(score_fn, question, tokenizer.decode(response, skip_special_tokens=True), cfg)
            successes += ok
            log({"method": "best_of_k", "question": question.row, "run": 0, "attempt": done, "success": ok,
                 "score": score})
    return successes, done


def _seed(cfg: TTSDConfig, method: str, question: Question, run: int, step: int) -> int:
    return random.Random(f"{cfg.seed}/{method}/{question.row}/{run}/{step}").randrange(2**31)


def _device(model) -> torch.device:
    return next(model.parameters()).device


# -- driver -------------------------------------------------------------------------------------------------------
def evaluate_discovery(model, tokenizer, questions: Sequence[Question], score_fn: ScoreFn, cfg: TTSDConfig,
                       out_dir: str, progress: Callable[[str], None] = print) -> dict:
    """Run best-of-k, multi-turn and test-time SDPO on every question; write report.json, attempts.jsonl and
    discovery.png under ``out_dir``; return the report."""
    os.makedirs(out_dir, exist_ok=True)
    log_path = os.path.join(out_dir, "attempts.jsonl")
    handle = open(log_path, "w", encoding="utf-8")

    def log(record: dict) -> None:
        handle.write(json.dumps(record) + "\n")
        handle.flush()

    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    first = {"ttsd": [], "multiturn": []}
    counts = []
    try:
        for question in questions:
            model.load_state_dict(base_state)
            if cfg.baseline_samples:
                counts.append(best_of_k_counts(model, tokenizer, question, score_fn, cfg, log))
                progress(f"question {question.row}: best-of-k {counts[-1][0]}/{counts[-1][1]} base samples solved")
            if cfg.multiturn:
                runs = []
                for run in range(cfg.runs):
                    model.load_state_dict(base_state)
                    runs.append(run_multiturn(model, tokenizer, question, score_fn, cfg, run, log))
                first["multiturn"].append(runs)
                progress(f"question {question.row}: multi-turn first success at {runs}")
            runs = []
            for run in range(cfg.runs):
                model.load_state_dict(base_state)
                runs.append(run_ttsd(model, tokenizer, question, score_fn, cfg, run, log))
            first["ttsd"].append(runs)
            progress(f"question {question.row}: test-time SDPO first success at {runs}")
    finally:
        model.load_state_dict(base_state)
        handle.close()
    curves = {"ttsd": discovery_curve(first["ttsd"], cfg.budget)}
    if cfg.multiturn:
        curves["multiturn"] = discovery_curve(first["multiturn"], cfg.budget)
    if cfg.baseline_samples:
        curves["best_of_k"] = best_of_k_curve(counts, cfg.budget)
    report = {
        "config": asdict(cfg),
        "questions": [q.row for q in questions],
        "first_success": first,
        "best_of_k_counts": [list(c) for c in counts],
        "curves": curves,
        "attempts_to_reach": _comparisons(curves),
    }
    with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    _plot(curves, os.path.join(out_dir, "discovery.png"))
    return report


def _comparisons(curves: dict) -> dict:
    """For each baseline: its final discovery@budget p, the attempts it needs for p and those test-time SDPO
    needs for p (the paper's '3x fewer attempts' reads off this ratio)."""
    out = {}
    ttsd = curves["ttsd"]
    for name, curve in curves.items():
        if name == "ttsd":
            continue
        target = min(curve[-1], ttsd[-1])
        a, b = attempts_to_reach(curve, target), attempts_to_reach(ttsd, target)
        out[name] = {"discovery": target, "baseline_attempts": a, "ttsd_attempts": b,
                     "ratio": (a / b) if a and b else None}
    return out


def _plot(curves: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the report is complete without the picture
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    labels = {"ttsd": "test-time SDPO", "multiturn": "multi-turn", "best_of_k": "best-of-k"}
    for name, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, label=labels.get(name, name))
    ax.set_xscale("log")
    ax.set_xlabel("attempts k")
    ax.set_ylabel("discovery@k")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args) -> int:
    """``scgrpo-verl ttsd`` (arguments from :mod:`scgrpo_verl.cli`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    indices = None if args.questions is None else [int(x) for x in args.questions.split(",") if x.strip()]
    questions = load_questions(args.data, indices=indices)
    if args.limit is not None:
        questions = questions[: args.limit]
    kwargs = chat_template_kwargs(enable_thinking=None if args.enable_thinking is None
                                  else args.enable_thinking == "true")
    cfg = TTSDConfig(budget=args.budget, batch_size=args.batch_size, group_size=args.group_size, lr=args.lr,
                     topk=args.topk, alpha=args.alpha, teacher=args.teacher, ema_rate=args.ema_rate,
                     temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                     runs=args.runs, baseline_samples=args.baseline_samples, multiturn=not args.no_multiturn,
                     seed=args.seed, chat_template_kwargs=kwargs)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype or
                                                                   ("bfloat16" if device == "cuda" else "float32")]
    tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=dtype).to(device)
    score_fn = load_reward_fn(args.reward_path or None, args.reward_name)
    report = evaluate_discovery(model, tokenizer, questions, score_fn, cfg, args.out)
    for name, curve in report["curves"].items():
        marks = [k for k in (1, 4, 16, 64, 256, 1024, cfg.budget) if k <= cfg.budget]
        print(f"{name:>10}: " + "  ".join(f"discovery@{k}={curve[k - 1]:.3f}" for k in sorted(set(marks))))
    for name, c in report["attempts_to_reach"].items():
        print(f"to reach {name}'s discovery {c['discovery']:.3f}: {name} {c['baseline_attempts']} attempts, "
              f"test-time SDPO {c['ttsd_attempts']}" + (f" ({c['ratio']:.2f}x fewer)" if c["ratio"] else ""))
    print(f"wrote {os.path.join(args.out, 'report.json')}, attempts.jsonl, discovery.png")
    return 0
