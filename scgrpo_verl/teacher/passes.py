"""The self-teacher pass on a causal LM (plain torch + a HF-style model; no verl import).

The student scores its rollout as ``prompt + response``, the teacher the SAME response ids after a
different prompt (``teacher prompt + response``). From the two forwards' last hidden states at the
response positions, (N, H) each, this computes through the lm_head chunk by chunk:

- ``teacher_log_probs``: log q(y_t) of the sampled tokens, (N,);
- ``divergence``: per-token full-vocabulary divergence (SC-GRPO's D = KL(q || p) by default), (N,),
  with only ``chunk_size x V`` logits alive at a time;
- ``teacher_topk_log_probs``: teacher log-probs on the student's top-k ids plus the tail bucket, (N, K+1),
  with the ids, (N, K) — what SDPO's top-k loss reads.

The teacher can be the live model, another model (frozen / EMA copy), or the trust-region mix of
two models' logits (``lerp(frozen, live, mix)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from scgrpo_verl.algos.divergence import divergence_from_log_probs, log_softmax_fp32, topk_log_probs


@dataclass
class TeacherPassOutput:
    teacher_log_probs: torch.Tensor  # (N,)
    divergence: Optional[torch.Tensor]  # (N,)
    teacher_topk_ids: Optional[torch.Tensor]  # (N, K)
    teacher_topk_log_probs: Optional[torch.Tensor]  # (N, K+1) with tail, (N, K) without
    response_lengths: list[int]

    def split(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Per-rollout pieces of a (N, ...) output, in rollout order."""
        return list(values.split(self.response_lengths))


