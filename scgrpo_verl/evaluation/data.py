"""Evaluation inputs: verl RL parquet rows as :class:`Question` s, the reward function, and grading one response.

Rows are verl's RL parquet layout (``prompt`` chat messages, ``data_source``, ``reward_model.ground_truth``,
``extra_info``; see ``data_prep/common.py``). Shared by ``scgrpo-verl eval`` and ``scgrpo-verl ttsd``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from scgrpo_verl.evaluation import EvalError
from scgrpo_verl.teacher.templates import normalize_messages


@dataclass
class Question:
    """One parquet row: ``row`` its position in ``file``; ``index`` its ``extra_info.index`` (else ``row``)."""

    file: str
    row: int
    data_source: str
    index: Any
    messages: list
    ground_truth: Any
    extra_info: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{os.path.basename(self.file)}:{self.row}"


def _plain(value: Any) -> Any:
    """numpy arrays / scalars from parquet -> lists / python scalars (recursively)."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_questions(path: str, limit: Optional[int] = None, indices: Optional[Sequence[int]] = None) -> list[Question]:
    """Rows of a verl RL parquet as :class:`Question` s: the first ``limit`` rows, or the rows ``indices`` (in that
    order); errors name the file, row and column."""
    import pandas as pd

    if not os.path.isfile(path):
        raise EvalError(f"--data {path!r} does not exist")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types
        raise EvalError(f"--data {path!r}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
    missing = [c for c in ("prompt", "data_source", "reward_model") if c not in frame.columns]
    if missing:
        raise EvalError(f"--data {path!r}: missing column(s) {missing}; verl's RL layout has prompt, data_source, "
                        f"reward_model{{ground_truth}}, extra_info (see data_prep/common.py)")
    if limit is not None:
        frame = frame.iloc[:limit]
    records = frame.to_dict("records")
    questions = []
    for row in range(len(records)) if indices is None else indices:
        if not 0 <= row < len(records):
            raise EvalError(f"--data {path!r}: question index {row} out of range (the file has {len(records)} rows)")
        record = records[row]
        messages = _plain(record["prompt"])
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        try:
            messages = normalize_messages(messages)
        except ValueError:
            raise EvalError(f"--data {path!r} row {row}: 'prompt' must be a list of chat messages "
                            f"{{role, content}}, got {str(messages)[:80]!r}") from None
        reward_model = _plain(record["reward_model"])
        if not isinstance(reward_model, dict) or "ground_truth" not in reward_model:
            raise EvalError(f"--data {path!r} row {row}: 'reward_model' has no 'ground_truth'")
        extra = _plain(record.get("extra_info")) or {}
        if not isinstance(extra, dict):
            raise EvalError(f"--data {path!r} row {row}: 'extra_info' must be a dict, got {type(extra).__name__}")
        questions.append(Question(file=path, row=int(row), data_source=str(record["data_source"]),
                                  index=extra.get("index", row), messages=messages,
                                  ground_truth=reward_model["ground_truth"], extra_info=extra))
    return questions


def load_reward_fn(path: Optional[str], name: str = "compute_score") -> Callable:
    """The reward function: ``path`` a .py file or ``pkg://module`` (verl's custom_reward_function convention);
    ``None`` -> :func:`scgrpo_verl.rewards.compute_score`."""
    if path is None:
        from scgrpo_verl.rewards import compute_score

        return compute_score
    if path.startswith("pkg://"):
        try:
            module = importlib.import_module(path[len("pkg://"):])
        except ImportError as exc:
            raise EvalError(f"--reward-path {path!r}: cannot import ({exc})") from None
    else:
        if not os.path.isfile(path):
            raise EvalError(f"--reward-path {path!r} does not exist (a .py file or pkg://module)")
        spec = importlib.util.spec_from_file_location("_scgrpo_eval_reward", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise EvalError(f"--reward-name {name!r}: no such function in {path!r}")
    return fn


def grade(reward_fn: Callable, question: Question, response: str, success_threshold: float = 1.0) -> dict:
    """``score``, ``acc`` (the reward's own ``acc`` when it returns one, else score >= threshold), ``feedback``."""
    result = reward_fn(data_source=question.data_source, solution_str=response, ground_truth=question.ground_truth,
                       extra_info=dict(question.extra_info))
    if isinstance(result, dict):
        score = float(result["score"])
        acc = bool(result["acc"]) if "acc" in result else score >= success_threshold
        feedback = str(result.get("feedback", "") or "")
    else:
        score = float(result)
        acc, feedback = score >= success_threshold, ""
    return {"score": score, "acc": acc, "feedback": feedback}
