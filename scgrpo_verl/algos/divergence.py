"""Per-token divergences between the student p_t and the self-teacher q_t (plain torch).

Notation (ALGORITHMS.md): p_t = pi_theta(. | x, o_<t) is the student, q_t = sg[pi_theta(. | c, x, o_<t)]
the self-teacher; both score the same response token. Every function returns one value per token,
accumulated in fp32 whatever the input dtype (bf16 logits are upcast before the softmax).

Three forms share one definition (:func:`divergence_from_log_probs`):
(a) ``full_vocab_divergence`` from full logits (N, V), chunked, and
(b) ``fused_linear_divergence`` from hidden states and lm_heads (``Projection``), chunked over tokens,
    full vocabulary or the student's top-k (+ tail): the form training uses, no (N, V) buffer;
    both in the chunked kernel :mod:`scgrpo_verl.algos.fused_divergence`;
(c) :func:`topk_log_probs` on the student's top-k ids plus a tail bucket (plain autograd; test-time distillation),
and the kernel module's ``projected_token_log_probs`` gives the sampled token's log-prob from hidden states.

Divergence kinds:
- ``forward_kl``: KL(q || p) = sum_v q (log q - log p)       (teacher-to-student; SC-GRPO's D, SDPO alpha=0)
- ``reverse_kl``: KL(p || q) = sum_v p (log p - log q)       (student-to-teacher; SDPG's L_OPD, SDPO alpha=1)
- ``jsd``: generalized JSD, M = (1 - alpha) p + alpha q,
  (1 - alpha) KL(p || M) + alpha KL(q || M)                  (SDPO, 0 < alpha < 1)
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F

DivergenceKind = Literal["forward_kl", "reverse_kl", "jsd"]
DIVERGENCE_KINDS = ("forward_kl", "reverse_kl", "jsd")


def resolve_kind(kind: str, alpha: Optional[float] = None) -> tuple[str, float]:
    """Normalise (kind, alpha): ``jsd`` with alpha 0 or 1 is forward or reverse KL (SDPO's convention)."""
    if kind not in DIVERGENCE_KINDS:
        raise ValueError(f"unknown divergence kind {kind!r}; expected one of {DIVERGENCE_KINDS}")
    if kind != "jsd":
        return kind, 0.0 if kind == "forward_kl" else 1.0
    if alpha is None or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"jsd needs alpha in [0, 1], got {alpha!r}")
    if alpha == 0.0:
        return "forward_kl", 0.0
    if alpha == 1.0:
        return "reverse_kl", 1.0
    return "jsd", float(alpha)


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) over the last dim from log-probabilities, (..., V) -> (...).

    Terms where a has no mass are exactly 0 (never 0 * inf), whatever b is there; no floor is applied,
    so a log-ratio of 2e4 stays 2e4.
    """
    a = log_a.exp()
    return (a * torch.where(a > 0, log_a - log_b, 0.0)).sum(-1)


def divergence_from_log_probs(
    student_log_probs: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    kind: str = "reverse_kl",
    alpha: Optional[float] = None,
) -> torch.Tensor:
    """Divergence between two normalised distributions given as log-probs, (..., V) -> (...), fp32.

    ALGORITHMS.md section 2 (SDPO's alpha family): forward KL(q||p), reverse KL(p||q), or the
    generalized JSD (1-alpha) KL(p||M) + alpha KL(q||M) with M = (1-alpha) p + alpha q.
    """
    kind, alpha = resolve_kind(kind, alpha)
    log_p = student_log_probs.float()
    log_q = teacher_log_probs.float()
    if kind == "forward_kl":
        return _kl(log_q, log_p)
    if kind == "reverse_kl":
        return _kl(log_p, log_q)
    log_m = torch.logaddexp(log_p + math.log1p(-alpha), log_q + math.log(alpha))
    return (1.0 - alpha) * _kl(log_p, log_m) + alpha * _kl(log_q, log_m)


def log_softmax_fp32(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature) over the last dim, computed in fp32."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return F.log_softmax(logits, dim=-1)


def _apply_mask(values: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    if mask is None:
        return values
    if mask.shape != values.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != token shape {tuple(values.shape)}")
    return values * mask.to(values.dtype)


def topk_log_probs(
    logits: torch.Tensor,
    topk_ids: torch.Tensor,
    temperature: float = 1.0,
    add_tail: bool = True,
) -> torch.Tensor:
    """Log-probs of a distribution restricted to given ids, with a tail bucket or renormalised.

    Args:
        logits: (..., V) logits.
        topk_ids: (..., K) vocabulary ids (the student's top-k ids, shared by both sides).
        add_tail: True -> (..., K+1), the last entry log(1 - sum_k p_k) computed exactly as the
            log-sum-exp of the logits outside the top-k; False -> (..., K) renormalised over the K ids.
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)
    picked = logits.gather(-1, topk_ids)
    if not add_tail:
        return picked - torch.logsumexp(picked, dim=-1, keepdim=True)
    rest = torch.logsumexp(logits.scatter(-1, topk_ids, float("-inf")), dim=-1, keepdim=True)
    return torch.cat([picked, rest], dim=-1) - log_norm


def student_topk_ids(student_logits: torch.Tensor, k: int) -> torch.Tensor:
    """The student's top-k vocabulary ids, (..., V) -> (..., K)."""
    if not 0 < k <= student_logits.shape[-1]:
        raise ValueError(f"top-k needs 0 < k <= vocab size {student_logits.shape[-1]}, got {k}")
    return student_logits.detach().topk(k, dim=-1).indices
