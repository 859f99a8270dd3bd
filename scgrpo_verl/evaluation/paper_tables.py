"""The papers' tables of ``scgrpo-verl report``: each paper's layout and reported numbers (ALGORITHMS.md), our
value per cell (best in-loop validation within a time budget, an eval output, or the last in-loop validation),
``table.md`` / ``table.csv`` and ``runs.md``."""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from typing import Optional, Sequence

from scgrpo_verl.evaluation.runs import Run, benchmark_of

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


# ---------------------------------------------------------------------------------------------------------------
# cells


@dataclass
class Cell:
    value: Optional[float]
    source: str = ""  # where the value came from, e.g. "eval avg@8" or "val step 2 acc/mean@4"


def core_series(series: dict[str, dict[int, float]], base: str, k: int) -> Optional[tuple[str, dict[int, float]]]:
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
    core = core_series(series, column.base, column.k)
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
