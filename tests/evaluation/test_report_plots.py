"""The report's plots: the validation panel's chance line, n per point and coinciding lines (the figures read back)."""

from __future__ import annotations

from scgrpo_verl.evaluation.report_plots import make_plots
from scgrpo_verl.evaluation.runs import Run


def test_validation_plot_has_chance_n_per_point_and_notes_coinciding_lines(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    history = {s: {"val-core/tiny_parity/acc/mean@4": 0.5 + 0.05 * s, "timing_s/step": 10.0} for s in range(3)}
    evaluation = {"data_sources": {"tiny_parity": {"num_questions": 8, "n": 8}}}
    runs = [Run(label, label, None, str(tmp_path), history, evaluation) for label in ("grpo", "sc_grpo")]
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figures to read them back
    drawn = make_plots(runs, str(tmp_path), chance_levels={"tiny_parity": 0.5})
    panel = drawn["val_vs_step"]["val-core/tiny_parity"]
    assert set(panel) == {"grpo acc/mean@4", "sc_grpo acc/mean@4"}  # the chance line is not a run's line
    ax = figures[0].axes[0]
    chance = [line for line in ax.get_lines() if line.get_label() == "_chance 0.5"]
    assert chance and list(chance[0].get_ydata()) == [0.5, 0.5]
    texts = [t.get_text() for t in ax.texts]
    assert "chance 0.5" in texts
    assert "per point grpo: n=8x4=32; sc_grpo: n=8x4=32 (bars: +-1 binomial s.e.)" in texts
    assert "same values: grpo acc/mean@4 = sc_grpo acc/mean@4" in texts
    hidden = [line for line in ax.get_lines() if line.get_label() == "sc_grpo acc/mean@4"][0]
    assert hidden.get_linestyle() == "--" and hidden.get_markerfacecolor() == "none"
