"""Helpers shared by the reward graders: feedback capping and the uniform result dict."""

from __future__ import annotations

MAX_FEEDBACK_CHARS = 2000
"""Default cap on every feedback string (characters)."""

MAX_SNIPPET_CHARS = 300
"""Cap on one quoted value inside a feedback string (an answer, a test input, ...)."""

TRUNCATION_MARK = "\n...[truncated]"


def cap(text: str, limit: int = MAX_FEEDBACK_CHARS) -> str:
    """``text`` shortened to at most ``limit`` characters (a visible marker replaces the cut part)."""
    if limit <= 0:
        raise ValueError(f"feedback limit must be > 0, got {limit}")
    if len(text) <= limit:
        return text
    if limit <= len(TRUNCATION_MARK):
        return text[:limit]
    return text[: limit - len(TRUNCATION_MARK)] + TRUNCATION_MARK


def snippet(text: str, limit: int = MAX_SNIPPET_CHARS) -> str:
    """One quoted value for feedback: stripped and capped to ``limit`` characters."""
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def result(correct: bool, feedback: str = "", pass_rate: float | None = None,
           max_feedback_chars: int = MAX_FEEDBACK_CHARS) -> dict:
    """The dict every grader returns. Keys are identical for all data sources, because verl builds
    ``reward_extra_info`` arrays from the keys of the first sample of a batch.

    Returns:
        ``{"score": float, "acc": float, "feedback": str, "pass_rate": float}``; ``score``/``acc`` are 1.0 or 0.0,
        ``pass_rate`` in [0, 1] (equal to ``score`` for single-answer tasks), ``feedback`` '' when correct.
    """
    score = 1.0 if correct else 0.0
    return {
        "score": score,
        "acc": score,
        "feedback": cap(feedback, max_feedback_chars) if feedback else "",
        "pass_rate": float(score if pass_rate is None else pass_rate),
    }
