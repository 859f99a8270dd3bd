"""Shaped reward for CPU debug runs: verl's own score plus a small dense term.

A random tiny model never answers a math problem, so verl's rule reward is 0 for every rollout, every GRPO
advantage is 0 and the policy gradient vanishes. The dense term (the fraction of ASCII digits in the response, times
:data:`DENSE_WEIGHT`) differs between rollouts of a group, so advantages and the actor update are non-trivial.
Used by :func:`scgrpo_verl.cpu_backend.run.cpu_run` through ``reward.custom_reward_function`` unless disabled.

It returns a dict like :func:`scgrpo_verl.rewards.compute_score` (``score``, ``acc``, ``feedback``), so the feedback
path of SDPO's teacher (verl keeps the extra keys per sample in ``extra_fields["reward_extra_info"]``) runs too.
"""

DENSE_WEIGHT = 0.5


def digit_fraction(text: str) -> float:
    return sum(ch.isdigit() for ch in text) / len(text) if text else 0.0


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    from verl.utils.reward_score import default_compute_score

    try:
        base = default_compute_score(data_source, solution_str, ground_truth, extra_info=extra_info)
    except Exception:
        base = 0.0
    if isinstance(base, dict):
        base = float(base.get("score", 0.0))
    acc = float(base) >= 1.0
    feedback = "" if acc else f"Wrong answer: the expected final answer is {ground_truth}, after '####'."
    return {"score": float(base) + DENSE_WEIGHT * digit_fraction(solution_str), "acc": acc, "feedback": feedback}
