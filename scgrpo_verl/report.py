"""``scgrpo-verl report``: a paper's table and the training plots from verl's logs and ``scgrpo-verl eval`` outputs.

    scgrpo-verl report [LABEL=]RUN_DIR ... --paper {sc_grpo,sdpo,sdpg} --out DIR [--eval LABEL=EVAL_DIR] [--eval-dir D]

* ``RUN_DIR``: a run's folder (or log file) holding verl's metric log: the ``file`` tracking backend's jsonl
  (``trainer.logger=[...,file]``; ``verl/utils/tracking.py::FileLogger`` writes ``{"step": s, "data": {...}}`` lines to
  ``$VERL_FILE_LOGGER_PATH``, default ``./<project>/<experiment>.jsonl``) or a console log (``step:N - key:value``),
  read by :func:`scgrpo_verl.eval.read_verl_metrics`.
* ``LABEL`` = ``method[:setup]``: the method (``grpo``, ``dapo``, ``drgrpo``, ``sc_grpo``, ``sdpo``, ``sdpg``
  [= SDPG-URKL], ``sdpg_ufkl``) and, for SDPO's science runs, the domain (``sdpo:chemistry``). Without a label,
  the method is the ``--config-name`` in the folder's ``run.log`` (``scgrpo-verl cpu-run``), else the folder name.
* Eval outputs (``metrics.json`` of ``scgrpo-verl eval``): ``--eval LABEL=DIR``, or ``--eval-dir ROOT`` with one
  ``ROOT/<method>`` folder per run, or an ``eval/`` folder inside the run folder.

Writes under ``--out``: ``table.md`` / ``table.csv`` (the paper's layout: each cell "ours / paper (gap)", and
a long-form CSV with one row per cell), ``runs.md`` (every run's in-loop validation and eval metrics per
data_source), the plots ``val_vs_step``, ``val_vs_time`` (cumulative ``timing_s/step``, which excludes validation),
``divergence`` (SC-GRPO's D quantiles and f(D) metrics per step), ``teacher_coverage`` (``self_teacher/frac_*``)
as PNG and SVG, and ``plots.json`` (the x/y arrays of every drawn line, read back from the figures).

Paper numbers are those transcribed in the design notes (ALGORITHMS.md): fractions here (papers print 65.9 for
0.659). SC-GRPO's abstract gives only averaged improvements, shown as "claims" under the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

from .eval import EvalError, read_verl_metrics, validation_series

HOUR = 3600.0


# ---------------------------------------------------------------------------------------------------------------
# the papers' tables


@dataclass(frozen=True)
class Column:
    """One metric of a paper's table: ``base`` avg/mean/pass at ``k``; ``within_s``: best in-loop validation
    value after step 0 whose cumulative ``timing_s/step`` is <= within_s (SDPO), else the final value."""

    name: str
    base: str
    k: int
    within_s: Optional[float] = None


@dataclass(frozen=True)
class Paper:
    title: str
    methods: tuple  # (method key, display name)
    benchmarks: tuple  # (benchmark key, display name)
    columns: tuple  # Column
    reported: dict  # (benchmark, method, column name) -> value (fraction)
    rows: str  # "benchmarks": one row per benchmark, a column per (method, metric); "methods": the transpose
    claims: tuple = ()  # (text, method, baseline, column name, claimed difference averaged over benchmarks)
    notes: tuple = ()


_SDPO_REPORTED = {
    # ALGORITHMS.md §2: avg@16, Qwen3-8B, best within 1 h / 5 h; GRPO vs SDPO
    ("chemistry", "grpo"): (65.9, 74.5), ("chemistry", "sdpo"): (73.2, 80.9),
    ("physics", "grpo"): (63.8, 72.7), ("physics", "sdpo"): (66.6, 75.6),
    ("biology", "grpo"): (35.1, 59.9), ("biology", "sdpo"): (50.6, 56.8),
    ("materials", "grpo"): (74.3, 77.1), ("materials", "sdpo"): (72.1, 78.4),
    ("tooluse", "grpo"): (64.9, 67.7), ("tooluse", "sdpo"): (68.0, 68.5),
}

PAPERS = {
    "sc_grpo": Paper(
        title="SC-GRPO (arXiv 2606.18810), Qwen3-8B thinking off: Avg@8 and Pass@8",
        methods=(("grpo", "GRPO"), ("dapo", "DAPO"), ("sc_grpo", "SC-GRPO")),
        benchmarks=(("aime2024", "AIME24"), ("aime2025", "AIME25"), ("livecodebench", "LiveCodeBench v6"),
                    ("codeforces", "Codeforces (OOD)")),
        columns=(Column("Avg@8", "avg", 8), Column("Pass@8", "pass", 8)),
        reported={},
        rows="methods",
        claims=(("Avg@8, SC-GRPO − GRPO", "sc_grpo", "grpo", "Avg@8", 0.081),
                ("Avg@8, SC-GRPO − DAPO", "sc_grpo", "dapo", "Avg@8", 0.0586),
                ("Pass@8, SC-GRPO − DAPO", "sc_grpo", "dapo", "Pass@8", 0.0892)),
        notes=("The paper's per-benchmark numbers are not in our transcription: only its averaged improvements "
               "(read as percentage points over the benchmarks) are compared, in the claims below the table.",),
    ),
    "sdpo": Paper(
        title="SDPO (arXiv 2601.20802), Qwen3-8B: avg@16, best within 1 h and 5 h of cumulative timing_s/step",
        methods=(("grpo", "GRPO"), ("sdpo", "SDPO")),
        benchmarks=(("chemistry", "Chemistry"), ("physics", "Physics"), ("biology", "Biology"),
                    ("materials", "Materials"), ("tooluse", "Tool use"), ("livecodebench", "LiveCodeBench v6")),
        columns=(Column("avg@16 ≤1h", "mean", 16, HOUR), Column("avg@16 ≤5h", "mean", 16, 5 * HOUR)),
        reported={
            **{(b, m, "avg@16 ≤1h"): v[0] / 100 for (b, m), v in _SDPO_REPORTED.items()},
            **{(b, m, "avg@16 ≤5h"): v[1] / 100 for (b, m), v in _SDPO_REPORTED.items()},
        },
        rows="benchmarks",
        notes=("LiveCodeBench v6 (GRPO ~0.41 vs logit-level SDPO ~0.49) is reported as a curve, not at 1 h / 5 h: "
               "no paper cell.",),
    ),
    "sdpg": Paper(
        title="SDPG (arXiv 2606.04036), Qwen3-4B thinking on, step 400: mean@32 at T=1.0, top_p 1.0",
        methods=(("grpo", "GRPO"), ("sdpg", "SDPG-URKL"), ("sdpg_ufkl", "SDPG-UFKL")),
        benchmarks=(("aime2024", "AIME24"), ("aime2025", "AIME25"), ("amc23", "AMC23")),
        columns=(Column("mean@32", "mean", 32),),
        reported={
            ("aime2024", "grpo", "mean@32"): 0.280, ("aime2025", "grpo", "mean@32"): 0.242,
            ("amc23", "grpo", "mean@32"): 0.714,
            ("aime2024", "sdpg", "mean@32"): 0.380, ("aime2025", "sdpg", "mean@32"): 0.307,
            ("amc23", "sdpg", "mean@32"): 0.863,
        },
        rows="methods",
    ),
}

METHOD_ALIASES = {"sdpg_urkl": "sdpg", "dr_grpo": "drgrpo", "scgrpo": "sc_grpo", "sc-grpo": "sc_grpo"}
SCIENCE_DOMAINS = {"chemistry": "chemistry", "physics": "physics", "biology": "biology", "material": "materials",
                   "materials": "materials"}


# ---------------------------------------------------------------------------------------------------------------
# runs


@dataclass
class Run:
    label: str
    method: str
    setup: Optional[str]
    path: str
    history: dict  # {step: {key: value}}
    evaluation: Optional[dict] = None  # eval's metrics.json
    eval_path: Optional[str] = None

    @property
    def val(self) -> dict:
        return validation_series(self.history)

    def cumulative_time(self) -> dict[int, float]:
        """Cumulative ``timing_s/step`` at each logged step (validation time excluded, as verl times it apart);
        step 0 (validation before training) is at 0 s."""
        total, out = 0.0, {}
        for step in sorted(self.history):
            total += self.history[step].get("timing_s/step", 0.0) if step > 0 else 0.0
            out[step] = total
        return out


def _method_from_dir(path: str) -> str:
    log = os.path.join(path, "run.log") if os.path.isdir(path) else None
    if log and os.path.isfile(log):
        with open(log, encoding="utf-8", errors="replace") as handle:
            match = re.search(r"--config-name[= ](\S+)", handle.readline())
        if match:
            return match.group(1)
    return os.path.basename(os.path.normpath(path))


def parse_run_spec(spec: str) -> tuple[Optional[str], str]:
    label, sep, path = spec.partition("=")
    if sep and not os.path.exists(spec) and label and "/" not in label:
        return label, path
    return None, spec


def load_run(spec: str, eval_specs: dict[str, str], eval_root: Optional[str]) -> Run:
    label, path = parse_run_spec(spec)
    if not os.path.exists(path):
        raise EvalError(f"run {spec!r}: {path!r} does not exist")
    label = label or _method_from_dir(path)
    method, _, setup = label.partition(":")
    method = METHOD_ALIASES.get(method.lower(), method.lower())
    run = Run(label=label, method=method, setup=setup or None, path=path, history=read_verl_metrics(path))
    candidates = [eval_specs.get(label)]
    if eval_root:
        candidates.append(os.path.join(eval_root, label.replace(":", "_")))
    if os.path.isdir(path):
        candidates.append(os.path.join(path, "eval"))
    for candidate in candidates:
        if candidate and os.path.isfile(os.path.join(candidate, "metrics.json")):
            with open(os.path.join(candidate, "metrics.json"), encoding="utf-8") as handle:
                run.evaluation = json.load(handle)
            run.eval_path = candidate
            break
        if candidate and candidate == eval_specs.get(label):
            raise EvalError(f"--eval {label}={candidate}: no metrics.json there (scgrpo-verl eval --out writes it)")
    return run


def benchmark_of(data_source: str, setup: Optional[str]) -> str:
    """The paper benchmark a data_source measures: the plugin's canonical name (aliases resolved), with
    SciKnowEval split by the run's setup (its domain); unknown sources keep their name."""
    from scgrpo_verl.rewards import canonical_source

    try:
        name = canonical_source(data_source)
    except ValueError:
        return data_source
    if name == "sciknoweval" and setup:
        return SCIENCE_DOMAINS.get(setup.lower(), setup.lower())
    return name


