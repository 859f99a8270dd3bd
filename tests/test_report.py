"""scgrpo-verl report: the table's numbers are the logged ones (in-loop validation, eval outputs), the paper's numbers and
gaps sit beside them, and every plot holds the logged series."""

from __future__ import annotations

import csv
import json

import pytest

from scgrpo_verl import report as rp
from scgrpo_verl.cli import main as cli_main

TIMES = {1: 1500.0, 2: 1600.0, 3: 1700.0, 4: 9000.0, 5: 9000.0}  # cumulative: 1500, 3100, 4800, 13800, 22800


def _sdpo_history(offset: float, method: str) -> dict:
    """A verl history with in-loop validation at steps 0..5 and the plugin's metrics."""
    # step 0 (the initial model, before any update) is the best value: it must not count as a method's result
    history = {0: {"val-core/sciknoweval/acc/mean@16": 0.90 + offset, "val-aux/sciknoweval/reward/mean@16": 0.1}}
    values = {1: 0.50, 2: 0.62, 3: 0.58, 4: 0.70, 5: 0.66}
    for step in range(1, 6):
        history[step] = {"timing_s/step": TIMES[step], "val-core/sciknoweval/acc/mean@16": values[step] + offset,
                         "actor/pg_loss": 0.01 * step}
        if method == "sdpo":
            history[step].update({
                "self_teacher/frac_groups_with_success": 0.1 * step,
                "self_teacher/frac_rollouts_with_teacher": 0.2 * step,
                "self_teacher/frac_feedback_used": 0.05 * step,
                "self_teacher/num_too_long": 0.0,
                "actor/self_teacher/distill_loss": 0.3,
            })
    return history


def _write_file_logger(path, history, monkeypatch):
    from verl.utils.tracking import FileLogger

    path.parent.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(path))
    logger = FileLogger("p", "e")
    for step, data in history.items():
        logger.log(data, step)
    logger.finish()


def _cumulative():
    total, out = 0.0, {0: 0.0}
    for step in sorted(TIMES):
        total += TIMES[step]
        out[step] = total
    return out


