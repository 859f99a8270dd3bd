"""Multiple-choice answers (SciKnowEval): the chosen option letter."""

from __future__ import annotations

import re

from .common import MAX_FEEDBACK_CHARS, result
from .math_answers import last_boxed

NO_CHOICE_FEEDBACK = "No answer letter found (expected \\boxed{X} or 'Answer: X')."

_PATTERNS = (
    # case-insensitive lead-in, but the option itself must be a capital letter ("the answer is a ..." is prose)
    re.compile(r"(?i:answer\s*(?:is|:))\s*(?i:option\s*)?\(?\s*([A-Z])\s*\)?(?![A-Za-z])"),
)


def normalize_letter(text: str) -> str | None:
    """``"B"``, ``"(b)"``, ``"\\text{B}"``, ``"B. water"`` -> ``"B"``; anything else -> ``None``."""
    text = re.sub(r"\\text(?:bf)?\{([^{}]*)\}", r"\1", text).strip()
    m = re.fullmatch(r"\(?\s*([A-Za-z])\s*\)?(?:[.:)]\s*.*)?", text, flags=re.DOTALL)
    return m.group(1).upper() if m else None


def extract_choice(text: str) -> str | None:
    """The chosen letter: the last ``\\boxed{}`` if it holds a letter, else the last ``Answer: X`` /
    ``answer is (X)``."""
    boxed = last_boxed(text)
    if boxed is not None:
        letter = normalize_letter(boxed)
        if letter:
            return letter
    found = [m.group(1).upper() for pat in _PATTERNS for m in pat.finditer(text)]
    return found[-1] if found else None


def grade_choice(solution_str: str, ground_truth, max_feedback_chars: int = MAX_FEEDBACK_CHARS) -> dict:
    """Grade a multiple-choice response against a ground-truth letter (``"B"`` or ``"(B)"``).

    Raises:
        ValueError: the ground truth is not a single option letter.
    """
    gold = normalize_letter(ground_truth) if isinstance(ground_truth, str) else None
    if gold is None:
        raise ValueError(f"multiple-choice ground truth must be one option letter, got {ground_truth!r}")
    choice = extract_choice(solution_str)
    if choice is None:
        return result(False, NO_CHOICE_FEEDBACK, max_feedback_chars=max_feedback_chars)
    correct = choice == gold
    return result(correct, "" if correct else f"Your answer {choice} is incorrect.",
                  max_feedback_chars=max_feedback_chars)
