"""verl's metric logs read back: the ``file`` tracking backend (jsonl) and the console logger.

The one parser of verl's console lines ``step:N - key:value - ...`` (:func:`parse_step_line`), used by
``scgrpo-verl eval`` / ``report`` (:func:`read_verl_metrics`) and by ``scgrpo-verl cpu-run``
(:mod:`scgrpo_verl.cpu_backend.run`, on the run's live output). :func:`validation_series` picks verl's in-loop
validation metrics (``val-core/<data_source>/<var>/mean@N`` ...) out of a run's history.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Iterable, Optional

from scgrpo_verl.evaluation import EvalError

#: a console-logger line (possibly after a Ray ``(TaskRunner pid=..)`` prefix): group 1 the step, group 2 the values
STEP_LINE = re.compile(r"(?:^|\s)step:(\d+) - (.*)$")
_NUMBER_WRAPPER = re.compile(r"^[A-Za-z_][\w.]*\((.*)\)$")  # np.float64(0.5) -> 0.5
_VAL_KEY = re.compile(r"^(val-core|val-aux)/(.+)/([^/]+)/((?:mean|std|best|worst|maj)@\d+(?:/(?:mean|std))?)$")


def parse_number(value: Any) -> Optional[float]:
    """A logged value as a float: numbers, bools, ``"0.5"``, numpy reprs such as ``np.float64(0.5)``; else None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        match = _NUMBER_WRAPPER.match(text)
        if match:
            text = match.group(1)
        try:
            return float(text)
        except ValueError:
            return None
    return None


def parse_step_line(line: str) -> Optional[tuple[int, dict[str, float]]]:
    """``step:3 - actor/pg_loss:0.1 - ...`` (possibly after a Ray ``(TaskRunner pid=..)`` prefix) -> (3, {...});
    values that are not numbers are left out; None for any other line."""
    match = STEP_LINE.search(line.rstrip("\n"))
    if not match:
        return None
    values = {}
    for item in match.group(2).split(" - "):
        key, sep, value = item.rpartition(":")
        number = parse_number(value) if sep else None
        if number is not None:
            values[key.strip()] = number
    return int(match.group(1)), values


def parse_console_log(lines: Iterable[str]) -> dict[int, dict[str, float]]:
    """verl's console logger lines as ``{step: {key: value}}`` (several lines of one step merged, later wins)."""
    history: dict[int, dict[str, float]] = {}
    for line in lines:
        parsed = parse_step_line(line)
        if parsed:
            history.setdefault(parsed[0], {}).update(parsed[1])
    return history


def parse_file_logger(path: str) -> dict[int, dict[str, float]]:
    """verl's ``file`` backend (``verl/utils/tracking.py::FileLogger``): one ``{"step": s, "data": {...}}`` per line.

    Several lines of one step (the initial validation and step 0's metrics, a resumed run) are merged, later wins.
    """
    history: dict[int, dict[str, float]] = {}
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                step, data = int(entry["step"]), entry["data"]
            except (ValueError, KeyError, TypeError) as exc:
                raise EvalError(f"{path}:{lineno}: not a verl file-logger line ({{\"step\": int, \"data\": {{...}}}}): "
                                f"{exc}") from None
            values = {k: v for k, v in ((k, parse_number(v)) for k, v in data.items()) if v is not None}
            history.setdefault(step, {}).update(values)
    return history


def find_metric_logs(run_dir: str) -> list[str]:
    """verl metric logs under ``run_dir``: file-logger jsonl files (any depth), else ``*.log`` console logs."""
    if os.path.isfile(run_dir):
        return [run_dir]
    jsonl = sorted(p for p in glob.glob(os.path.join(run_dir, "**", "*.jsonl"), recursive=True)
                   if _looks_like_file_logger(p))
    if jsonl:
        return jsonl
    return sorted(glob.glob(os.path.join(run_dir, "*.log")) + glob.glob(os.path.join(run_dir, "**", "*.log"),
                                                                           recursive=True))


def _looks_like_file_logger(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            first = handle.readline()
        entry = json.loads(first)
        return isinstance(entry, dict) and "step" in entry and isinstance(entry.get("data"), dict)
    except (OSError, ValueError):
        return False


def read_verl_metrics(path: str) -> dict[int, dict[str, float]]:
    """All step metrics verl logged for a run: ``{step: {key: value}}``.

    ``path``: a file-logger jsonl, a console log, or a run folder (searched by :func:`find_metric_logs`; the
    file-logger jsonl wins over console logs because it holds every value unformatted).
    """
    if not os.path.exists(path):
        raise EvalError(f"run log {path!r} does not exist")
    files = find_metric_logs(path)
    if not files:
        raise EvalError(f"{path}: no verl metric log found (a file-logger *.jsonl from trainer.logger=[...,file] "
                        f"or a console *.log with 'step:N - key:value' lines)")
    history: dict[int, dict[str, float]] = {}
    for file in files:
        if file.endswith(".jsonl") or _looks_like_file_logger(file):
            part = parse_file_logger(file)
        else:
            with open(file, encoding="utf-8", errors="replace") as handle:
                part = parse_console_log(handle)
        for step, values in part.items():
            history.setdefault(step, {}).update(values)
    if not history:
        raise EvalError(f"{path}: the logs {files} hold no step metrics")
    return dict(sorted(history.items()))


def validation_series(history: dict[int, dict[str, float]], section: str = "val-core") -> dict[str, dict[str, dict[int, float]]]:
    """verl's in-loop validation metrics by data_source: ``{data_source: {"<var>/<metric>": {step: value}}}``.

    Keys are verl's ``<section>/<data_source>/<var>/<metric>`` (``verl/trainer/ppo/v1/trainer_base.py::
    _val_metrics_update``), e.g. ``val-core/aime2024/acc/mean@32``; data sources may contain ``/``.
    """
    out: dict[str, dict[str, dict[int, float]]] = {}
    for step, values in history.items():
        for key, value in values.items():
            match = _VAL_KEY.match(key)
            if match and match.group(1) == section:
                out.setdefault(match.group(2), {}).setdefault(f"{match.group(3)}/{match.group(4)}", {})[step] = value
    return out