@torch.no_grad()
def response_hidden_states(model, sequences: Sequence[Sequence[int]], response_lengths: Sequence[int]) -> torch.Tensor:
    """Last hidden states predicting each response token, concatenated over rollouts, (N, H).

    ``sequences[i]`` is a prompt followed by ``response_lengths[i]`` response ids; position
    ``len - r - 1 + t`` predicts response token t. One forward per rollout keeps padding out of it
    (under FSDP every rank must therefore hold the same number of rollouts, as verl's dispatch does).
    """
    device = next(model.parameters()).device
    rows = []
    for ids, length in zip(sequences, response_lengths):
        if length <= 0 or length >= len(ids):
            raise ValueError(f"response length {length} must be in [1, {len(ids) - 1}] for a sequence of {len(ids)}")
        out = model(input_ids=torch.as_tensor([list(ids)], device=device), output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[-1][0]
        rows.append(hidden[len(ids) - length - 1 : len(ids) - 1])
    return torch.cat(rows)


def _lm_head(model, dtype: Optional[torch.dtype] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The lm_head (weight (V, H), bias) as plain tensors in ``dtype``; FSDP2 DTensor shards are gathered.

    Under FSDP2 mixed precision the stored (sharded) parameters are fp32 while the forward runs in the
    compute dtype (bf16): ``dtype`` is the hidden states' dtype, so the logits are computed as the
    model's own lm_head computes them (then upcast to fp32 for the softmax)."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError("model has no output embeddings (lm_head)")

    def full(param):
        if param is None:
            return None
        param = param.full_tensor() if hasattr(param, "full_tensor") else param
        return param if dtype is None else param.to(dtype)

    return full(head.weight), full(getattr(head, "bias", None))


@torch.no_grad()
def teacher_pass(
    student_model,
    student_sequences: Sequence[Sequence[int]],
    teacher_sequences: Sequence[Sequence[int]],
    response_lengths: Sequence[int],
    teacher_model=None,
    frozen_model=None,
    trust_region_mix: float = 0.05,
    divergence_kind: Optional[str] = "forward_kl",
    alpha: Optional[float] = None,
    topk: Optional[int] = None,
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> TeacherPassOutput:
    """Score the same response under the student and teacher prompts (module docstring).

    Args:
        student_model: the live policy (the student, and the teacher when ``teacher_model`` is None).
        teacher_sequences: teacher prompt + the same response ids, per rollout.
        teacher_model: a separate teacher (frozen / EMA weights).
        frozen_model: with ``teacher_model`` None, the trust-region teacher's frozen end:
            teacher logits = frozen + mix * (live - frozen).
        divergence_kind: None skips D; else forward_kl / reverse_kl / jsd (with ``alpha``).
        topk: k of the student's top-k ids for SDPO's top-k teacher log-probs; None skips them.
    """
    if not (len(student_sequences) == len(teacher_sequences) == len(response_lengths)):
        raise ValueError("student_sequences, teacher_sequences and response_lengths differ in length")
    for student, teacher, length in zip(student_sequences, teacher_sequences, response_lengths):
        if list(student[len(student) - length :]) != list(teacher[len(teacher) - length :]):
            raise ValueError("student and teacher sequences must end with the same response ids")
    lengths = [int(n) for n in response_lengths]
    h_student = response_hidden_states(student_model, student_sequences, lengths)
    heads = []  # (hidden states, (lm_head weight, bias), weight of this model in the teacher logits)
    if teacher_model is not None:
        hidden = response_hidden_states(teacher_model, teacher_sequences, lengths)
        heads.append((hidden, _lm_head(teacher_model, hidden.dtype), 1.0))
    elif frozen_model is not None:
        live = response_hidden_states(student_model, teacher_sequences, lengths)
        frozen = response_hidden_states(frozen_model, teacher_sequences, lengths)
        heads.append((live, _lm_head(student_model, live.dtype), trust_region_mix))
        heads.append((frozen, _lm_head(frozen_model, frozen.dtype), 1.0 - trust_region_mix))
    else:
        hidden = response_hidden_states(student_model, teacher_sequences, lengths)
        heads.append((hidden, _lm_head(student_model, hidden.dtype), 1.0))
    student_weight, student_bias = _lm_head(student_model, h_student.dtype)
    sampled = torch.cat([torch.as_tensor(list(s[len(s) - n :])) for s, n in zip(student_sequences, lengths)])
    sampled = sampled.to(h_student.device)

    teacher_lp, divergence, ids_out, topk_out = [], [], [], []
    for start in range(0, h_student.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        teacher_logits = sum(mix * F.linear(h[rows], *head).float() for h, head, mix in heads)
        q = log_softmax_fp32(teacher_logits, temperature)
        teacher_lp.append(q.gather(-1, sampled[rows].unsqueeze(-1)).squeeze(-1))
        if divergence_kind is not None or topk is not None:
            student_logits = F.linear(h_student[rows], student_weight, student_bias)
            if divergence_kind is not None:
                divergence.append(
                    divergence_from_log_probs(log_softmax_fp32(student_logits, temperature), q, divergence_kind, alpha)
                )
            if topk is not None:
                ids = student_logits.float().topk(topk, dim=-1).indices
                ids_out.append(ids)
                topk_out.append(topk_log_probs(teacher_logits, ids, temperature, add_tail=True))
        del teacher_logits, q
    return TeacherPassOutput(
        teacher_log_probs=torch.cat(teacher_lp),
        divergence=torch.cat(divergence) if divergence else None,
        teacher_topk_ids=torch.cat(ids_out) if ids_out else None,
        teacher_topk_log_probs=torch.cat(topk_out) if topk_out else None,
        response_lengths=lengths,
    )


@torch.no_grad()
def teacher_response_logits(
    model,
    teacher_sequences: Sequence[Sequence[int]],
    response_lengths: Sequence[int],
    frozen_model=None,
    trust_region_mix: float = 0.05,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Teacher logits / temperature at every response token, concatenated over rollouts, (N, V) fp32.

    Used inside the actor update for the full-vocabulary terms (SDPO ``full``, SDPG's L_OPD), where the
    student's logits of the same micro-batch exist anyway. With ``frozen_model`` the logits are the
    trust-region mix lerp(frozen, model, mix).
    """
    device = next(model.parameters()).device
    rows = []
    for ids, length in zip(teacher_sequences, response_lengths):
        input_ids = torch.as_tensor([list(ids)], device=device)
        logits = model(input_ids=input_ids, use_cache=False).logits[0].float()
        if frozen_model is not None:
            frozen = frozen_model(input_ids=input_ids, use_cache=False).logits[0].float()
            logits = torch.lerp(frozen, logits, trust_region_mix)
        rows.append(logits[len(ids) - length - 1 : len(ids) - 1])
    return torch.cat(rows) / temperature


@torch.no_grad()
def ema_update_(teacher: torch.nn.Module, student: torch.nn.Module, rate: float) -> None:
    """EMA teacher step, in place: theta_teacher <- (1 - rate) theta_teacher + rate theta_student (SDPO section 2)."""
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"EMA rate must be in (0, 1], got {rate}")
    teacher_params = dict(teacher.named_parameters())
    for name, param in student.named_parameters():
        if name not in teacher_params:
            raise KeyError(f"teacher has no parameter {name!r}")
        # FSDP2: both are DTensors sharded alike; the teacher (ref engine) may be offloaded to the CPU
        target, source = _local(teacher_params[name]), _local(param.detach())
        if target.shape != source.shape:
            raise ValueError(f"parameter {name!r}: teacher shard {tuple(target.shape)} != policy shard {tuple(source.shape)}")
        target.lerp_(source.to(device=target.device, dtype=target.dtype), rate)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 DTensor parameter (a view: in-place updates reach the parameter)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor
