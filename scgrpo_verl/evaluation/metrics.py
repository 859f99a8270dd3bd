"""Evaluation metrics (pure functions): pass@k, avg@k / mean@k per data_source.

Metric names (``k`` = samples per question):

* ``avg@k``: mean correctness over all graded samples of a data_source (every sample weighs the same);
* ``mean@k``: mean over questions of the per-question mean correctness (every question weighs the same; this is
  verl's ``val-core/<data_source>/<var>/mean@k``). With exactly k samples per question the two are equal;
* ``pass@k``: mean over questions of the unbiased estimator :func:`pass_at_k`;
* the same means over the reward's ``score`` (not only its 0/1 ``acc``) as ``score/avg@k``, ``score/mean@k``.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from typing import Any, Iterable, Optional, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from c correct of n samples, Chen et al. 2021 eq. (1): 1 - C(n-c, k)/C(n, k).

    Computed as the product 1 - prod_{i=n-c+1..n} (1 - k/i), which never forms the binomials (C(2000, 1000)
    overflows a float). Used by ``scgrpo-verl eval`` (:func:`summarize`) and ``scgrpo-verl ttsd`` (best-of-k)."""
    if not (0 <= c <= n) or k < 1 or k > n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def default_ks(n: int) -> list[int]:
    """pass@k reported for k = 1, 2, 4, ... up to n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    ks.append(n)
    return ks


def summarize(groups: Sequence[Sequence[tuple[float, bool]]], ks: Optional[Sequence[int]] = None) -> dict:
    """Metrics of one data_source from its questions' samples ``[(score, correct), ...]`` per question.

    Returns ``num_questions``, ``num_samples``, ``n`` (the samples per question, when all questions have the
    same count), ``avg@n``, ``mean@n``, ``pass@k`` for ``ks`` (default :func:`default_ks`; only k up to the smallest
    per-question count), and ``score/avg@n``, ``score/mean@n``.
    """
    groups = [list(g) for g in groups if len(g)]
    if not groups:
        return {"num_questions": 0, "num_samples": 0}
    counts = [len(g) for g in groups]
    n = max(counts)
    n_min = min(counts)
    out: dict[str, Any] = {"num_questions": len(groups), "num_samples": sum(counts), "n": n if n == n_min else None}
    flat = [s for g in groups for s in g]
    out[f"avg@{n}"] = sum(float(ok) for _, ok in flat) / len(flat)
    out[f"mean@{n}"] = sum(sum(float(ok) for _, ok in g) / len(g) for g in groups) / len(groups)
    for k in (ks if ks is not None else default_ks(n_min)):
        if 1 <= k <= n_min:
            out[f"pass@{k}"] = sum(pass_at_k(len(g), sum(bool(ok) for _, ok in g), k) for g in groups) / len(groups)
    out[f"score/avg@{n}"] = sum(float(s) for s, _ in flat) / len(flat)
    out[f"score/mean@{n}"] = sum(sum(float(s) for s, _ in g) / len(g) for g in groups) / len(groups)
    return out


def metrics_from_records(records: Iterable[dict], ks: Optional[Sequence[int]] = None) -> dict[str, dict]:
    """Per data_source :func:`summarize` of ``samples.jsonl`` records (grouped by ``question``)."""
    by_source: dict[str, OrderedDict] = defaultdict(OrderedDict)
    for rec in records:
        by_source[rec["data_source"]].setdefault(rec["question"], []).append((rec["score"], rec["acc"]))
    return {ds: summarize(list(qs.values()), ks) for ds, qs in sorted(by_source.items())}
