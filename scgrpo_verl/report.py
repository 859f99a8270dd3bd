"""``scgrpo-verl report``: a paper's table and the training plots from verl's logs and ``scgrpo-verl eval`` outputs.

    scgrpo-verl report [LABEL=]RUN_DIR ... --paper {sc_grpo,sdpo,sdpg} --out DIR [--eval LABEL=EVAL_DIR] [--eval-dir D]

* ``RUN_DIR``: a run's folder (or log file) holding verl's metric log: the ``file`` tracking backend's jsonl
  (``trainer.logger=[...,file]``; ``verl/utils/tracking.py::FileLogger`` writes ``{"step": s, "data": {...}}`` lines to
  ``$VERL_FILE_LOGGER_PATH``, default ``./<project>/<experiment>.jsonl``) or a console log (``step:N - key:value``),
  read by :func:`scgrpo_verl.evaluation.verl_logs.read_verl_metrics`.
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

The runs are read by :mod:`scgrpo_verl.evaluation.runs`, the tables made by :mod:`scgrpo_verl.evaluation.paper_tables`
and the plots by :mod:`scgrpo_verl.evaluation.report_plots`; this module is the command.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

from scgrpo_verl.cpu_backend.assets import CHANCE_LEVELS
from scgrpo_verl.evaluation import EvalError
from scgrpo_verl.evaluation.paper_tables import PAPERS, build_rows, markdown_table, runs_markdown, write_csv
from scgrpo_verl.evaluation.report_plots import make_plots
from scgrpo_verl.evaluation.runs import load_run


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
    drawn = make_plots(runs, out_dir, paper, chance_levels=CHANCE_LEVELS) if plots else {}
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