# ---------------------------------------------------------------------------------------------------------------
# cells


@dataclass
class Cell:
    value: Optional[float]
    source: str = ""  # where the value came from, e.g. "eval avg@8" or "val step 2 acc/mean@4"


def _core_series(series: dict[str, dict[int, float]], base: str, k: int) -> Optional[tuple[str, dict[int, float]]]:
    """The in-loop validation series for avg/mean@k: verl's ``<var>/mean@N`` (acc preferred over reward), N == k if
    logged, else the largest N."""
    if base not in ("avg", "mean"):
        return None
    for var in ("acc", "reward", "score"):
        names = {int(m.group(1)): name for name in series
                 for m in [re.fullmatch(rf"{var}/mean@(\d+)", name)] if m}
        if names:
            n = k if k in names else max(names)
            return names[n], series[names[n]]
    return None


def _eval_value(metrics: dict, base: str, k: int) -> Optional[tuple[str, float]]:
    """avg@k / mean@k / pass@k from an eval data_source entry: k exact, else (avg/mean) the eval's n, else the
    largest pass@j."""
    name = f"{base}@{k}"
    if name in metrics:
        return name, float(metrics[name])
    found = sorted((int(key.split("@")[1]), key) for key in metrics if re.fullmatch(rf"{base}@\d+", key))
    if found:
        return found[-1][1], float(metrics[found[-1][1]])
    return None


