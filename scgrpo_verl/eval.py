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
acc, feedback, ...) and ``metrics.json`` (per data_source, see :func:`scgrpo_verl.evaluation.metrics.summarize`).

Metric names (``k`` = samples per question, here ``n``; :mod:`scgrpo_verl.evaluation.metrics`):

* ``avg@k``: mean correctness over all graded samples of a data_source (every sample weighs the same);
* ``mean@k``: mean over questions of the per-question mean correctness (every question weighs the same; this is
  verl's ``val-core/<data_source>/<var>/mean@k``). With exactly k samples per question the two are equal; they
  differ only when questions have different sample counts. SC-GRPO's "Avg@8", SDPO's "avg@16" and SDPG's
  "mean@32" all denote this number (accuracy averaged over k samples per problem, then over problems);
* ``pass@k``: mean over questions of the unbiased estimator 1 - C(n-c, k)/C(n, k) (n samples, c correct);
* the same means over the reward's ``score`` (not only its 0/1 ``acc``) as ``score/avg@k``, ``score/mean@k``.

``--verl-log`` copies verl's own in-loop validation metrics (``val-core/<data_source>/<var>/mean@N`` ...) into
``metrics.json``, read from its ``file`` tracking backend or its console log by
:mod:`scgrpo_verl.evaluation.verl_logs` (the report uses it too). Rows, the reward function and grading are in
:mod:`scgrpo_verl.evaluation.data`, the sampling backends in :mod:`scgrpo_verl.evaluation.generation`.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from scgrpo_verl.evaluation import EvalError
from scgrpo_verl.evaluation.data import grade, load_questions, load_reward_fn
from scgrpo_verl.evaluation.generation import Sampling, generate_hf, generate_vllm, vllm_available
from scgrpo_verl.evaluation.metrics import metrics_from_records
from scgrpo_verl.evaluation.verl_logs import read_verl_metrics, validation_series
from scgrpo_verl.teacher.templates import chat_prompt_ids, chat_template_kwargs


# ---------------------------------------------------------------------------------------------------------------
# the checkpoint


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
    return chat_template_kwargs(kwargs, args.enable_thinking)


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
