"""The report's runs: cumulative training time from verl's ``timing_s/step``."""

from __future__ import annotations

import math

from scgrpo_verl.evaluation.runs import Run


def test_cumulative_time_excludes_step_zero_and_sums_in_order():
    run = Run("a", "grpo", None, "p", {0: {"timing_s/step": 99.0}, 2: {"timing_s/step": 3.0},
                                       1: {"timing_s/step": 1.5}})
    assert run.cumulative_time() == {0: 0.0, 1: 1.5, 2: 4.5}
    assert not math.isnan(run.cumulative_time()[2])
