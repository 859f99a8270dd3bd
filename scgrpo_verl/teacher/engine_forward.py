"""The self-teacher's forward through verl's engine, one packed forward per micro-batch (glue).

Called from inside verl's own forward step (the logits processor of the log-prob pass or of the actor
update), with the micro-batch verl built: the same rows, micro-batch size or dynamic token budget, and
packing (``use_remove_padding``) as the student forward it runs next to. Per micro-batch and per
teacher model this issues exactly ONE forward, on the rows that have a teacher only; a rank whose
micro-batch has no teacher row still issues a one-token forward, so every FSDP rank runs the same
collectives. Logits are computed only at the response positions (``logits_to_keep``), never over the
teacher prompt.

verl is imported inside the functions, not at import: ``import verl`` loads this package's plugin, whose
loss module imports from this one, so a first ``import scgrpo_verl.teacher.engine_forward`` must not import
verl while its own names are still undefined.

``engine`` is anything with verl's ``prepare_model_inputs(micro_batch)`` (the FSDP engine itself, or
:mod:`scgrpo_verl.engine_path`'s stand-in on a plain model); ``module`` the model to run.
"""

from __future__ import annotations

from typing import Optional

import torch
from tensordict import TensorDict

TEACHER_INPUT_KEY = "teacher_input_ids"
TEACHER_MASK_KEY = "self_teacher_mask"


def jagged(rows) -> torch.Tensor:
    """A jagged nested tensor (B, j, ...) of per-row tensors (same dtype and trailing shape), built from one
    concatenation: at thousands of rows ``torch.nested.as_nested_tensor`` costs about a second, this ~50 ms."""
    rows = list(rows)
    values = torch.cat(rows) if rows else torch.zeros(0)
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.long)
    offsets = torch.zeros(len(rows) + 1, dtype=torch.long)
    torch.cumsum(lengths, 0, out=offsets[1:])
    return torch.nested.nested_tensor_from_jagged(values, offsets.to(values.device))


def _lengths(nested: torch.Tensor) -> torch.Tensor:
    return nested.offsets().diff()


def response_token_rows(input_lengths: torch.Tensor, response_lengths: torch.Tensor) -> torch.Tensor:
    """Packed row predicting each response token, in (sample, position) order, (N,).

    Response token t of sample b (prompt + response packed back to back) is predicted at packed row
    ``start_b + input_len_b - response_len_b - 1 + t``.
    """
    ends = input_lengths.cumsum(0)
    pieces = [torch.arange(int(end - length - 1), int(end - 1)) for end, length in zip(ends, response_lengths)]
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


def teacher_token_index(micro_batch: TensorDict) -> tuple[torch.Tensor, torch.Tensor]:
    """Which samples have a teacher (B,) bool, and which of the N response tokens they own (N_t,) long."""
    response_lengths = _lengths(micro_batch["responses"]).cpu()
    if TEACHER_MASK_KEY not in micro_batch.keys():
        raise KeyError(f"the micro-batch has no {TEACHER_MASK_KEY!r} (written by the trainer's teacher step)")
    has_teacher = micro_batch[TEACHER_MASK_KEY].reshape(-1).cpu() > 0
    owner = torch.repeat_interleave(torch.arange(len(response_lengths)), response_lengths)
    return has_teacher, has_teacher[owner].nonzero(as_tuple=True)[0]


def _teacher_batch(micro_batch: TensorDict, rows: torch.Tensor) -> tuple[TensorDict, torch.Tensor, torch.Tensor]:
    """The teacher rows as a verl micro-batch (same packing options), their lengths and response lengths."""
    if TEACHER_INPUT_KEY not in micro_batch.keys():
        raise KeyError(f"the micro-batch has no {TEACHER_INPUT_KEY!r} (written by the trainer's teacher step)")
    teacher_ids = micro_batch[TEACHER_INPUT_KEY].unbind()
    response_lengths = _lengths(micro_batch["responses"]).cpu()
    if len(rows):
        ids = [teacher_ids[int(i)] for i in rows]
        responses = response_lengths[rows]
    else:  # a one-token forward keeps this rank's FSDP collectives in step with the other ranks'
        ids = [teacher_ids[0][:1]]
        responses = torch.zeros(1, dtype=torch.long)
    lengths = torch.tensor([len(x) for x in ids])
    if bool((responses >= lengths).any() and len(rows)):
        raise ValueError("a teacher sequence is not longer than its response: teacher_input_ids must be prompt + response")
    device = ids[0].device
    batch = TensorDict(
        {
            "input_ids": torch.nested.as_nested_tensor(ids, layout=torch.jagged),
            "position_ids": torch.nested.as_nested_tensor(
                [torch.arange(len(x), device=device) for x in ids], layout=torch.jagged
            ),
        },
        batch_size=[len(ids)],
    )
    from verl.utils import tensordict_utils as tu  # here, not at import: see the module docstring

    tu.assign_non_tensor(
        batch,
        use_remove_padding=tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True),
        pad_token_id=tu.get_non_tensor_data(data=micro_batch, key="pad_token_id", default=0),
        use_fused_kernels=False,
        temperature=1.0,  # the teacher logits are scaled below, per sample, like the student's
    )
    return batch, lengths, responses


