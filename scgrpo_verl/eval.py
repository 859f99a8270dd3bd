"""``scgrpo-verl eval``: sample a checkpoint on verl-format validation parquets and grade it in the papers' metrics.

    scgrpo-verl eval --model-path CKPT --data VAL.parquet [--data more.parquet] --n 8 --temperature 1.0 --top-p 1.0
                     --max-new-tokens 4096 --out DIR [--backend auto|vllm|hf] [--limit M]

* ``CKPT``: a Hugging Face model folder, or a verl checkpoint (``global_step_X`` or ``global_step_X/actor`` with FSDP
  shards ``model_world_size_W_rank_R.pt`` and ``huggingface/``), merged first with verl's own
  :mod:`verl.model_merger` into a temporary HF folder.
* Rows are verl's RL parquet layout (``prompt`` chat messages, ``data_source``, ``reward_model.ground_truth``,
  ``extra_info``; see ``data_prep/common.py``). The tokenizer's chat template is applied with
  ``add_generation_prompt=True`` and the ``apply_chat_template_kwargs`` given (``--enable-thinking`` /
  ``--disable-thinking`` / ``--chat-template-kwargs JSON``), as verl's ``data.apply_chat_template_kwargs`` does.
* ``n`` samples per prompt with vLLM when it is installed (``--backend auto``), else Hugging Face ``generate``.
* Every sample is graded by the same reward function as training: the plugin's
  :func:`scgrpo_verl.rewards.compute_score` unless ``--reward-path``/``--reward-name`` name another (as verl's
  ``reward.custom_reward_function`` does).

Outputs under ``--out``: ``samples.jsonl`` (one record per sample: data_source, index, sample, response, score,
acc, feedback, ...) and ``metrics.json`` (per data_source, see :func:`summarize`).

Metric names (``k`` = samples per question, here ``n``):

* ``avg@k``: mean correctness over all graded samples of a data_source (every sample weighs the same);
* ``mean@k``: mean over questions of the per-question mean correctness (every question weighs the same; this is
  verl's ``val-core/<data_source>/<var>/mean@k``). With exactly k samples per question the two are equal; they
  differ only when questions have different sample counts. SC-GRPO's "Avg@8", SDPO's "avg@16" and SDPG's
  "mean@32" all denote this number (accuracy averaged over k samples per problem, then over problems);
* ``pass@k``: mean over questions of the unbiased estimator 1 - C(n-c, k)/C(n, k) (n samples, c correct);
* the same means over the reward's ``score`` (not only its 0/1 ``acc``) as ``score/avg@k``, ``score/mean@k``.

:func:`read_verl_metrics` / :func:`validation_series` read verl's own in-loop validation metrics
(``val-core/<data_source>/<var>/mean@N`` ...) from its ``file`` tracking backend or its console log; the report
(:mod:`scgrpo_verl.report`) uses them too.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import importlib.util
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections import OrderedDict, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

from scgrpo_verl.errors import UserError


class EvalError(UserError, ValueError):
    """A user-facing error: one line naming the file, row or option and what is allowed (the CLI prints it so)."""


# ---------------------------------------------------------------------------------------------------------------
# metrics (pure functions)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator 1 - C(n-c, k)/C(n, k) (Chen et al. 2021, eq. 1), as the product
    1 - prod_{i=n-c+1..n} (1 - k/i), which never forms the binomials."""
    if not (0 <= c <= n) or k < 1 or k > n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def default_ks(n: int) -> list[int]:
    """pass@k reported for k = 1, 2, 4, ... up to n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    ks.append(n)
    return ks


def summarize(groups: Sequence[Sequence[tuple[float, bool]]], ks: Optional[Sequence[int]] = None) -> dict:
    """Metrics of one data_source from its questions' samples ``[(score, correct), ...]`` per question.

    Returns ``num_questions``, ``num_samples``, ``n`` (the samples per question, when all questions have the
    same count), ``avg@n``, ``mean@n``, ``pass@k`` for ``ks`` (default :func:`default_ks`; only k up to the smallest
    per-question count), and ``score/avg@n``, ``score/mean@n``.
    """
    groups = [list(g) for g in groups if len(g)]
    if not groups:
        return {"num_questions": 0, "num_samples": 0}
    counts = [len(g) for g in groups]
    n = max(counts)
    n_min = min(counts)
    out: dict[str, Any] = {"num_questions": len(groups), "num_samples": sum(counts), "n": n if n == n_min else None}
    flat = [s for g in groups for s in g]
    out[f"avg@{n}"] = sum(float(ok) for _, ok in flat) / len(flat)
    out[f"mean@{n}"] = sum(sum(float(ok) for _, ok in g) / len(g) for g in groups) / len(groups)
    for k in (ks if ks is not None else default_ks(n_min)):
        if 1 <= k <= n_min:
            out[f"pass@{k}"] = sum(pass_at_k(len(g), sum(bool(ok) for _, ok in g), k) for g in groups) / len(groups)
    out[f"score/avg@{n}"] = sum(float(s) for s, _ in flat) / len(flat)
    out[f"score/mean@{n}"] = sum(sum(float(s) for s, _ in g) / len(g) for g in groups) / len(groups)
    return out


def metrics_from_records(records: Iterable[dict], ks: Optional[Sequence[int]] = None) -> dict[str, dict]:
    """Per data_source :func:`summarize` of ``samples.jsonl`` records (grouped by ``question``)."""
    by_source: dict[str, OrderedDict] = defaultdict(OrderedDict)
    for rec in records:
        by_source[rec["data_source"]].setdefault(rec["question"], []).append((rec["score"], rec["acc"]))
    return {ds: summarize(list(qs.values()), ks) for ds, qs in sorted(by_source.items())}


# ---------------------------------------------------------------------------------------------------------------
# verl's own logs: the `file` tracking backend (jsonl) and the console logger


_STEP_LINE = re.compile(r"(?:^|\s)step:(\d+) - (.*)$")
_NUMBER_WRAPPER = re.compile(r"^[A-Za-z_][\w.]*\((.*)\)$")  # np.float64(0.5) -> 0.5
_VAL_KEY = re.compile(r"^(val-core|val-aux)/(.+)/([^/]+)/((?:mean|std|best|worst|maj)@\d+(?:/(?:mean|std))?)$")


def _number(value: Any) -> Optional[float]:
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
            values = {k: v for k, v in ((k, _number(v)) for k, v in data.items()) if v is not None}
            history.setdefault(step, {}).update(values)
    return history


def parse_console_log(lines: Iterable[str]) -> dict[int, dict[str, float]]:
    """verl's console logger lines ``step:N - key:value - ...`` (possibly after a Ray ``(TaskRunner pid=..)`` prefix)."""
    history: dict[int, dict[str, float]] = {}
    for line in lines:
        match = _STEP_LINE.search(line.rstrip("\n"))
        if not match:
            continue
        values = {}
        for item in match.group(2).split(" - "):
            key, sep, value = item.rpartition(":")
            number = _number(value) if sep else None
            if number is not None:
                values[key.strip()] = number
        history.setdefault(int(match.group(1)), {}).update(values)
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


