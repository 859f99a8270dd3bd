"""The self-teacher's forward through verl's engine, one packed forward per micro-batch (glue).

:func:`forward_step_with_teacher` wraps verl's own forward step of a micro-batch (the log-prob pass's or the
actor update's), with the micro-batch verl built: the same rows, micro-batch size or dynamic token budget, and
packing (``use_remove_padding``) as the student forward. Per micro-batch and per teacher model it issues exactly
ONE forward, on the rows that have a teacher only, BEFORE the student forward (no grad): so no second root
forward of an FSDP module runs between the student's forward and its backward, and gradient checkpointing,
``reshard_after_forward`` and prefetching see verl's usual order. A rank whose micro-batch has no teacher row
still issues a one-token forward, so every FSDP rank runs the same collectives.

Both sides are kept as last hidden states (the decoder's output, read by a forward hook), (N_t, H), never as
logits: the divergence projects them through the lm_heads chunk by chunk (:mod:`scgrpo_verl.algos.fused_divergence`).
The student's lm_head runs as its module's forward (:func:`through_module`), so FSDP2 gathers its shard and
reduces its gradient as for the model's own forward; this works with verl's ``use_fused_kernels`` on or off.

verl is imported inside the functions, not at import: ``import verl`` loads this package's plugin, whose
loss module imports from this one, so a first ``import scgrpo_verl.teacher.engine_forward`` must not import
verl while its own names are still undefined.

``engine`` is anything with verl's ``prepare_model_inputs(micro_batch)`` (the FSDP engine itself, or
:mod:`scgrpo_verl.engine_path`'s stand-in on a plain model); ``module`` the model to run.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from tensordict import TensorDict

from scgrpo_verl.batch_keys import TEACHER_INPUT_KEY, TEACHER_MASK_KEY


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
        # the model's forward as verl patched it (fused kernels on or off); the hidden states are read before the
        # head, which is then scored at the rollout temperature by the divergence kernel
        use_fused_kernels=tu.get_non_tensor_data(data=micro_batch, key="use_fused_kernels", default=False),
        temperature=1.0,
    )
    return batch, lengths, responses


def response_positions(lengths: torch.Tensor, responses: torch.Tensor, packed: bool):
    """Index into the model's last hidden states of the position predicting each response token, sample order.

    Packed (1, total) input: (zeros, packed row) (:func:`response_token_rows`); padded (n, L) input, rows left
    aligned as verl's ``build_attention_mask_from_nested`` lays them out: (sample, column)."""
    if packed:
        rows = response_token_rows(lengths, responses)
        return torch.zeros_like(rows), rows
    sample = torch.repeat_interleave(torch.arange(len(lengths)), responses)
    offsets = (torch.arange(int(responses.sum())) - torch.repeat_interleave(responses.cumsum(0) - responses, responses)
               if int(responses.sum()) else torch.zeros(0, dtype=torch.long))
    return sample, (lengths - responses - 1)[sample] + offsets


def decoder_of(module):
    """The decoder stack of a Hugging Face causal LM (its output is the last hidden state, after the final norm)."""
    decoder = module.get_decoder() if hasattr(module, "get_decoder") else getattr(module, "model", None)
    if decoder is None:
        raise TypeError(f"{type(module).__name__} has no decoder (get_decoder() / .model) to read hidden states from")
    return decoder


class HiddenCapture:
    """Keeps the last hidden state the decoder of ``module`` returns during a forward (a forward hook), so that the
    self-teacher reads hidden states whether the model builds logits (use_fused_kernels off) or not (on)."""

    def __init__(self, module):
        self.decoder = decoder_of(module)
        self.hidden: Optional[torch.Tensor] = None
        self._handle = None

    def _hook(self, _module, _args, output):
        self.hidden = output[0] if isinstance(output, (tuple, list)) else output.last_hidden_state

    def __enter__(self):
        self._handle = self.decoder.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        return False

    def rows(self, index) -> torch.Tensor:
        """The captured hidden states at ``index`` (a tuple from :func:`response_positions`), (N, H)."""
        if self.hidden is None:
            raise RuntimeError("no hidden state was captured: the model forward did not run its decoder")
        sample, column = index
        return self.hidden[sample.to(self.hidden.device), column.to(self.hidden.device)]


def _forward_hidden(engine, module, batch: TensorDict, lengths, responses) -> torch.Tensor:
    """One forward of ``module`` on a teacher batch: last hidden states at the response tokens, (N_t, H). The lm_head
    runs on one position only (``logits_to_keep=1``; verl's fused-kernel forward ignores it)."""
    from verl.utils import tensordict_utils as tu

    packed = bool(tu.get_non_tensor_data(data=batch, key="use_remove_padding", default=True))
    model_inputs, _ = engine.prepare_model_inputs(batch)
    with HiddenCapture(module) as capture:
        module(**model_inputs, use_cache=False, logits_to_keep=1)
    return capture.rows(response_positions(lengths, responses, packed))


