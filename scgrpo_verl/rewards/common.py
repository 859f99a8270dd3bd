"""Helpers shared by the reward graders: feedback sanitising and capping, and the uniform result dict."""

from __future__ import annotations

import re

MAX_FEEDBACK_CHARS = 2000
"""Default cap on every feedback string (characters)."""

MAX_SNIPPET_CHARS = 300
"""Cap on one quoted value inside a feedback string (an answer, a test input, ...)."""

TRUNCATION_MARK = "\n...[truncated]"

# ANSI/VT escape sequences: CSI (ESC [ ... final), OSC/DCS/SOS/PM/APC strings (up to BEL or ST), other ESC pairs,
# and the 8-bit CSI/OSC introducers
_ESCAPES = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?|(?:\x1b\]|\x9d)[^\x07\x1b]*(?:\x07|\x1b\\)?"
                      r"|(?:\x1b[PX^_]|[\x90\x98\x9e\x9f])[^\x1b]*(?:\x1b\\)?|\x1b[ -/]*[0-~]?")
# C0 controls but tab and newline, DEL, C1 controls, bidi embeddings/overrides/isolates and marks, zero-width
# characters, the BOM, interlinear annotation and object replacement characters, surrogates (invalid UTF-8)
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u206f"
                     "\ufeff\ufff9-\ufffc\ud800-\udfff]")


def sanitize(text: str) -> str:
    """``text`` safe to put in a teacher prompt or a log line: valid UTF-8, with ANSI/terminal escape sequences,
    control characters (tab and newline kept; CR and the Unicode line/paragraph separators become newlines) and
    bidirectional / zero-width formatting characters (e.g. U+202E) removed."""
    if not isinstance(text, str):
        text = str(text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
    text = _ESCAPES.sub("", text)
    return _UNSAFE.sub("", text)


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
        ``pass_rate`` in [0, 1] (equal to ``score`` for single-answer tasks), ``feedback`` '' when correct,
        otherwise passed through :func:`sanitize` and capped to ``max_feedback_chars``.
    """
    score = 1.0 if correct else 0.0
    return {
        "score": score,
        "acc": score,
        "feedback": cap(sanitize(feedback), max_feedback_chars) if feedback else "",
        "pass_rate": float(score if pass_rate is None else pass_rate),
    }