# ---------------------------------------------------------------------------------------------------------------
# inputs: checkpoint, data, reward function


def resolve_model(path: str, workdir: str) -> str:
    """An HF model folder for ``path``: itself when it holds ``config.json``, else a verl FSDP checkpoint merged with
    :mod:`verl.model_merger` into ``workdir/merged_hf``."""
    if not os.path.isdir(path):
        raise EvalError(f"--model-path {path!r} is not a folder (an HF model folder or verl's global_step_X[/actor])")
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    actor = os.path.join(path, "actor")
    if os.path.isdir(actor) and not glob.glob(os.path.join(path, "model_world_size_*_rank_*.pt")):
        path = actor
    shards = glob.glob(os.path.join(path, "model_world_size_*_rank_*.pt"))
    hf_config = os.path.join(path, "huggingface")
    if not shards or not os.path.isdir(hf_config):
        raise EvalError(f"--model-path {path!r}: neither an HF model folder (config.json) nor a verl FSDP checkpoint "
                        f"(model_world_size_*_rank_*.pt and huggingface/)")
    from verl.model_merger.base_model_merger import ModelMergerConfig
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger

    target = os.path.join(workdir, "merged_hf")
    config = ModelMergerConfig(operation="merge", backend="fsdp", local_dir=path, target_dir=target,
                               hf_model_config_path=hf_config)
    merger = FSDPModelMerger(config)
    merger.merge_and_save()
    merger.cleanup()
    # the tokenizer and generation config travel in huggingface/
    for name in os.listdir(hf_config):
        if not os.path.exists(os.path.join(target, name)) and os.path.isfile(os.path.join(hf_config, name)):
            shutil.copy2(os.path.join(hf_config, name), target)
    return target