class TeacherTerm(NamedTuple):
    """One term of the teacher's logits, ``coef * (hidden @ weight.T + bias)``; ``weight`` None: the student's own
    lm_head (a live teacher: both sides share one GEMM per chunk)."""

    hidden: torch.Tensor  # (N_t, H)
    weight: Optional[torch.Tensor] = None  # (V, H)
    bias: Optional[torch.Tensor] = None
    coef: float = 1.0


class TeacherSide(NamedTuple):
    """The teacher of one micro-batch: its logits' terms at the ``token_index`` (N_t,) response tokens (of the
    micro-batch's N, sample order) that have a teacher. Nothing (N_t, V) is held."""

    terms: tuple
    token_index: torch.Tensor


def full_weight(param: Optional[torch.Tensor], device) -> Optional[torch.Tensor]:
    """A (frozen) parameter as one plain tensor on ``device``: an FSDP2 shard is all-gathered (a collective: every
    rank calls it)."""
    if param is None:
        return None
    param = param.detach()
    if hasattr(param, "full_tensor"):
        param = param.full_tensor()
    return param.to(device)


@torch.no_grad()
def teacher_response_hidden(
    engine,
    micro_batch: TensorDict,
    module,
    head: Optional[tuple] = None,
    frozen: Optional[tuple] = None,
    trust_region_mix: float = 0.05,
) -> TeacherSide:
    """The teacher forward of a micro-batch: last hidden states at the response tokens of the rows with a teacher.

    Args:
        engine: has verl's ``prepare_model_inputs(micro_batch)`` (the packing of the student forward).
        micro_batch: verl's micro-batch with ``teacher_input_ids`` (teacher prompt + the same response, nested
            (B, j)), ``self_teacher_mask`` (B,) and ``responses``.
        module: the teacher model (the actor's for a live teacher, the ref engine's for frozen / EMA).
        head: (weight, bias) of ``module``'s lm_head when it is not the student's (frozen / EMA), else None.
        frozen: (module, (weight, bias)) the trust-region teacher's frozen end: logits = lerp(frozen, module, mix).

    Returns:
        a :class:`TeacherSide` (hidden (N_t, H) terms and the token index (N_t,)).
    """
    has_teacher, token_index = teacher_token_index(micro_batch)
    rows = has_teacher.nonzero(as_tuple=True)[0]
    if not len(rows) and not _distributed():
        return TeacherSide((), token_index)  # nothing to score and no other rank to keep in step with
    batch, lengths, responses = _teacher_batch(micro_batch, rows)
    hidden = _forward_hidden(engine, module, batch, lengths, responses)
    weight, bias = head if head is not None else (None, None)
    if frozen is None:
        terms = (TeacherTerm(hidden, weight, bias),)
    else:
        frozen_module, (frozen_weight, frozen_bias) = frozen
        frozen_hidden = _forward_hidden(engine, frozen_module, batch, lengths, responses)
        terms = (TeacherTerm(frozen_hidden, frozen_weight, frozen_bias, 1.0 - trust_region_mix),
                 TeacherTerm(hidden, weight, bias, trust_region_mix))
    if not len(rows):  # the one-token forward's terms, emptied: the head still runs (FSDP collectives in step)
        return TeacherSide(tuple(t._replace(hidden=t.hidden[:0]) for t in terms), token_index.to(hidden.device))
    return TeacherSide(terms, token_index.to(hidden.device))


def through_module(module, function, *args):
    """``function(weight, bias, *args)`` run as ``module``'s forward, so that FSDP gathers the module's parameters
    around it (and reduces their gradients in backward) exactly as for its own forward; returns its result."""

    def forward(*inner):
        return function(module.weight, getattr(module, "bias", None), *inner)

    module.forward = forward
    try:
        return module(*args)
    finally:
        del module.forward  # back to the class's forward


