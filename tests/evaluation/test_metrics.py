"""pass@k (one estimator for eval and ttsd) against a naive enumeration of k-subsets, and avg@k / mean@k."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from conftest import enumerated_pass_at_k

from scgrpo_verl import eval as eval_cli
from scgrpo_verl import ttsd
from scgrpo_verl.evaluation.metrics import default_ks, pass_at_k, summarize


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_enumeration_of_k_subsets(n):
    for c in range(n + 1):
        successes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(enumerated_pass_at_k(successes, k)), abs=1e-12), (n, c, k)


def test_pass_at_k_ignores_where_the_successes_are():
    rng = random.Random(0)
    for _ in range(20):
        successes = [rng.random() < 0.4 for _ in range(rng.randint(1, 9))]
        k = rng.randint(1, len(successes))
        assert pass_at_k(len(successes), sum(successes), k) == pytest.approx(
            float(enumerated_pass_at_k(successes, k)), abs=1e-12)


def test_eval_and_ttsd_use_the_one_estimator():
    """eval's metrics and ttsd's best-of-k curve both go through evaluation.metrics.pass_at_k."""
    assert ttsd.pass_at_k is pass_at_k
    successes = [True, False, False, True, False, False, False]
    curve = ttsd.best_of_k_curve([(sum(successes), len(successes))], budget=len(successes))
    assert curve == [pass_at_k(7, 2, k) for k in range(1, 8)]
    records = [{"data_source": "d", "question": "q", "score": float(ok), "acc": ok} for ok in successes]
    metrics = eval_cli.metrics_from_records(records, ks=[1, 3, 7])["d"]
    assert [metrics[f"pass@{k}"] for k in (1, 3, 7)] == [pass_at_k(7, 2, k) for k in (1, 3, 7)]


def test_pass_at_k_is_stable_where_binomials_overflow_floats():
    # C(2000, 1000) ~ 1e600 overflows a float; the product form stays exact to rounding
    n, c, k = 2000, 7, 1000
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    assert pass_at_k(n, 1, 1) == pytest.approx(1 / n)


def test_pass_at_k_rejects_impossible_counts():
    for args in [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)]:
        with pytest.raises(ValueError, match="pass@k needs"):
            pass_at_k(*args)


def test_avg_and_mean_differ_only_with_unequal_sample_counts():
    equal = [[(1.0, True), (0.0, False)], [(1.0, True), (1.0, True)], [(0.0, False), (0.0, False)]]
    m = summarize(equal)
    assert m["avg@2"] == m["mean@2"] == pytest.approx(3 / 6)
    assert m["pass@1"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["pass@2"] == pytest.approx((1 + 1 + 0) / 3)
    unequal = [[(1.0, True), (1.0, True), (1.0, True), (0.5, False)], [(0.0, False), (0.2, False)]]
    m = summarize(unequal)
    assert m["n"] is None and m["num_samples"] == 6 and m["num_questions"] == 2
    assert m["avg@4"] == pytest.approx(3 / 6)  # every sample weighs the same
    assert m["mean@4"] == pytest.approx((3 / 4 + 0) / 2)  # every question weighs the same
    assert m["score/avg@4"] == pytest.approx(3.7 / 6)
    assert m["score/mean@4"] == pytest.approx((3.5 / 4 + 0.2 / 2) / 2)
    # pass@k only up to the smallest per-question count
    assert "pass@2" in m and "pass@4" not in m
    assert m["pass@2"] == pytest.approx((1 + 0) / 2)


def test_default_ks():
    assert default_ks(1) == [1]
    assert default_ks(8) == [1, 2, 4, 8]
    assert default_ks(12) == [1, 2, 4, 8, 12]