def cell_value(run: Run, data_source: str, column: Column) -> Cell:
    """Our number for ``column`` on ``data_source``: best-within-time from verl's in-loop validation; otherwise the
    eval output when there is one, else the last in-loop validation value. The source names any k that differs."""
    series = run.val.get(data_source, {})
    core = _core_series(series, column.base, column.k)
    if column.within_s is not None:
        if not core:
            return Cell(None, "no in-loop validation")
        times = run.cumulative_time()
        # validation after at least one update (step 0 is the initial model, the same for every method)
        inside = {s: v for s, v in core[1].items() if s > 0 and times.get(s, math.inf) <= column.within_s}
        if not inside:
            return Cell(None, f"no validation after training within {column.within_s / HOUR:g} h")
        step = max(inside, key=lambda s: (inside[s], -s))
        return Cell(inside[step], f"val best ≤{column.within_s / HOUR:g}h step {step} {core[0]}")
    if run.evaluation is not None:
        entry = run.evaluation.get("data_sources", {}).get(data_source)
        if entry:
            found = _eval_value(entry, column.base, column.k)
            if found:
                return Cell(found[1], f"eval {found[0]}")
    if core:
        step = max(core[1])
        return Cell(core[1][step], f"val step {step} {core[0]}")
    return Cell(None, "not logged")


