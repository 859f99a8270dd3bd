"""Rule-based rewards with textual feedback, usable as verl's custom reward function.

verl 0.9.1 wiring (``reward.custom_reward_function`` in the trainer config)::

    reward:
      custom_reward_function:
        path: pkg://scgrpo_verl.rewards   # verl.utils.import_utils.load_module accepts pkg:// paths
        name: compute_score
        reward_kwargs: {}          # optional: max_feedback_chars, code_time_limit_s, code_memory_limit_mb, sandbox_mode

verl's reward managers (e.g. ``NaiveRewardManager.run_single``) call
``compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=..., **reward_kwargs)``
and, for a dict result, use ``score`` as the reward and keep every key as ``reward_extra_info``. Every branch
returns the same keys (``score``, ``acc``, ``feedback``, ``pass_rate``) because verl builds those arrays from the
keys of the first sample in a batch.
"""

from __future__ import annotations

from typing import Any

from . import sandbox
from .choice import grade_choice
from .code_exec import grade_code
from .common import MAX_FEEDBACK_CHARS, cap
from .math_answers import grade_math
from .tool_use import grade_tool_call

__all__ = ["compute_score", "DATA_SOURCES", "ALIASES", "TASK_OF", "canonical_source", "can_grade",
           "ground_truth_problem", "is_truncated"]

TASK_OF = {
    "gsm8k": "math",
    "math500": "math",
    "aime2024": "math",
    "aime2025": "math",
    "amc23": "math",
    "dapo_math": "math",
    "livecodebench": "code",
    "codeforces": "code",
    "sciknoweval": "choice",
    "tooluse": "tool",
}
"""Canonical ``data_source`` -> task family."""

DATA_SOURCES = tuple(TASK_OF)

ALIASES = {
    "openai/gsm8k": "gsm8k",
    "HuggingFaceH4/MATH-500": "math500",
    "math_dapo": "dapo_math",
    "aime24": "aime2024",
    "aime25": "aime2025",
}
"""verl's usual upstream ``data_source`` names accepted for the canonical ones."""


def canonical_source(data_source: str) -> str:
    """Canonical name of ``data_source``.

    Raises:
        ValueError: unknown data source (named in the message, with the accepted ones).
    """
    if not isinstance(data_source, str):
        raise ValueError(f"data_source must be a str, got {type(data_source).__name__}: {data_source!r}")
    name = ALIASES.get(data_source, data_source)
    if name not in TASK_OF:
        raise ValueError(f"unknown data_source {data_source!r}; expected one of {sorted(TASK_OF)} "
                         f"or aliases {sorted(ALIASES)}")
    return name


def can_grade(data_source: Any) -> bool:
    """Whether :func:`compute_score` knows ``data_source`` (what ``scgrpo-verl check`` asks of a reward function)."""
    try:
        canonical_source(data_source)
    except ValueError:
        return False
    return True


def ground_truth_problem(data_source: str, ground_truth: Any) -> str | None:
    """Why the grader of ``data_source`` cannot use ``ground_truth``, or ``None`` when it can.

    Each task runs its own grader's parser: math: the answer normalisation plus a math-verify parse into a
    mathematical object (a parse that falls back to the raw string would only ever match that exact string);
    multiple choice: one option letter; tool use: ``{"name", "arguments"}``; code: the test-suite layout.
    """
    try:
        task = TASK_OF[canonical_source(data_source)]
    except ValueError as error:
        return str(error)
    try:
        if task == "math":
            from .math_answers import normalize_ground_truth, parsed_gold

            gold = normalize_ground_truth(ground_truth)
            if not parsed_gold(gold):
                return f"math-verify cannot parse the ground truth {ground_truth!r:.80} into a mathematical answer"
        elif task == "choice":
            from .choice import normalize_letter

            if not isinstance(ground_truth, str) or normalize_letter(ground_truth) is None:
                return f"multiple-choice ground truth must be one option letter, got {ground_truth!r:.80}"
        elif task == "tool":
            from .tool_use import parse_expected

            parse_expected(ground_truth)
        else:
            from .code_exec import parse_tests

            parse_tests(ground_truth)
    except ValueError as error:
        return str(error)
    return None


