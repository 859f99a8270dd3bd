"""verl's actor loss path without a cluster: jagged micro-batches and the FSDP engine's forward step (glue).

Used by ``scgrpo-verl dry-run`` and the CPU tests to run a loss exactly as verl 0.9.1's FSDP engine does
(``FSDPEngineWithLMHead.prepare_model_inputs`` / ``prepare_model_outputs``, then the loss call), on a plain
Hugging Face model, with the self-teacher wrapped around it as ``SelfTeacherWorker`` wraps the engine's
forward step (:func:`scgrpo_verl.teacher.engine_forward.forward_step_with_teacher`).
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
    use_remove_padding: bool = False,
) -> TensorDict:
    """A micro-batch as verl's actor hands it to the loss: jagged (B, j) tensors plus global batch info.

    ``fields`` are extra per-sample entries (tensors, or lists of per-row tensors made jagged);
    ``info`` extra non-tensor entries (e.g. ``global_steps``). The global batch
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
        use_remove_padding=bool(use_remove_padding),
        temperature=float(temperature),
        pad_token_id=int(pad_token_id),
        dp_size=1,
        batch_num_tokens=sum(len(r) for r in responses),
        global_batch_size=len(prompts),
        **dict(info or {}),
    )
    return td


class StandInEngine:
    """verl 0.9.1's FSDP engine input / output preparation and forward step on a plain Hugging Face model.

    No process group and no FSDP wrapping: everything else (packing, temperature scaling, the loss call) is
    verl's own code."""

    def __init__(self, model):
        self.module = model
        self.pad_to_length = False
        self.use_ulysses_sp = False
        self.engine_config = SimpleNamespace(entropy_checkpointing=False, entropy_from_logits_with_chunking=False)

    def _get_packed_pad_size(self, packed_length: int) -> int:
        return 0

    def _gather_and_unpad_packed(self, tensor: torch.Tensor, pad_size: int) -> torch.Tensor:
        return tensor[: tensor.shape[0] - pad_size] if pad_size else tensor

    def prepare_model_inputs(self, micro_batch: TensorDict):
        from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

        return FSDPEngineWithLMHead.prepare_model_inputs(self, micro_batch)

    def forward_step(self, micro_batch: TensorDict, loss_fn, forward_only: bool = False):
        """(what ``loss_fn`` returns, model_output), as ``FSDPEngineWithLMHead.forward_step`` computes them."""
        from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

        model_inputs, output_args = self.prepare_model_inputs(micro_batch)
        raw = self.module(**model_inputs, use_cache=False)
        model_output = FSDPEngineWithLMHead.prepare_model_outputs(self, raw, output_args, micro_batch, loss_fn)
        return loss_fn(model_output=model_output, data=micro_batch, dp_group=None), model_output

    def teacher_forward_step(self, micro_batch: TensorDict, loss_fn, teacher_fn, chunk_bytes=None):
        """:meth:`forward_step` with the self-teacher as the worker runs it: ``teacher_fn(micro_batch)`` first."""
        from scgrpo_verl.teacher.engine_forward import forward_step_with_teacher

        def step(batch, loss, forward_only):
            return self.forward_step(batch, loss, forward_only)

        return forward_step_with_teacher(step, self.module, micro_batch, loss_fn, False, teacher_fn, chunk_bytes)


def engine_loss(model, micro_batch: TensorDict, loss_fn, teacher_fn=None, chunk_bytes=None):
    """verl's FSDP engine forward step on a plain model: its input/output preparation and the loss call, with the
    micro-batch's teacher (``teacher_fn``, e.g. :func:`stand_in_teacher`) run first when given."""
    engine = StandInEngine(model)
    if teacher_fn is None:
        return engine.forward_step(micro_batch, loss_fn)[0]
    return engine.teacher_forward_step(micro_batch, loss_fn, teacher_fn, chunk_bytes)[0]