def data_sources_of(run: Run) -> list[str]:
    found = set(run.val)
    if run.evaluation:
        found |= set(run.evaluation.get("data_sources", {}))
    return sorted(found)


@dataclass
class TableRow:
    benchmark: str
    data_source: str
    method: str
    run: str
    column: str
    ours: Optional[float]
    paper: Optional[float]
    source: str

    @property
    def gap(self) -> Optional[float]:
        return None if self.ours is None or self.paper is None else self.ours - self.paper


def build_rows(paper: Paper, runs: Sequence[Run]) -> list[TableRow]:
    """One row per (benchmark, method, column): our value (from the run of that method measuring it), the paper's."""
    rows = []
    seen = set()
    for run in runs:
        by_bench: dict[str, list[str]] = {}
        for ds in data_sources_of(run):
            by_bench.setdefault(benchmark_of(ds, run.setup), []).append(ds)
        for bench, sources in by_bench.items():
            for column in paper.columns:
                # several data_source names of one benchmark (aime24 in training, aime2024 from data_prep): the
                # eval output wins, then in-loop validation
                cells = [(ds, cell_value(run, ds, column)) for ds in sources]
                ds, cell = min(cells, key=lambda c: (c[1].value is None, not c[1].source.startswith("eval")))
                rows.append(TableRow(bench, ds, run.method, run.label, column.name, cell.value,
                                     paper.reported.get((bench, run.method, column.name)), cell.source))
                seen.add((bench, run.method, column.name))
    for (bench, method, column), value in paper.reported.items():
        if (bench, method, column) not in seen:
            rows.append(TableRow(bench, "", method, "", column, None, value, "not run"))
    return rows