class MicroBatchTeacher:
    """What the actor loss reads of the self-teacher in one micro-batch: divergences from the student's captured
    last hidden states and the teacher's, through the fused linear kernel (no (N_t, V) buffer).

    ``capture`` holds the student's hidden states from verl's own forward of the micro-batch; ``head`` is the
    student's lm_head module (run through :func:`through_module`, so FSDP's parameter handling applies)."""

    def __init__(self, micro_batch: TensorDict, teacher: TeacherSide, capture: HiddenCapture, head, chunk_bytes=None):
        from verl.utils import tensordict_utils as tu

        self.teacher = teacher
        self.capture = capture
        self.head = head
        self.chunk_bytes = chunk_bytes
        lengths = _lengths(micro_batch["input_ids"]).cpu()
        responses = _lengths(micro_batch["responses"]).cpu()
        packed = bool(tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True))
        self.positions = response_positions(lengths, responses, packed)
        index = teacher.token_index.cpu()
        owner = torch.repeat_interleave(torch.arange(len(responses)), responses)
        starts = responses.cumsum(0) - responses
        # (sample, position in its response) of each teacher token: the cell of the loss's padded (B, T) tensors
        self.cells = (owner[index], index - starts[owner[index]])
        temperature = micro_batch["temperature"]
        if torch.is_tensor(temperature) and temperature.numel() > 1:
            self.temperature = temperature.reshape(-1).float().cpu()[owner[index]]
        else:
            self.temperature = float(temperature.reshape(-1)[0]) if torch.is_tensor(temperature) else float(temperature)

    def _student_hidden(self) -> torch.Tensor:
        sample, column = self.positions
        index = self.teacher.token_index.cpu()
        return self.capture.rows((sample[index], column[index]))

    def _projections(self, weight, bias):
        from scgrpo_verl.algos.fused_divergence import Projection

        return [Projection(t.hidden, weight if t.weight is None else t.weight, bias if t.weight is None else t.bias,
                           t.coef) for t in self.teacher.terms]

    def _temperature(self, device):
        return self.temperature.to(device) if torch.is_tensor(self.temperature) else self.temperature

    def divergence(self, token_weights: torch.Tensor, kind: str, alpha=None, topk=None, add_tail=True, clamp=None):
        """sum over teacher tokens of w min(D, clamp) (differentiable) and D as a padded (B, T) tensor (0 elsewhere).

        ``token_weights`` (B, T) detached weights on the loss's padded grid (``kind``, ``alpha``, ``topk``,
        ``add_tail``, ``clamp``: :func:`scgrpo_verl.algos.fused_divergence.fused_linear_divergence`)."""
        from scgrpo_verl.algos.fused_divergence import Projection, fused_linear_divergence

        out = torch.zeros_like(token_weights, dtype=torch.float32)
        hidden = self._student_hidden()
        if not self.teacher.terms:  # no teacher row and no other rank: a zero attached to the hidden states
            return (hidden.sum() * 0.0).float(), out
        # with terms but no token (a rank without teacher rows), the head still runs on 0 rows: every FSDP rank
        # issues the same gathers and gradient reductions
        sample, position = (c.to(token_weights.device) for c in self.cells)
        weights = token_weights[sample, position].detach().float()

        def kernel(weight, bias, student_hidden):
            return fused_linear_divergence(
                Projection(student_hidden, weight, bias), self._projections(weight, bias), weights.to(hidden.device),
                kind, alpha, temperature=self._temperature(hidden.device), topk=topk, add_tail=add_tail, clamp=clamp,
                chunk_bytes=self.chunk_bytes,
            )

        loss, values = through_module(self.head, kernel, hidden)
        out[sample, position] = values.to(out.device)
        return loss, out

    @torch.no_grad()
    def sampled_token_log_probs(self, responses: torch.Tensor) -> torch.Tensor:
        """The teacher's log-prob of each sampled response token (B, T) (``responses`` padded (B, T) ids)."""
        from scgrpo_verl.algos.fused_divergence import projected_token_log_probs

        out = torch.zeros(responses.shape, dtype=torch.float32, device=responses.device)
        if not self.teacher.terms:  # no teacher row and no other rank (else the head runs on 0 rows)
            return out
        sample, position = (c.to(responses.device) for c in self.cells)
        ids = responses[sample, position]

        def kernel(weight, bias, _):
            return projected_token_log_probs(self._projections(weight, bias), ids.to(weight.device),
                                             self._temperature(weight.device), self.chunk_bytes)

        device = self.teacher.terms[0].hidden.device
        out[sample, position] = through_module(self.head, kernel, torch.zeros(1, device=device)).to(out.device)
        return out


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


def forward_step_with_teacher(forward_step, module, micro_batch: TensorDict, loss_function, forward_only: bool,
                              teacher_fn, chunk_bytes: Optional[int] = None):
    """verl's forward step of one micro-batch with the self-teacher (module docstring):

    1. ``teacher_fn(micro_batch)`` -> :class:`TeacherSide` (the teacher forward, no grad);
    2. ``forward_step(micro_batch, loss, forward_only)``: verl's own student forward, the decoder's last hidden
       state kept by a hook on ``module``;
    3. inside it, ``loss_function(..., self_teacher=MicroBatchTeacher(...))``.
    """
    from functools import partial

    teacher = teacher_fn(micro_batch)
    with HiddenCapture(module) as capture:
        view = MicroBatchTeacher(micro_batch, teacher, capture, module.get_output_embeddings(), chunk_bytes)
        return forward_step(micro_batch, partial(loss_function, self_teacher=view), forward_only)
