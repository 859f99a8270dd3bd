"""The runs of ``scgrpo-verl report``: a run folder's verl metrics (:mod:`.verl_logs`), its label
(``method[:setup]``) and its ``scgrpo-verl eval`` output, and the paper benchmark each data_source measures."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Optional

from scgrpo_verl.evaluation import EvalError
from scgrpo_verl.evaluation.verl_logs import read_verl_metrics, validation_series

METHOD_ALIASES = {"sdpg_urkl": "sdpg", "dr_grpo": "drgrpo", "scgrpo": "sc_grpo", "sc-grpo": "sc_grpo"}
SCIENCE_DOMAINS = {"chemistry": "chemistry", "physics": "physics", "biology": "biology", "material": "materials",
                   "materials": "materials"}


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