@dataclass
class Question:
    file: str
    row: int
    data_source: str
    index: Any
    messages: list
    ground_truth: Any
    extra_info: dict

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


def load_questions(path: str, limit: Optional[int] = None) -> list[Question]:
    """Rows of a verl RL parquet as :class:`Question` s; errors name the file, row and column."""
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
    questions = []
    for row, record in enumerate(frame.to_dict("records")):
        messages = _plain(record["prompt"])
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if not (isinstance(messages, list) and messages
                and all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)):
            raise EvalError(f"--data {path!r} row {row}: 'prompt' must be a list of chat messages "
                            f"{{role, content}}, got {str(messages)[:80]!r}")
        reward_model = _plain(record["reward_model"])
        if not isinstance(reward_model, dict) or "ground_truth" not in reward_model:
            raise EvalError(f"--data {path!r} row {row}: 'reward_model' has no 'ground_truth'")
        extra = _plain(record.get("extra_info")) or {}
        if not isinstance(extra, dict):
            raise EvalError(f"--data {path!r} row {row}: 'extra_info' must be a dict, got {type(extra).__name__}")
        questions.append(Question(file=path, row=row, data_source=str(record["data_source"]),
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


# ---------------------------------------------------------------------------------------------------------------
# generation backends


@dataclass
class Sampling:
    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int = 0

    def __post_init__(self):
        if self.n < 1:
            raise EvalError(f"--n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise EvalError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EvalError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise EvalError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature == 0 and self.n > 1:
            raise EvalError(f"--temperature 0 is greedy decoding: --n {self.n} would repeat one sample; use --n 1")


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def generate_vllm(model_path: str, prompt_ids: list[list[int]], sampling: Sampling, **llm_kwargs) -> list[list[dict]]:
    """n samples per prompt with vLLM's offline ``LLM``; returns ``[[{"text", "num_tokens", "truncated"}] * n]``."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_path, seed=sampling.seed, **llm_kwargs)
    params = SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                            max_tokens=sampling.max_new_tokens, seed=sampling.seed)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params)
    return [[{"text": o.text, "num_tokens": len(o.token_ids), "truncated": o.finish_reason == "length"}
             for o in out.outputs] for out in outputs]


def generate_hf(model_path: str, prompt_ids: list[list[int]], sampling: Sampling, tokenizer,
                batch_sequences: int = 256) -> list[list[dict]]:
    """n samples per prompt with Hugging Face ``generate``: prompts left-padded into batches of up to
    ``batch_sequences`` sequences (prompts x n); returns ``[[{"text", "num_tokens", "truncated"}] * n]``."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(sampling.seed)
    dtype = torch.float32 if not torch.cuda.is_available() else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    if torch.cuda.is_available():
        model = model.cuda()
    model.eval()
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
    kwargs = dict(max_new_tokens=sampling.max_new_tokens, num_return_sequences=sampling.n, pad_token_id=pad,
                  eos_token_id=sorted(eos_ids) or None)
    if sampling.temperature > 0:
        kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    else:
        kwargs.update(do_sample=False)
    per_batch = max(1, batch_sequences // sampling.n)
    results = []
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda x, **_: x  # noqa: E731
    for start in tqdm(range(0, len(prompt_ids), per_batch), desc="generate (hf)", file=sys.stderr):
        batch = prompt_ids[start:start + per_batch]
        width = max(len(ids) for ids in batch)
        inputs = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=model.device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=model.device)
        with torch.no_grad():
            out = model.generate(inputs, attention_mask=mask, **kwargs)
        sequences = out[:, width:].tolist()
        for i in range(len(batch)):
            samples = []
            for seq in sequences[i * sampling.n:(i + 1) * sampling.n]:
                length = next((pos for pos, tok in enumerate(seq) if tok in eos_ids), len(seq))
                ended = length < len(seq)
                text = tokenizer.decode(seq[:length], skip_special_tokens=True)
                samples.append({"text": text, "num_tokens": length + int(ended),
                                "truncated": not ended and length >= sampling.max_new_tokens})
            results.append(samples)
    return results


def chat_prompt_ids(tokenizer, messages: list, template_kwargs: dict) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **template_kwargs)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------------------------------------------
# the command


@dataclass
class EvalResult:
    out_dir: str
    samples_path: str
    metrics_path: str
    metrics: dict = field(default_factory=dict)


def evaluate(model_path: str, data: Sequence[str], sampling: Sampling, out_dir: str, backend: str = "auto",
             limit: Optional[int] = None, template_kwargs: Optional[dict] = None, reward_path: Optional[str] = None,
             reward_name: str = "compute_score", success_threshold: float = 1.0, ks: Optional[Sequence[int]] = None,
             verl_log: Optional[str] = None, tensor_parallel_size: int = 1) -> EvalResult:
    """Generate, grade and write ``samples.jsonl`` + ``metrics.json`` under ``out_dir`` (see the module docstring)."""
    if backend not in ("auto", "vllm", "hf"):
        raise EvalError(f"--backend {backend!r}: expected auto, vllm or hf")
    if backend == "vllm" and not vllm_available():
        raise EvalError("--backend vllm: vllm is not installed (pip install -e '.[gpu]'), or use --backend hf")
    if tensor_parallel_size < 1:
        raise EvalError(f"--tensor-parallel-size must be >= 1, got {tensor_parallel_size}")
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be >= 1, got {limit}")
    if ks:
        bad = [k for k in ks if not 1 <= k <= sampling.n]
        if bad:
            raise EvalError(f"--pass-k {bad}: each k must be in 1..--n ({sampling.n})")
    template_kwargs = dict(template_kwargs or {})
    questions = [q for path in data for q in load_questions(path, limit)]
    if not questions:
        raise EvalError(f"--data {list(data)}: no rows")
    reward_fn = load_reward_fn(reward_path, reward_name)
    if reward_path is None:  # fail before generating: every data_source must be one the plugin's reward grades
        from scgrpo_verl.rewards import canonical_source

        for q in questions:
            try:
                canonical_source(q.data_source)
            except ValueError as exc:
                raise EvalError(f"--data {q.file!r} row {q.row}: {exc}; pass the training run's reward function "
                                f"with --reward-path/--reward-name") from None
    os.makedirs(out_dir, exist_ok=True)
    chosen = "vllm" if backend == "vllm" or (backend == "auto" and vllm_available()) else "hf"
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="scgrpo_eval_") as workdir:
        hf_path = resolve_model(model_path, workdir)
        tokenizer = AutoTokenizer.from_pretrained(hf_path)
        prompt_ids = [chat_prompt_ids(tokenizer, q.messages, template_kwargs) for q in questions]
        start = time.monotonic()
        if chosen == "vllm":
            generations = generate_vllm(hf_path, prompt_ids, sampling, tensor_parallel_size=tensor_parallel_size)
        else:
            generations = generate_hf(hf_path, prompt_ids, sampling, tokenizer)
        gen_s = time.monotonic() - start
    records = []
    for q, samples in zip(questions, generations):
        for sample_id, sample in enumerate(samples):
            try:
                graded = grade(reward_fn, q, sample["text"], success_threshold)
            except Exception as exc:  # the reward function's own error, named with the row it failed on
                raise EvalError(f"--data {q.file!r} row {q.row}: the reward function failed on sample {sample_id}: "
                                f"{type(exc).__name__}: {exc}") from None
            records.append({"data_source": q.data_source, "index": q.index, "question": q.key, "sample": sample_id,
                            "response": sample["text"], "score": graded["score"], "acc": graded["acc"],
                            "feedback": graded["feedback"], "num_tokens": sample["num_tokens"],
                            "truncated": sample["truncated"], "ground_truth": _jsonable(q.ground_truth),
                            "file": q.file, "row": q.row})
    samples_path = os.path.join(out_dir, "samples.jsonl")
    with open(samples_path, "w", encoding="utf-8") as handle:
        for rec in records:
            handle.write(json.dumps(rec, ensure_ascii=False) + "\n")
    metrics = {
        "model_path": os.path.abspath(model_path),
        "data": [os.path.abspath(p) for p in data],
        "backend": chosen,
        "sampling": asdict(sampling),
        "chat_template_kwargs": template_kwargs,
        "reward": f"{reward_path or 'pkg://scgrpo_verl.rewards'}:{reward_name}",
        "generation_s": gen_s,
        "data_sources": metrics_from_records(records, ks),
    }
    if verl_log:
        history = read_verl_metrics(verl_log)
        metrics["verl_validation"] = {ds: {name: {str(s): v for s, v in series.items()} for name, series in m.items()}
                                      for ds, m in validation_series(history).items()}
    metrics_path = os.path.join(out_dir, "metrics.json")
    with open(metrics_path, "w", encoding="utf-8") as handle:
        json.dump(metrics, handle, indent=2)
    return EvalResult(out_dir=out_dir, samples_path=samples_path, metrics_path=metrics_path, metrics=metrics)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", required=True,
                        help="HF model folder, or verl checkpoint global_step_X[/actor] (merged with verl.model_merger)")
    parser.add_argument("--data", action="append", required=True, help="verl RL parquet (repeatable)")
    parser.add_argument("--n", type=int, required=True, help="samples per prompt")
    parser.add_argument("--temperature", type=float, required=True)
    parser.add_argument("--top-p", type=float, required=True)
    parser.add_argument("--max-new-tokens", type=int, required=True)
    parser.add_argument("--out", required=True, help="output folder: samples.jsonl, metrics.json")
    parser.add_argument("--backend", default="auto", choices=["auto", "vllm", "hf"],
                        help="auto: vLLM when installed, else HF generate")
    parser.add_argument("--limit", type=int, default=None, help="first M rows of each parquet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM tensor parallelism")
    parser.add_argument("--pass-k", type=int, action="append", default=None,
                        help="k of pass@k (repeatable; default 1, 2, 4, ... and n)")
    thinking = parser.add_mutually_exclusive_group()
    thinking.add_argument("--enable-thinking", dest="enable_thinking", action="store_const", const=True, default=None,
                          help="apply_chat_template(enable_thinking=True) (Qwen3 thinking on)")
    thinking.add_argument("--disable-thinking", dest="enable_thinking", action="store_const", const=False,
                          help="apply_chat_template(enable_thinking=False)")
    parser.add_argument("--chat-template-kwargs", default=None,
                        help="JSON object of apply_chat_template kwargs (verl's data.apply_chat_template_kwargs)")
    parser.add_argument("--reward-path", default=None,
                        help="reward module (.py file or pkg://module); default pkg://scgrpo_verl.rewards")
    parser.add_argument("--reward-name", default="compute_score")
    parser.add_argument("--success-threshold", type=float, default=1.0,
                        help="correct = score >= this, for reward functions that return no 'acc'")
    parser.add_argument("--verl-log", default=None,
                        help="a run's verl log (file-logger jsonl, console log or run folder): its in-loop validation "
                             "metrics are copied into metrics.json")


