"""Shaped reward for CPU debug runs: verl's own score plus a small dense term.

A random tiny model never answers a math problem, so verl's rule reward is 0 for every rollout, every GRPO
advantage is 0 and the policy gradient vanishes. The dense term (the fraction of ASCII digits in the response, times
:data:`DENSE_WEIGHT`) differs between rollouts of a group, so advantages and the actor update are non-trivial.
Used by :func:`scgrpo_verl.cpu_backend.run.cpu_run` through ``reward.custom_reward_function`` unless disabled.

It returns a dict like :func:`scgrpo_verl.rewards.compute_score` (``score``, ``acc``, ``feedback``), so the feedback
path of SDPO's teacher (verl keeps the extra keys per sample in ``extra_fields["reward_extra_info"]``) runs too.

Data sources: the miniature's parity task (:data:`scgrpo_verl.cpu_backend.assets.PARITY_SOURCE`) is graded by
:func:`grade_parity` (score 1 if the first ``0``/``1`` in the response is the answer, else 0; no dense term, so
"verified" means right), the learning run's find-the-digit task
(:data:`scgrpo_verl.cpu_backend.assets.DIGIT_SOURCE`) by :func:`grade_digit` (the first digit, likewise); every
other source gets verl's default rule reward when verl knows it, else the plugin's
:func:`scgrpo_verl.rewards.compute_score` (e.g. the canonical ``gsm8k`` that ``data_prep`` writes), plus the dense term.
"""

DENSE_WEIGHT = 0.5


def digit_fraction(text: str) -> float:
    return sum(ch.isdigit() for ch in text) / len(text) if text else 0.0


def _grade_first(solution_str: str, ground_truth: str, allowed: str, how: str) -> dict:
    """Score 1.0 when the first character of the response that is in ``allowed`` equals ``ground_truth``."""
    answer = next((ch for ch in solution_str if ch in allowed), None)
    acc = answer == str(ground_truth).strip()
    if acc:
        feedback = ""
    elif answer is None:
        feedback = f"No answer: {how}; the expected answer is {ground_truth}."
    else:
        feedback = f"Wrong answer {answer}: the expected answer is {ground_truth}."
    return {"score": float(acc), "acc": acc, "feedback": feedback}


def grade_parity(solution_str: str, ground_truth: str) -> dict:
    """Score 1.0 when the first ``0`` or ``1`` character of the response equals ``ground_truth``, else 0.0."""
    return _grade_first(solution_str, ground_truth, "01", "reply with 1 (odd) or 0 (even)")


def grade_digit(solution_str: str, ground_truth: str) -> dict:
    """Score 1.0 when the first digit character of the response equals ``ground_truth`` (the find-the-digit task of
    :mod:`scgrpo_verl.cpu_backend.learning`), else 0.0; the feedback names the expected digit."""
    return _grade_first(solution_str, ground_truth, "0123456789", "reply with one digit")


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    from verl.utils.reward_score import default_compute_score

    from scgrpo_verl.cpu_backend.assets import PARITY_SOURCE  # absolute: verl loads this file by path
    from scgrpo_verl.cpu_backend.assets import DIGIT_SOURCE

    if data_source == PARITY_SOURCE:
        return grade_parity(solution_str, ground_truth)
    if data_source == DIGIT_SOURCE:
        return grade_digit(solution_str, ground_truth)
    try:
        base = default_compute_score(data_source, solution_str, ground_truth, extra_info=extra_info)
    except NotImplementedError:
        from scgrpo_verl.rewards import compute_score as plugin_score

        try:
            base = plugin_score(data_source, solution_str, ground_truth, extra_info=extra_info)
        except Exception:
            base = 0.0
    except Exception:
        base = 0.0
    if isinstance(base, dict):
        base = float(base.get("score", 0.0))
    acc = float(base) >= 1.0
    feedback = "" if acc else f"Wrong answer: the expected final answer is {ground_truth}, after '####'."
    return {"score": float(base) + DENSE_WEIGHT * digit_fraction(solution_str), "acc": acc, "feedback": feedback}
