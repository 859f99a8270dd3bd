"""Math answers graded with ``math-verify`` (\\boxed{...} and GSM8K ``#### 42`` answers)."""

from __future__ import annotations

import multiprocessing
import re
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout

from .common import MAX_FEEDBACK_CHARS, result, snippet

VERIFY_TIMEOUT_S = 10
"""Seconds allowed for parsing + verifying one answer."""

MAX_ANSWER_CHARS = 1000
"""Longer extracted answers are graded as incorrect without calling sympy (guards against blow-ups)."""

NO_ANSWER_FEEDBACK = "No final answer found in \\boxed{}."

_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` in ``text`` (balanced braces), or ``None``."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
        # unbalanced (e.g. truncated) -> try an earlier one
    return None


def extract_final_answer(text: str) -> str | None:
    """The model's final answer: the last ``\\boxed{}`` content, else the text after the last ``####``."""
    boxed = last_boxed(text)
    if boxed:
        return boxed
    hashes = re.findall(r"####\s*([^\n]+)", text)
    if hashes and hashes[-1].strip():
        return hashes[-1].strip()
    return None


def normalize_ground_truth(ground_truth) -> str:
    """Ground truth as a bare answer string: numbers are formatted, a GSM8K rationale is cut after ``####``,
    surrounding ``$`` and a ``\\boxed{}`` wrapper are removed.

    Raises:
        ValueError: empty or non-scalar ground truth.
    """
    if isinstance(ground_truth, bool) or not isinstance(ground_truth, (str, int, float)):
        raise ValueError(f"math ground truth must be a str or number, got {type(ground_truth).__name__}")
    gt = str(ground_truth).strip()
    if "####" in gt:
        gt = gt.rsplit("####", 1)[1].strip()
    gt = gt.strip("$").strip()
    boxed = last_boxed(gt)
    if boxed is not None and gt.startswith(("\\boxed", "\\fbox")):
        gt = boxed
    if not gt:
        raise ValueError(f"empty math ground truth {ground_truth!r}")
    return gt


def parsed_gold(gold: str, timeout: int | None = VERIFY_TIMEOUT_S) -> bool:
    """Whether math-verify parses the bare answer ``gold`` into a mathematical object (its parse falls back to the
    raw string alone when the LaTeX cannot be read, e.g. ``asdf{{\\frac``). ``timeout`` needs the main thread."""
    import threading as _threading

    from math_verify import parse

    if _threading.current_thread() is not _threading.main_thread():
        timeout = None
    try:
        return any(not isinstance(item, str) for item in parse("\\boxed{" + gold + "}", parsing_timeout=timeout))
    except Exception:  # math-verify's TimeoutException or a sympy failure
        return False


def _verify(gold: str, answer: str, timeout: int | None) -> tuple[bool, bool]:
    """(gold parsed?, equivalent?) with math-verify; both strings are bare answers."""
    from math_verify import parse, verify

    gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=timeout)
    if all(isinstance(item, str) for item in gold_parsed):  # empty, or only the raw-string fallback: unreadable
        return False, False
    pred_parsed = parse("\\boxed{" + answer + "}", parsing_timeout=timeout)
    if not pred_parsed:
        return True, False
    return True, bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def _get_pool() -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
        return _pool


def verify_answer(gold: str, answer: str, timeout_s: int = VERIFY_TIMEOUT_S) -> tuple[bool, bool]:
    """(gold parsed?, equivalent?). math-verify's timeouts use ``SIGALRM``, which only works in the main
    thread; elsewhere (verl calls reward functions from an executor thread) the check runs in a spawned
    worker process with a future timeout. A timeout counts as not equivalent."""
    if threading.current_thread() is threading.main_thread():
        try:
            return _verify(gold, answer, timeout_s)
        except Exception:  # math-verify TimeoutException or a sympy failure on a hostile answer
            return True, False
    try:
        return _get_pool().submit(_verify, gold, answer, timeout_s).result(timeout=timeout_s + 5)
    except FuturesTimeout:
        return True, False


def grade_math(solution_str: str, ground_truth, max_feedback_chars: int = MAX_FEEDBACK_CHARS) -> dict:
    """Grade a math response.

    Args:
        solution_str: the decoded model response.
        ground_truth: bare answer (``"42"``, ``"\\frac{1}{2}"``, ``42``), optionally ``$..$``/``\\boxed{}``-wrapped
            or a full GSM8K rationale ending in ``#### 42``.

    Returns:
        :func:`~scgrpo_verl.rewards.common.result` dict.

    Raises:
        ValueError: the ground truth is empty or math-verify cannot parse it.
    """
    gold = normalize_ground_truth(ground_truth)
    answer = extract_final_answer(solution_str)
    if answer is None:
        return result(False, NO_ANSWER_FEEDBACK, max_feedback_chars=max_feedback_chars)
    wrong = f"Your final answer {snippet(answer)} is incorrect."
    if len(answer) > MAX_ANSWER_CHARS:
        return result(False, wrong, max_feedback_chars=max_feedback_chars)
    gold_ok, equal = verify_answer(gold, answer)
    if not gold_ok:
        raise ValueError(f"math-verify could not parse the ground truth {ground_truth!r}")
    return result(equal, "" if equal else wrong, max_feedback_chars=max_feedback_chars)
