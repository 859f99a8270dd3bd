"""The plots of ``scgrpo-verl report``: validation vs step and vs cumulative ``timing_s/step``, SC-GRPO's D and
f(D) per step, the teacher coverage; PNG + SVG, and the drawn arrays in ``plots.json``."""

from __future__ import annotations

import json
import math
import os
import re
from typing import Mapping, Optional, Sequence

from scgrpo_verl.evaluation.paper_tables import HOUR, Paper, core_series
from scgrpo_verl.evaluation.runs import Run

TEACHER_COVERAGE = re.compile(r"(?:^|/)self_teacher/(frac_[\w]+|num_too_long)$")
DIVERGENCE = re.compile(r"(?:^|/)self_teacher/(divergence_p\d+)$")
WEIGHT = re.compile(r"(?:^|/)self_teacher/(sc_weight_\w+|weight_p\d+|f_d_p\d+|fd_p\d+)$")


def _series(run: Run, pattern: re.Pattern) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for step, values in sorted(run.history.items()):
        for key, value in values.items():
            match = pattern.search(key)
            if match and math.isfinite(value):
                out.setdefault(match.group(1), {})[step] = value
    return out


def _mark_coinciding(ax) -> None:
    """Lines of a panel with the same points hide each other: draw the later ones dashed with hollow markers and
    say which coincide in a note on the panel."""
    groups: dict = {}
    for line in ax.get_lines():
        if line.get_label().startswith("_"):
            continue
        key = (tuple(float(x) for x in line.get_xdata()), tuple(float(y) for y in line.get_ydata()))
        groups.setdefault(key, []).append(line)
    notes = []
    for lines in groups.values():
        if len(lines) < 2:
            continue
        for line in lines[1:]:
            line.set_linestyle("--")
            line.set_markerfacecolor("none")
            line.set_markersize(line.get_markersize() + 3)
        notes.append(" = ".join(line.get_label() for line in lines))
    if notes:
        ax.text(0.01, 0.01, "same values: " + "; ".join(notes), transform=ax.transAxes, fontsize=6, va="bottom",
                color="dimgrey")
        ax.legend(fontsize=7)  # again, with the new line styles


def _time_unit(seconds: float) -> tuple[str, float]:
    if seconds >= 2 * HOUR:
        return "h", HOUR
    if seconds >= 120:
        return "min", 60.0
    return "s", 1.0


