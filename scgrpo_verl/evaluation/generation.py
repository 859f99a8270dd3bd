"""Sampling backends of ``scgrpo-verl eval`` and ``scgrpo-verl ttsd``.

* :func:`generate_vllm` / :func:`generate_hf`: ``n`` samples per prompt from a model folder (eval), with vLLM's
  offline ``LLM`` or Hugging Face ``generate`` on left-padded batches;
* :func:`sample_token_ids`: ``count`` samples of one prompt from a model in memory, as token ids (ttsd, whose
  model changes between rounds).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from typing import Sequence

from scgrpo_verl.evaluation import EvalError


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


def sample_token_ids(model, tokenizer, prompt_ids: Sequence[int], count: int, *, temperature: float, top_p: float,
                     max_new_tokens: int, seed: int) -> list[list[int]]:
    """``count`` sampled responses (token ids, cut after the first stop token, which is kept) to one prompt, from
    ``model`` as it is now; stop tokens: the model's generation-config eos, else the tokenizer's."""
    import torch

    device = next(model.parameters()).device
    torch.manual_seed(seed)
    ids = torch.tensor([list(prompt_ids)] * count, device=device)
    stops = _stop_ids(model, tokenizer)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                             temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=stops)
    stop_set, responses = set(stops), []
    for row in out[:, ids.shape[1]:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in stop_set), len(row))
        responses.append(row[:cut])
    return responses


def _stop_ids(model, tokenizer) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    return [int(e) for e in eos if e is not None]