def _row_name(extra_info: Any) -> str:
    """``row 12 of split 'train'`` from verl's ``extra_info`` (``index`` / ``split`` written by data_prep)."""
    info = extra_info if isinstance(extra_info, dict) else {}
    if info.get("index") is None:
        return "a row without extra_info.index"
    split = f" of split {info['split']!r}" if info.get("split") else ""
    return f"row {info['index']}{split}"


def is_truncated(extra_info: dict | None, kwargs: dict) -> bool:
    """Whether the response hit the generation length limit: ``truncated=True`` in kwargs or ``extra_info``, or
    ``extra_info['response_length'] >= extra_info['max_response_length']``."""
    info = extra_info or {}
    if bool(kwargs.get("truncated")) or bool(info.get("truncated")):
        return True
    length, limit = info.get("response_length"), info.get("max_response_length")
    return length is not None and limit is not None and int(length) >= int(limit)


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **kwargs) -> dict:
    """Score one response (verl custom-reward signature).

    Args:
        data_source: one of :data:`DATA_SOURCES` or :data:`ALIASES`.
        solution_str: decoded response text.
        ground_truth: math: answer string/number; sciknoweval: option letter; tooluse: ``{"name", "arguments"}``
            (dict or JSON); code: tests (see :mod:`scgrpo_verl.rewards.code_exec`).
        extra_info: per-sample dict from the dataset (``truncated`` / ``response_length`` +
            ``max_response_length`` are read; verl also adds ``num_turns`` etc., ignored here).
        **kwargs: ``truncated`` (bool), ``max_feedback_chars`` (int, default 2000), ``code_time_limit_s`` (float),
            ``code_memory_limit_mb`` (int), ``sandbox_mode`` (str: an opt-in weaker code sandbox, see
            :func:`scgrpo_verl.rewards.sandbox.select_mode`); unknown keys (e.g. verl's ``reward_router_address``)
            are ignored.

    Returns:
        ``{"score": float, "acc": float, "feedback": str, "pass_rate": float}``.

    Raises:
        ValueError: unknown ``data_source`` or malformed ``ground_truth``; the message names the row
            (``extra_info.index`` / ``split``).
        TypeError: ``solution_str`` is not a str.
        scgrpo_verl.rewards.sandbox.SandboxError: code data and no working sandbox (one line naming the fix).
    """
    try:
        return _compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)
    except ValueError as error:
        raise ValueError(f"{_row_name(extra_info)} (data_source {data_source!r}): {error}") from error


def _compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                   **kwargs) -> dict:
    task = TASK_OF[canonical_source(data_source)]
    if not isinstance(solution_str, str):
        raise TypeError(f"solution_str must be a str, got {type(solution_str).__name__}")
    if extra_info is not None and not isinstance(extra_info, dict):
        raise TypeError(f"extra_info must be a dict or None, got {type(extra_info).__name__}")
    max_chars = int(kwargs.get("max_feedback_chars", MAX_FEEDBACK_CHARS))
    truncated = is_truncated(extra_info, kwargs)
    if task == "code":
        limits = None
        if "code_time_limit_s" in kwargs or "code_memory_limit_mb" in kwargs:
            from dataclasses import replace

            from .code_exec import DEFAULT_LIMITS
            limits = replace(DEFAULT_LIMITS,
                             wall_time_s=float(kwargs.get("code_time_limit_s", DEFAULT_LIMITS.wall_time_s)),
                             memory_mb=int(kwargs.get("code_memory_limit_mb", DEFAULT_LIMITS.memory_mb)))
        return grade_code(solution_str, ground_truth, truncated=truncated, limits=limits, max_feedback_chars=max_chars,
                          sandbox_mode=kwargs.get("sandbox_mode"))
    if task == "math":
        out = grade_math(solution_str, ground_truth, max_feedback_chars=max_chars)
    elif task == "choice":
        out = grade_choice(solution_str, ground_truth, max_feedback_chars=max_chars)
    else:
        out = grade_tool_call(solution_str, ground_truth, max_feedback_chars=max_chars)
    if truncated and out["feedback"]:
        out["feedback"] = cap("Your response was truncated at the maximum length. " + out["feedback"], max_chars)
    return out
