"""``scgrpo-verl report --learning``: validation accuracy against step per method over seeds, and the table
initial -> final (``examples/cpu_learning.sh``).

Every run folder is one (method, seed): the method is the run's label (``scgrpo_verl.evaluation.runs.load_run``: the
``--config-name`` in its ``run.log``), so the seeds of a method are the runs sharing a label. The accuracy is verl's
in-loop validation ``val-core/<data_source>/acc/mean@N`` (the mean over the held-out prompts and their N samples),
averaged over data sources when there are several.

Writes under ``--out``: ``learning_curves.png`` / ``.svg`` (one line per method = the mean over seeds, a band from
the lowest to the highest seed), ``learning.md`` and ``learning.csv`` (per method: seeds, initial and final accuracy
as mean +- sample standard deviation over seeds, the per-seed change and how many seeds improved), and
``learning_curves.json`` (the plotted numbers).
"""

from __future__ import annotations

import csv
import json
import os
import re
import statistics
from dataclasses import dataclass
from typing import Sequence

from scgrpo_verl.evaluation import EvalError
from scgrpo_verl.evaluation.runs import load_run

ACC_KEY = re.compile(r"^acc/mean@(\d+)$")


def accuracy_series(run) -> dict[int, float]:
    """``{step: validation accuracy}`` of a run: ``acc/mean@N`` averaged over its data sources."""
    per_step: dict[int, list[float]] = {}
    for data_source, metrics in run.val.items():
        keys = [key for key in metrics if ACC_KEY.match(key)]
        if not keys:
            continue
        key = max(keys, key=lambda k: int(ACC_KEY.match(k).group(1)))
        for step, value in metrics[key].items():
            per_step.setdefault(step, []).append(value)
    if not per_step:
        raise EvalError(f"run {run.path!r}: no in-loop validation accuracy (val-core/<data_source>/acc/mean@N); "
                        "run with trainer.test_freq > 0 and trainer.val_before_train=True")
    return {step: statistics.fmean(values) for step, values in sorted(per_step.items())}


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


@dataclass
class LearningRow:
    method: str
    seeds: int
    initial: tuple[float, float]  # mean, sample sd over seeds
    final: tuple[float, float]
    change: tuple[float, float]  # per-seed final - initial
    improved: int  # seeds whose final accuracy is above their initial one
    final_step: int


def learning_rows(series: dict[str, list[dict[int, float]]]) -> list[LearningRow]:
    """One row per method from its seeds' series: initial = the first validated step (0 with val_before_train),
    final = the last step every seed validated."""
    rows = []
    for method, runs in series.items():
        first = min(min(s) for s in runs)
        common = set.intersection(*(set(s) for s in runs))
        last = max(common)
        initial = [s[first] for s in runs]
        final = [s[last] for s in runs]
        change = [f - i for i, f in zip(initial, final)]
        rows.append(LearningRow(method, len(runs), _mean_sd(initial), _mean_sd(final), _mean_sd(change),
                                sum(c > 0 for c in change), last))
    return rows


def learning_markdown(rows: Sequence[LearningRow]) -> str:
    lines = ["| method | seeds | initial | final (step) | change | seeds improved |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.method} | {r.seeds} | {r.initial[0]:.3f} ± {r.initial[1]:.3f} | "
                     f"{r.final[0]:.3f} ± {r.final[1]:.3f} ({r.final_step}) | {r.change[0]:+.3f} ± {r.change[1]:.3f} "
                     f"| {r.improved}/{r.seeds} |")
    lines.append("")
    lines.append("Validation accuracy (verl's val-core acc/mean@N: held-out prompts x N samples); mean ± sample "
                 "standard deviation over seeds.")
    return "\n".join(lines) + "\n"


def plot_learning_curves(series: dict[str, list[dict[int, float]]], out_dir: str) -> dict:
    """Mean over seeds per method with a min-max band; writes learning_curves.png/.svg/.json, returns the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    drawn = {}
    for method, runs in series.items():
        steps = sorted(set.intersection(*(set(s) for s in runs)))
        values = [[s[step] for s in runs] for step in steps]
        mean = [statistics.fmean(v) for v in values]
        low, high = [min(v) for v in values], [max(v) for v in values]
        line, = ax.plot(steps, mean, marker="o", label=f"{method} ({len(runs)} seeds)")
        if len(runs) > 1:
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.18, linewidth=0)
        drawn[method] = {"step": steps, "mean": mean, "min": low, "max": high, "seeds": len(runs)}
    ax.set_xlabel("training step")
    ax.set_ylabel("validation accuracy")
    ax.set_title("validation accuracy (mean over seeds; band: lowest to highest seed)")
    ax.title.set_fontsize(9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(os.path.join(out_dir, f"learning_curves.{ext}"), dpi=110)
    plt.close(fig)
    with open(os.path.join(out_dir, "learning_curves.json"), "w", encoding="utf-8") as handle:
        json.dump(drawn, handle, indent=1)
    return drawn


def learning_report(run_specs: Sequence[str], out_dir: str, plots: bool = True) -> tuple[str, list[LearningRow]]:
    """Read the runs, write learning.md / learning.csv (and the plot); return (markdown, rows)."""
    if not run_specs:
        raise EvalError("no RUN_DIR given")
    series: dict[str, list[dict[int, float]]] = {}
    for spec in run_specs:
        run = load_run(spec, {}, None)
        series.setdefault(run.label, []).append(accuracy_series(run))
    os.makedirs(out_dir, exist_ok=True)
    rows = learning_rows(series)
    table = learning_markdown(rows)
    with open(os.path.join(out_dir, "learning.md"), "w", encoding="utf-8") as handle:
        handle.write(table)
    with open(os.path.join(out_dir, "learning.csv"), "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "seeds", "initial_mean", "initial_sd", "final_step", "final_mean", "final_sd",
                         "change_mean", "change_sd", "seeds_improved"])
        for r in rows:
            writer.writerow([r.method, r.seeds, *r.initial, r.final_step, *r.final, *r.change, r.improved])
    if plots:
        plot_learning_curves(series, out_dir)
    return table, rows