def test_sdpo_table_holds_the_best_logged_value_within_1h_and_5h(tmp_path, monkeypatch, capsys):
    runs = {"grpo:chemistry": _sdpo_history(0.0, "grpo"), "sdpo:chemistry": _sdpo_history(0.05, "sdpo")}
    specs = []
    for label, history in runs.items():
        _write_file_logger(tmp_path / label.replace(":", "_") / "metrics.jsonl", history, monkeypatch)
        specs.append(f"{label}={tmp_path / label.replace(':', '_')}")
    out = tmp_path / "report"
    assert cli_main(["report", *specs, "--paper", "sdpo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out

    # independent: best logged value among validation points whose cumulative timing_s/step is within the budget
    cumulative = _cumulative()
    expected = {}
    for label, history in runs.items():
        series = {s: d["val-core/sciknoweval/acc/mean@16"] for s, d in history.items()}
        for budget, column in ((3600, "avg@16 ≤1h"), (18000, "avg@16 ≤5h")):
            expected[(label.split(":")[0], column)] = max(v for s, v in series.items()
                                                          if s > 0 and cumulative[s] <= budget)
    assert expected[("grpo", "avg@16 ≤1h")] == 0.62 and expected[("grpo", "avg@16 ≤5h")] == 0.70

    with open(out / "table.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["benchmark"] == "chemistry"]
    got = {(r["method"], r["metric"]): r for r in rows}
    paper = {("grpo", "avg@16 ≤1h"): 0.659, ("grpo", "avg@16 ≤5h"): 0.745,
             ("sdpo", "avg@16 ≤1h"): 0.732, ("sdpo", "avg@16 ≤5h"): 0.809}
    for key, value in expected.items():
        assert float(got[key]["ours"]) == pytest.approx(value, abs=1e-12), key
        assert float(got[key]["paper"]) == pytest.approx(paper[key])
        assert float(got[key]["gap"]) == pytest.approx(value - paper[key])
        assert got[key]["data_source"] == "sciknoweval"
        # the Markdown table shows the same cell
        cell = f"{value:.3f} / {paper[key]:.3f} ({value - paper[key]:+.3f})"
        assert cell in printed and cell in (out / "table.md").read_text(), cell
    # the Markdown row is in the paper's layout: Chemistry | GRPO ≤1h | GRPO ≤5h | SDPO ≤1h | SDPO ≤5h
    line = next(l for l in printed.splitlines() if l.startswith("| Chemistry"))
    assert line.count("|") == 6
    # the paper's other domains are listed with "—" for ours
    assert any(l.startswith("| Physics | — / 0.638") for l in printed.splitlines())
    # runs.md lists every logged validation value
    runs_md = (out / "runs.md").read_text()
    assert "in-loop val-core/sciknoweval/acc/mean@16: step 0: 0.9500, step 1: 0.5500, step 2: 0.6700" in runs_md


def test_plots_hold_the_logged_series(tmp_path, monkeypatch):
    history = _sdpo_history(0.05, "sdpo")
    for step in range(1, 6):
        history[step].update({"self_teacher/divergence_p50": 0.01 * step, "self_teacher/divergence_p95": 0.1 * step,
                              "actor/self_teacher/sc_weight_mean": 0.4 + 0.01 * step})
    _write_file_logger(tmp_path / "run" / "metrics.jsonl", history, monkeypatch)
    out = tmp_path / "report"
    result = rp.report([f"sdpo:chemistry={tmp_path / 'run'}"], "sdpo", str(out))
    plots = json.loads((out / "plots.json").read_text())
    assert plots == result.plots
    assert set(plots) == {"val_vs_step", "val_vs_time", "divergence", "teacher_coverage"}
    for name in plots:
        png, svg = out / f"{name}.png", out / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "<svg" in svg.read_text()[:500]

    val = {s: d["val-core/sciknoweval/acc/mean@16"] for s, d in history.items()}
    line = plots["val_vs_step"]["val-core/sciknoweval"]["sdpo:chemistry acc/mean@16"]
    assert line == {"x": [0, 1, 2, 3, 4, 5], "y": [val[s] for s in range(6)]}
    line = plots["val_vs_time"]["val-core/sciknoweval"]["sdpo:chemistry acc/mean@16"]
    cumulative = _cumulative()
    assert line["x"] == pytest.approx([cumulative[s] / 3600 for s in range(6)])  # 22800 s > 2 h: hours
    assert line["y"] == [val[s] for s in range(6)]

    div = plots["divergence"]
    d_panel = div["D = KL(teacher || student) quantiles per step"]
    assert d_panel["sdpo:chemistry divergence_p50"] == {"x": [1, 2, 3, 4, 5], "y": [0.01 * s for s in range(1, 6)]}
    assert d_panel["sdpo:chemistry divergence_p95"]["y"] == pytest.approx([0.1 * s for s in range(1, 6)])
    f_panel = div["f(D) = D/(D+c) per step"]
    assert f_panel["sdpo:chemistry sc_weight_mean"]["y"] == pytest.approx([0.4 + 0.01 * s for s in range(1, 6)])

    coverage = plots["teacher_coverage"]["teacher coverage: sdpo:chemistry"]
    assert set(coverage) == {"frac_groups_with_success", "frac_rollouts_with_teacher", "frac_feedback_used"}
    assert coverage["frac_rollouts_with_teacher"]["y"] == pytest.approx([0.2 * s for s in range(1, 6)])
    assert set(plots["teacher_coverage"]["teacher contexts cut (count): sdpo:chemistry"]) == {"num_too_long"}


def test_sc_grpo_table_takes_eval_outputs_and_compares_the_claims(tmp_path, monkeypatch):
    """Avg@8 / Pass@8 come from the eval outputs (eval wins over in-loop validation); the claims row averages
    SC-GRPO − baseline over the benchmarks measured."""
    evals = {"grpo": {"aime2024": (0.30, 0.60), "aime2025": (0.20, 0.50)},
             "sc_grpo": {"aime2024": (0.40, 0.70), "aime2025": (0.22, 0.56)}}
    specs = []
    for method, per_source in evals.items():
        run = tmp_path / "runs" / method
        _write_file_logger(run / "metrics.jsonl",
                           {0: {"val-core/aime24/acc/mean@8": 0.1}, 1: {"timing_s/step": 5.0,
                                                                        "val-core/aime24/acc/mean@8": 0.11}},
                           monkeypatch)
        edir = tmp_path / "eval" / method
        edir.mkdir(parents=True)
        (edir / "metrics.json").write_text(json.dumps({"data_sources": {
            src: {"num_questions": 30, "n": 8, "avg@8": a, "mean@8": a, "pass@8": p} for src, (a, p) in
            per_source.items()}}))
        specs.append(f"{method}={run}")
    result = rp.report(specs, "sc_grpo", str(tmp_path / "report"), eval_root=str(tmp_path / "eval"), plots=False)
    cells = {(r.benchmark, r.method, r.column): r for r in result.rows}
    assert cells[("aime2024", "sc_grpo", "Avg@8")].ours == 0.40
    assert cells[("aime2024", "sc_grpo", "Avg@8")].source == "eval avg@8"
    assert cells[("aime2025", "grpo", "Pass@8")].ours == 0.50
    # the in-loop validation of data_source aime24 (an alias of aime2024) measures the same benchmark: eval wins
    assert cells[("aime2024", "grpo", "Avg@8")].ours == 0.30
    assert cells[("aime2024", "grpo", "Avg@8")].data_source == "aime2024"
    assert len([r for r in result.rows if r.benchmark == "aime2024" and r.method == "grpo"]) == 2  # Avg@8, Pass@8
    md = result.table_md
    avg_gap = ((0.40 - 0.30) + (0.22 - 0.20)) / 2
    assert f"Avg@8, SC-GRPO − GRPO: ours {avg_gap:+.3f} over 2 benchmark(s), paper +0.0810" in md
    assert "| SC-GRPO | 0.400 / — | 0.700 / — | 0.220 / — | 0.560 / — |" in md


def test_sdpg_table_final_value_and_k_mismatch_is_named(tmp_path, monkeypatch):
    history = {0: {"val-core/aime2024/acc/mean@4": 0.1}, 1: {"timing_s/step": 2.0},
               2: {"timing_s/step": 2.0, "val-core/aime2024/acc/mean@4": 0.25}}
    _write_file_logger(tmp_path / "sdpg" / "metrics.jsonl", history, monkeypatch)
    result = rp.report([str(tmp_path / "sdpg")], "sdpg", str(tmp_path / "out"), plots=False)
    cell = next(r for r in result.rows if r.benchmark == "aime2024" and r.method == "sdpg" and r.run)
    assert cell.ours == 0.25 and cell.paper == 0.380 and cell.gap == pytest.approx(0.25 - 0.380)
    assert cell.source == "val step 2 acc/mean@4"  # the paper's mean@32 was not logged: the k used is named
    assert "| SDPG-URKL | 0.250* / 0.380 (-0.130) |" in result.table_md


def test_report_reads_console_logs_of_a_cpu_run(tmp_path):
    """Without a file-logger jsonl the console log (scgrpo-verl cpu-run's run.log) is read, and the method is the
    --config-name of its first line."""
    run = tmp_path / "x"
    run.mkdir()
    (run / "run.log").write_text(
        "python -m verl.trainer.main_ppo --config-path=pkg://scgrpo_verl.configs --config-name=sc_grpo a=b\n"
        "(TaskRunner pid=3) step:0 - val-core/tiny_parity/acc/mean@4:0.375\n"
        "(TaskRunner pid=3) step:1 - timing_s/step:10.5 - self_teacher/frac_groups_with_success:np.float64(0.5)"
        " - val-core/tiny_parity/acc/mean@4:0.4375\n")
    result = rp.report([str(run)], "sc_grpo", str(tmp_path / "out"))
    assert result.runs[0].method == "sc_grpo"
    cell = next(r for r in result.rows if r.column == "Avg@8")
    assert cell.ours == 0.4375 and cell.benchmark == "tiny_parity"
    assert result.plots["teacher_coverage"]["teacher coverage: sc_grpo"]["frac_groups_with_success"] == {
        "x": [1], "y": [0.5]}


@pytest.mark.parametrize("argv, message", [
    (["report", "/nonexistent", "--paper", "sdpo", "--out", "o"], "does not exist"),
    (["report", "RUN", "--paper", "sdpo", "--out", "o", "--eval", "nolabel"], "expected LABEL=EVAL_DIR"),
    (["report", "RUN", "--paper", "sdpo", "--out", "o", "--eval", "other=/x"], "no run has that label"),
    (["report", "RUN", "--paper", "sdpo", "--out", "o", "--eval-dir", "/nonexistent"], "is not a folder"),
])
def test_report_errors_are_one_line(tmp_path, monkeypatch, capsys, argv, message):
    _write_file_logger(tmp_path / "run" / "metrics.jsonl", {1: {"timing_s/step": 1.0}}, monkeypatch)
    argv = [str(tmp_path / "run") if a == "RUN" else (str(tmp_path / a) if a == "o" else a) for a in argv]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