def make_plots(runs: Sequence[Run], out_dir: str, paper: Optional[Paper] = None,
               chance_levels: Optional[Mapping[str, float]] = None) -> dict:
    """Write the PNG/SVG plots; return (and save as plots.json) the x/y data of every drawn line, read back from
    the figures' Line2D objects: ``{plot: {panel title: {line label: {"x": [...], "y": [...]}}}}``.
    ``chance_levels``: the accuracy of guessing per data_source, drawn as a line on its validation panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn: dict = {}

    from matplotlib.ticker import MaxNLocator

    def save(fig, name):
        for ax in fig.axes:
            if ax.get_xlabel() == "training step":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            _mark_coinciding(ax)
        panels = {}
        for ax in fig.axes:
            lines = {line.get_label(): {"x": [float(x) for x in line.get_xdata()],
                                        "y": [float(y) for y in line.get_ydata()]}
                     for line in ax.get_lines() if not line.get_label().startswith("_")}
            if lines:
                panels[ax.get_title()] = lines
        drawn[name] = panels
        fig.tight_layout()
        for ext in ("png", "svg"):
            fig.savefig(os.path.join(out_dir, f"{name}.{ext}"), dpi=110)
        plt.close(fig)

    def grid(n):
        cols = min(n, 3)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
        for ax in axes.flat[n:]:
            ax.set_visible(False)
        return fig, list(axes.flat[:n])

    # validation vs step and vs cumulative wall-clock
    sources = sorted({ds for run in runs for ds in run.val})
    max_time = max((max(run.cumulative_time().values(), default=0.0) for run in runs), default=0.0)
    unit, scale = _time_unit(max_time)
    for name, xlabel in (("val_vs_step", "training step"), ("val_vs_time", f"cumulative timing_s/step ({unit})")):
        if not sources:
            break
        fig, axes = grid(len(sources))
        for ax, ds in zip(axes, sources):
            sizes = []
            for run in runs:
                core = core_series(run.val.get(ds, {}), "mean", 0)
                if not core:
                    continue
                steps = sorted(core[1])
                times = run.cumulative_time()
                xs = steps if name == "val_vs_step" else [times[s] / scale for s in steps]
                ys = [core[1][s] for s in steps]
                (line,) = ax.plot(xs, ys, marker="o", label=f"{run.label} {core[0]}")
                # n per point: k samples of each of the run's validation questions (counted by its eval)
                k = int(core[0].rsplit("@", 1)[1]) if "@" in core[0] and core[0].rsplit("@", 1)[1].isdigit() else None
                questions = ((run.evaluation or {}).get("data_sources", {}).get(ds) or {}).get("num_questions")
                if k and questions:
                    n = k * int(questions)
                    errors = [math.sqrt(max(y * (1 - y), 0.0) / n) if 0 <= y <= 1 else 0.0 for y in ys]
                    ax.vlines(xs, [y - e for y, e in zip(ys, errors)], [y + e for y, e in zip(ys, errors)],
                              color=line.get_color(), alpha=0.5)
                    sizes.append(f"{run.label}: n={questions}x{k}={n}")
                else:
                    sizes.append(f"{run.label}: n={k or '?'} samples x ? questions")
            chance = (chance_levels or {}).get(ds)
            if chance is not None:
                ax.axhline(chance, color="black", linestyle="--", linewidth=0.8, label=f"_chance {chance:g}")
                ax.annotate(f"chance {chance:g}", (0.99, chance), xycoords=("axes fraction", "data"), ha="right",
                            va="bottom", fontsize=7)
            if sizes:
                ax.text(0.01, 0.99, "per point " + "; ".join(sizes) + " (bars: +-1 binomial s.e.)",
                        transform=ax.transAxes, fontsize=6, va="top", color="dimgrey")
            if name == "val_vs_time" and paper is not None:
                for column in paper.columns:
                    if column.within_s is not None and column.within_s <= max_time:
                        ax.axvline(column.within_s / scale, color="grey", linestyle=":")
            ax.set_title(f"val-core/{ds}")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("in-loop validation")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        save(fig, name)

    # SC-GRPO's D and f(D) over training
    with_d = [(run, _series(run, DIVERGENCE), _series(run, WEIGHT)) for run in runs]
    with_d = [(r, d, w) for r, d, w in with_d if d or w]
    if with_d:
        fig, axes = grid(2)
        for run, d, w in with_d:
            for key, values in sorted(d.items()):
                steps = sorted(values)
                axes[0].plot(steps, [values[s] for s in steps], marker="o", label=f"{run.label} {key}")
            for key, values in sorted(w.items()):
                steps = sorted(values)
                axes[1].plot(steps, [values[s] for s in steps], marker="o", label=f"{run.label} {key}")
        axes[0].set_title("D = KL(teacher || student) quantiles per step")
        axes[0].set_yscale("log")
        axes[1].set_title("f(D) = D/(D+c) per step")
        for ax in axes:
            ax.set_xlabel("training step")
            ax.grid(alpha=0.3)
            if ax.get_lines():
                ax.legend(fontsize=7)
        save(fig, "divergence")

    # teacher coverage: fractions on one panel per run, counts (num_*) on a panel of their own
    coverage = [(run, _series(run, TEACHER_COVERAGE)) for run in runs]
    panels = []
    for run, series in coverage:
        fractions = {k: v for k, v in series.items() if not k.startswith("num_")}
        counts = {k: v for k, v in series.items() if k.startswith("num_")}
        if fractions:
            panels.append((f"teacher coverage: {run.label}", "fraction", fractions))
        if counts:
            panels.append((f"teacher contexts cut (count): {run.label}", "count", counts))
    if panels:
        fig, axes = grid(len(panels))
        for ax, (title, ylabel, series) in zip(axes, panels):
            for key, values in sorted(series.items()):
                steps = sorted(values)
                ax.plot(steps, [values[s] for s in steps], marker="o", label=key)
            ax.set_title(title)
            ax.set_xlabel("training step")
            ax.set_ylabel(ylabel)
            if ylabel == "fraction":
                ax.set_ylim(-0.05, 1.05)
            else:
                ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        save(fig, "teacher_coverage")

    with open(os.path.join(out_dir, "plots.json"), "w", encoding="utf-8") as handle:
        json.dump(drawn, handle, indent=1)
    return drawn