def template_kwargs_from_args(args: argparse.Namespace) -> dict:
    kwargs = {}
    if args.chat_template_kwargs:
        try:
            kwargs = json.loads(args.chat_template_kwargs)
        except ValueError as exc:
            raise EvalError(f"--chat-template-kwargs: not JSON ({exc})") from None
        if not isinstance(kwargs, dict):
            raise EvalError("--chat-template-kwargs: expected a JSON object, e.g. '{\"enable_thinking\": false}'")
    if args.enable_thinking is not None:
        kwargs["enable_thinking"] = args.enable_thinking
    return kwargs


def format_metrics(metrics: dict) -> str:
    lines = []
    for ds, m in metrics["data_sources"].items():
        shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items())
        lines.append(f"  {ds}: {shown}")
    return "\n".join(lines)


def run_from_args(args: argparse.Namespace) -> int:
    sampling = Sampling(n=args.n, temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                        seed=args.seed)
    result = evaluate(args.model_path, args.data, sampling, args.out, backend=args.backend, limit=args.limit,
                      template_kwargs=template_kwargs_from_args(args), reward_path=args.reward_path,
                      reward_name=args.reward_name, success_threshold=args.success_threshold, ks=args.pass_k,
                      verl_log=args.verl_log, tensor_parallel_size=args.tensor_parallel_size)
    print(f"[eval] {result.metrics['backend']}: wrote {result.samples_path} and {result.metrics_path}")
    print(format_metrics(result.metrics))
    return 0