@torch.no_grad()
def log_prob_pass(model, micro_batch: TensorDict, loss_fn=None, teacher_fn=None, chunk_bytes=None) -> dict:
    """verl's log-prob pass on one micro-batch of a plain model: ``model_output`` (nested ``log_probs`` (B, j) and
    what the pass's ``loss_fn`` adds, e.g. SC-GRPO's D with ``teacher_fn``)."""
    if loss_fn is None:
        def loss_fn(**kwargs):
            return torch.zeros(()), {}
    engine = StandInEngine(model)
    if teacher_fn is None:
        return engine.forward_step(micro_batch, loss_fn)[1]
    return engine.teacher_forward_step(micro_batch, loss_fn, teacher_fn, chunk_bytes)[1]


def stand_in_teacher(model, teacher_model=None, frozen_model=None, trust_region_mix: float = 0.05):
    """The worker's teacher forward on plain models (``model`` live, ``teacher_model`` frozen / EMA,
    ``frozen_model`` the trust-region end), through verl's input preparation: ``micro_batch -> TeacherSide``."""
    from scgrpo_verl.teacher.engine_forward import teacher_response_hidden

    engine = StandInEngine(model)

    def head_of(module):
        head = module.get_output_embeddings()
        return head.weight.detach(), None if getattr(head, "bias", None) is None else head.bias.detach()

    def teacher_fn(data):
        if teacher_model is not None:
            return teacher_response_hidden(engine, data, teacher_model, head=head_of(teacher_model))
        frozen = None if frozen_model is None else (frozen_model, head_of(frozen_model))
        return teacher_response_hidden(engine, data, model, frozen=frozen, trust_region_mix=trust_region_mix)

    return teacher_fn


def sc_grpo_divergence(
    model,
    prompts: Sequence[Sequence[int]],
    teacher_prompts: Sequence[Optional[Sequence[int]]],
    responses: Sequence[Sequence[int]],
    temperature: float = 1.0,
    teacher_model=None,
    frozen_model=None,
    trust_region_mix: float = 0.05,
    chunk_mib: Optional[float] = None,
    teacher_fn=None,
    loss_mode: str = "sc_grpo",
) -> tuple[list[torch.Tensor], dict]:
    """SC-GRPO's D = KL(q || p) per response token (the D of ``loss_mode``'s log-prob pass), computed as the workers
    compute it: verl's log-prob pass with the teacher forward before each micro-batch's student forward (rows whose
    teacher prompt is None get no teacher, D = 0).

    ``teacher_fn`` replaces the teacher forward (e.g. a timed one); by default the teacher is ``model``
    (live), ``teacher_model`` (frozen / EMA) or the trust-region mix with ``frozen_model``.
    Returns per-rollout D (r,) and the pass's ``model_output``."""
    from functools import partial

    from scgrpo_verl.batch_keys import DIVERGENCE_KEY, TEACHER_INPUT_KEY, TEACHER_MASK_KEY
    from scgrpo_verl.losses import self_teacher_log_prob_pass
    from scgrpo_verl.settings import SelfTeacherConfig

    has_teacher = [t is not None for t in teacher_prompts]
    teacher_ids = [list(t if t is not None else p) + list(r) for t, p, r in zip(teacher_prompts, prompts, responses)]
    micro_batch = build_micro_batch(
        prompts,
        responses,
        fields={TEACHER_INPUT_KEY: [torch.as_tensor(t) for t in teacher_ids],
                TEACHER_MASK_KEY: torch.tensor(has_teacher, dtype=torch.float32)},
        temperature=temperature,
    )
    config = SimpleNamespace(policy_loss=SimpleNamespace(loss_mode=loss_mode, self_teacher=SelfTeacherConfig()))
    if teacher_fn is None:
        teacher_fn = stand_in_teacher(model, teacher_model, frozen_model, trust_region_mix)

    loss_fn = partial(self_teacher_log_prob_pass, config=config)
    chunk_bytes = None if chunk_mib is None else int(chunk_mib * (1 << 20))
    model_output = log_prob_pass(model, micro_batch, loss_fn, teacher_fn, chunk_bytes)
    values = model_output[DIVERGENCE_KEY]
    per_row = [row[len(p) - 1 : len(p) - 1 + len(r)] for row, p, r in zip(values.unbind(), prompts, responses)]
    return per_row, model_output