def _fmt(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _k_differs(row: TableRow) -> bool:
    """Whether our value was measured at another k than the column's (e.g. mean@4 under a mean@32 column)."""
    wanted = re.search(r"@(\d+)", row.column)
    got = re.findall(r"@(\d+)", row.source)
    return bool(wanted and got and got[-1] != wanted.group(1))


def _cell_text(row: Optional[TableRow]) -> str:
    if row is None:
        return "—"
    text = f"{_fmt(row.ours)}{'*' if row.ours is not None and _k_differs(row) else ''} / {_fmt(row.paper)}"
    if row.gap is not None:
        text += f" ({_fmt(row.gap, True)})"
    return text


def markdown_table(paper: Paper, rows: Sequence[TableRow]) -> str:
    """The paper's layout; each cell "ours / paper (ours − paper)"; benchmarks and methods not in the paper follow."""
    method_names = dict(paper.methods)
    bench_names = dict(paper.benchmarks)
    methods = [m for m, _ in paper.methods] + sorted({r.method for r in rows} - set(method_names))
    benches = [b for b, _ in paper.benchmarks] + sorted({r.benchmark for r in rows} - set(bench_names))
    index = {}
    for r in rows:
        index.setdefault((r.benchmark, r.method, r.column), r)
    lines = [f"### {paper.title}", "", "Each cell: ours / paper (ours − paper); fractions (the papers print %); "
             "* = ours measured at another k (see where our numbers come from).", ""]
    columns = [c.name for c in paper.columns]
    if paper.rows == "benchmarks":
        header = ["benchmark"] + [f"{method_names.get(m, m)} {c}" for m in methods for c in columns]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for b in benches:
            cells = [_cell_text(index.get((b, m, c))) for m in methods for c in columns]
            lines.append("| " + " | ".join([bench_names.get(b, b)] + cells) + " |")
    else:
        header = ["method"] + [f"{bench_names.get(b, b)} {c}" for b in benches for c in columns]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for m in methods:
            cells = [_cell_text(index.get((b, m, c))) for b in benches for c in columns]
            lines.append("| " + " | ".join([method_names.get(m, m)] + cells) + " |")
    sources = sorted({f"{r.run}: {r.data_source} {r.column} ← {r.source}" for r in rows if r.run and r.ours is not None})
    if paper.claims:
        lines += ["", "Claims (differences averaged over the paper's benchmarks that we measured):", ""]
        for text, method, base, column, claimed in paper.claims:
            diffs = []
            for b, _ in paper.benchmarks:
                a, z = index.get((b, method, column)), index.get((b, base, column))
                if a and z and a.ours is not None and z.ours is not None:
                    diffs.append(a.ours - z.ours)
            ours = sum(diffs) / len(diffs) if diffs else None
            lines.append(f"- {text}: ours {_fmt(ours, True)} over {len(diffs)} benchmark(s), paper {claimed:+.4f}")
    for note in paper.notes:
        lines += ["", f"Note: {note}"]
    lines += ["", "Where our numbers come from:", ""] + [f"- {s}" for s in sources]
    return "\n".join(lines) + "\n"


def write_csv(path: str, rows: Sequence[TableRow]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["benchmark", "data_source", "method", "run", "metric", "ours", "paper", "gap", "source"])
        for r in rows:
            writer.writerow([r.benchmark, r.data_source, r.method, r.run, r.column,
                             "" if r.ours is None else repr(r.ours), "" if r.paper is None else repr(r.paper),
                             "" if r.gap is None else repr(r.gap), r.source])


def runs_markdown(runs: Sequence[Run]) -> str:
    lines = ["### Runs", ""]
    for run in runs:
        times = run.cumulative_time()
        lines.append(f"**{run.label}** ({run.path}): {len([s for s in run.history if s > 0])} training step(s), "
                     f"{times[max(times)]:.1f} s of cumulative timing_s/step")
        for ds, series in sorted(run.val.items()):
            for name, values in sorted(series.items()):
                if "/mean@" in name:
                    shown = ", ".join(f"step {s}: {v:.4f}" for s, v in sorted(values.items()))
                    lines.append(f"- in-loop val-core/{ds}/{name}: {shown}")
        if run.evaluation:
            for ds, m in sorted(run.evaluation.get("data_sources", {}).items()):
                shown = ", ".join(f"{k}={v:.4f}" for k, v in m.items() if isinstance(v, float))
                lines.append(f"- eval {ds} ({m.get('num_questions')} questions × {m.get('n')}): {shown}")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# plots


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


def chance_level(data_source: str) -> Optional[float]:
    """The accuracy of guessing, for the data sources where it is known: the tiny parity task's answer is 0 or 1."""
    from scgrpo_verl.cpu_backend.assets import PARITY_SOURCE

    return {PARITY_SOURCE: 0.5}.get(data_source)


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


def make_plots(runs: Sequence[Run], out_dir: str, paper: Optional[Paper] = None) -> dict:
    """Write the PNG/SVG plots; return (and save as plots.json) the x/y data of every drawn line, read back from
    the figures' Line2D objects: ``{plot: {panel title: {line label: {"x": [...], "y": [...]}}}}``."""
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
                core = _core_series(run.val.get(ds, {}), "mean", 0)
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
            chance = chance_level(ds)
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


# ---------------------------------------------------------------------------------------------------------------
# the command


@dataclass
class Report:
    table_md: str
    rows: list = field(default_factory=list)
    runs: list = field(default_factory=list)
    plots: dict = field(default_factory=dict)
    out_dir: str = ""


def report(run_specs: Sequence[str], paper_name: str, out_dir: str, eval_specs: Sequence[str] = (),
           eval_root: Optional[str] = None, plots: bool = True) -> Report:
    if paper_name not in PAPERS:
        raise EvalError(f"--paper {paper_name!r}: expected one of {sorted(PAPERS)}")
    if not run_specs:
        raise EvalError("no RUN_DIR given")
    evals = {}
    for spec in eval_specs:
        label, sep, path = spec.partition("=")
        if not sep or not label:
            raise EvalError(f"--eval {spec!r}: expected LABEL=EVAL_DIR (LABEL as in the run list)")
        evals[label] = path
    if eval_root and not os.path.isdir(eval_root):
        raise EvalError(f"--eval-dir {eval_root!r} is not a folder")
    runs = [load_run(spec, evals, eval_root) for spec in run_specs]
    unknown = [label for label in evals if label not in {r.label for r in runs}]
    if unknown:
        raise EvalError(f"--eval {unknown}: no run has that label (labels: {[r.label for r in runs]})")
    paper = PAPERS[paper_name]
    os.makedirs(out_dir, exist_ok=True)
    rows = build_rows(paper, runs)
    table = markdown_table(paper, rows)
    with open(os.path.join(out_dir, "table.md"), "w", encoding="utf-8") as handle:
        handle.write(table)
    with open(os.path.join(out_dir, "runs.md"), "w", encoding="utf-8") as handle:
        handle.write(runs_markdown(runs))
    write_csv(os.path.join(out_dir, "table.csv"), rows)
    drawn = make_plots(runs, out_dir, paper) if plots else {}
    return Report(table_md=table, rows=rows, runs=runs, plots=drawn, out_dir=out_dir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="[LABEL=]RUN_DIR",
                        help="run folders or log files; LABEL = method[:setup], e.g. sdpo:chemistry=runs/x")
    parser.add_argument("--paper", choices=sorted(PAPERS), help="the paper whose table layout to fill (required "
                        "unless --learning)")
    parser.add_argument("--learning", action="store_true",
                        help="instead of a paper's table: validation accuracy against step, one line per method "
                             "with a band over its seeds (the runs sharing a label), and a table initial -> final "
                             "(scgrpo_verl.learning_report)")
    parser.add_argument("--out", required=True, help="output folder: table.md, table.csv, runs.md, plots")
    parser.add_argument("--eval", action="append", default=[], metavar="LABEL=EVAL_DIR",
                        help="scgrpo-verl eval output of a run (repeatable)")
    parser.add_argument("--eval-dir", default=None, help="folder with one eval output folder per run label")
    parser.add_argument("--no-plots", action="store_true")


def run_from_args(args: argparse.Namespace) -> int:
    if args.learning:
        from .learning_report import learning_report

        table, _ = learning_report(args.runs, args.out, plots=not args.no_plots)
        print(table)
        print(f"[report] wrote {os.path.join(args.out, 'learning.md')}, learning.csv"
              + ("" if args.no_plots else ", learning_curves.png/.svg"))
        return 0
    if not args.paper:
        raise EvalError("--paper is required (sc_grpo, sdpg or sdpo) unless --learning is given")
    result = report(args.runs, args.paper, args.out, args.eval, args.eval_dir, plots=not args.no_plots)
    print(result.table_md)
    names = sorted(f"{name}.png/.svg" for name in result.plots)
    print(f"[report] wrote {os.path.join(args.out, 'table.md')}, table.csv, runs.md" + (", " + ", ".join(names) if names else ""))
    return 0
