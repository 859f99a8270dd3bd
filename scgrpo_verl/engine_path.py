"""verl's actor loss path without a cluster: jagged micro-batches and the FSDP engine's forward step (glue).

Used by ``scgrpo-verl dry-run`` and the CPU tests to run a loss exactly as verl 0.9.1's FSDP engine does
(``FSDPEngineWithLMHead.prepare_model_inputs`` / ``prepare_model_outputs``, including the logits-processor call
when ``distillation_use_topk`` is set, then the final loss call), on a plain Hugging Face model.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Mapping, Optional, Sequence

import torch
from tensordict import TensorDict


def nested(rows) -> torch.Tensor:
    """A jagged nested tensor (B, j, ...) from per-row tensors."""
    return torch.nested.as_nested_tensor(list(rows), layout=torch.jagged)


def build_micro_batch(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    fields: Optional[Mapping[str, Any]] = None,
    pad_token_id: int = 0,
    temperature: float = 1.0,
    info: Optional[Mapping[str, Any]] = None,
) -> TensorDict:
    """A micro-batch as verl's actor hands it to the loss: jagged (B, j) tensors plus global batch info.

    ``fields`` are extra per-sample entries (tensors, or lists of per-row tensors made jagged);
    ``info`` extra non-tensor entries (e.g. ``global_steps``, ``distillation_use_topk``). The global batch
    info says this micro-batch is the whole (single-rank) batch.
    """
    from verl.utils import tensordict_utils as tu

    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"need as many prompts as responses (>0), got {len(prompts)} and {len(responses)}")
    prompts = [torch.as_tensor(list(p), dtype=torch.long) for p in prompts]
    responses = [torch.as_tensor(list(r), dtype=torch.long) for r in responses]
    batch = {
        "prompts": nested(prompts),
        "responses": nested(responses),
        "input_ids": nested(torch.cat([p, r]) for p, r in zip(prompts, responses)),
        "position_ids": nested(torch.arange(len(p) + len(r)) for p, r in zip(prompts, responses)),
        "attention_mask": nested(torch.ones(len(p) + len(r), dtype=torch.long) for p, r in zip(prompts, responses)),
        "response_mask": nested(torch.ones(len(r)) for r in responses),
    }
    for key, value in (fields or {}).items():
        batch[key] = value if torch.is_tensor(value) else nested(value)
    td = TensorDict(batch, batch_size=[len(prompts)])
    tu.assign_non_tensor(
        td,
        use_remove_padding=False,
        temperature=float(temperature),
        pad_token_id=int(pad_token_id),
        dp_size=1,
        batch_num_tokens=sum(len(r) for r in responses),
        global_batch_size=len(prompts),
        **dict(info or {}),
    )
    return td


def engine_loss(model, micro_batch: TensorDict, loss_fn):
    """verl's FSDP engine forward step on a plain model: its input/output preparation, the logits processor
    call (when ``distillation_use_topk``) and the final loss call. Returns what ``loss_fn`` returns."""
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    fake_engine = SimpleNamespace(pad_to_length=False, engine_config=SimpleNamespace(entropy_checkpointing=False))
    model_inputs, output_args = FSDPEngineWithLMHead.prepare_model_inputs(fake_engine, micro_batch)
    raw = model(**model_inputs, use_cache=False)
    model_output = FSDPEngineWithLMHead.prepare_model_outputs(fake_engine, raw, output_args, micro_batch, loss_fn)
    return loss_fn(model_output=model_output, data=micro_batch, dp_group=None)


@torch.no_grad()
def sampled_log_probs(model, sequences: Sequence[Sequence[int]], response_lengths: Sequence[int],
                      temperature: float = 1.0) -> list[torch.Tensor]:
    """Per-rollout log-probs (r,) of the sampled response tokens: the student's log-prob pass, one forward per row."""
    device = next(model.parameters()).device
    out = []
    for ids, length in zip(sequences, response_lengths):
        input_ids = torch.as_tensor([list(ids)], device=device)
        logits = model(input_ids=input_ids, use_cache=False).logits[0, len(ids) - length - 1 : len(ids) - 1]
        log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)
        out.append(log_probs.gather(-1, input_ids[0, len(ids) - length :].unsqueeze(-1)).squeeze(-1).cpu())
    return out