def _keep_positions(lengths: torch.Tensor, responses: torch.Tensor, packed: bool):
    """``logits_to_keep`` for the response positions, and how to read each response token from the output."""
    starts = lengths - responses - 1
    if packed:  # (1, total): the positions themselves
        positions = response_token_rows(lengths, responses)
        return positions, (torch.zeros_like(positions), torch.arange(len(positions)))
    # padded (n, L): one window [min start, max end) shared by the rows
    first, last = int(starts.min()), int((lengths - 1).max())
    sample = torch.repeat_interleave(torch.arange(len(lengths)), responses)
    offsets = torch.cat([torch.arange(int(r)) for r in responses]) if int(responses.sum()) else torch.zeros(0, dtype=torch.long)
    column = starts[sample] + offsets - first
    return torch.arange(first, max(last, first + 1)), (sample, column)


def _forward(engine, module, batch: TensorDict, lengths, responses) -> torch.Tensor:
    from verl.utils import tensordict_utils as tu

    packed = bool(tu.get_non_tensor_data(data=batch, key="use_remove_padding", default=True))
    model_inputs, _ = engine.prepare_model_inputs(batch)
    keep, (sample, column) = _keep_positions(lengths, responses, packed)
    device = model_inputs["input_ids"].device
    logits = module(**model_inputs, use_cache=False, logits_to_keep=keep.to(device)).logits
    return logits[sample.to(device), column.to(device)]


@torch.no_grad()
def teacher_response_logits(
    engine,
    micro_batch: TensorDict,
    module,
    frozen_module=None,
    trust_region_mix: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits / temperature at the response tokens of the micro-batch's rows that have a teacher.

    Args:
        engine: has verl's ``prepare_model_inputs`` (the packing of the student forward).
        micro_batch: verl's micro-batch with ``teacher_input_ids`` (teacher prompt + the same response,
            nested (B, j)), ``self_teacher_mask`` (B,), ``responses`` and ``temperature``.
        module: the teacher model (the actor's for a live teacher, the ref engine's for frozen / EMA).
        frozen_module: the trust-region teacher's frozen end: logits = lerp(frozen, module, mix).

    Returns:
        logits (N_t, V) fp32 (already divided by the sample's temperature) and ``token_index`` (N_t,): the
        positions of those tokens among the micro-batch's N response tokens (sample order).
    """
    has_teacher, token_index = teacher_token_index(micro_batch)
    rows = has_teacher.nonzero(as_tuple=True)[0]
    if not len(rows) and not _distributed():
        return torch.zeros(0, 0), token_index  # nothing to score and no other rank to keep in step with
    batch, lengths, responses = _teacher_batch(micro_batch, rows)
    logits = _forward(engine, module, batch, lengths, responses).float()
    if frozen_module is not None:
        logits = torch.lerp(_forward(engine, frozen_module, batch, lengths, responses).float(), logits, trust_region_mix)
    if not len(rows):
        return logits[:0], token_index
    temperature = micro_batch["temperature"]
    if torch.is_tensor(temperature) and temperature.numel() > 1:
        per_token = torch.repeat_interleave(temperature.reshape(-1).cpu()[rows].float(), responses)
        logits = logits / per_token.to(logits.device).unsqueeze(-1)
    else:
        value = float(temperature.reshape(-1)[0]) if torch.is_tensor(temperature) else float(temperature)
        if value != 1.0:
            logits = logits / value
    return logits, token_index.to(logits.device)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def count_teacher_tokens(data: TensorDict) -> tuple[int, int]:
    """(response tokens of rows with a teacher, rows with a teacher) in a batch with ``self_teacher_mask``."""
    has_teacher = data[TEACHER_MASK_KEY].reshape(-1) > 0
    mask = data["response_mask"]
    per_row = mask.sum(-1) if not getattr(mask, "is_nested", False) else torch.stack([m.sum() for m in mask.unbind()])
    return int(per_row[has_teacher].sum()), int(has_teacher.sum())


def dp_all_reduce_sum(values: list[int], group: Optional[object]) -> list[int]:
    """Sum integers over the data-parallel group (identity without torch.distributed)."""
    if group is None or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return values
    from verl.utils.device import get_device_id

    tensor = torch.tensor(values, dtype=torch.long, device=get_device_id())
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM, group=group)
    return [int(v) for v in tensor.tolist()]
