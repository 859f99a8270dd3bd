"""Per-token divergences between the student p_t and the self-teacher q_t (plain torch).

Notation (ALGORITHMS.md): p_t = pi_theta(. | x, o_<t) is the student, q_t = sg[pi_theta(. | c, x, o_<t)]
the self-teacher; both score the same response token. Every function returns one value per token,
accumulated in fp32 whatever the input dtype (bf16 logits are upcast before the softmax).

Four forms share one core (:func:`divergence_from_log_probs`):
(a) :func:`full_vocab_divergence` from full logits (N, V);
(b) :func:`chunked_hidden_divergence` from hidden states and the lm_head weight, chunked over tokens;
(c) :func:`topk_log_probs` / :func:`topk_divergence` on the student's top-k ids plus a tail bucket;
(d) :func:`sampled_token_kl` single-sample k1 / k3 estimators on the sampled token.

Divergence kinds:
- ``forward_kl``: KL(q || p) = sum_v q (log q - log p)       (teacher-to-student; SC-GRPO's D, SDPO alpha=0)
- ``reverse_kl``: KL(p || q) = sum_v p (log p - log q)       (student-to-teacher; SDPG's L_OPD, SDPO alpha=1)
- ``jsd``: generalized JSD, M = (1 - alpha) p + alpha q,
  (1 - alpha) KL(p || M) + alpha KL(q || M)                  (SDPO, 0 < alpha < 1)
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

DivergenceKind = Literal["forward_kl", "reverse_kl", "jsd"]
DIVERGENCE_KINDS = ("forward_kl", "reverse_kl", "jsd")

# Log-probabilities are clamped from below at this value before they enter a divergence: a zero-mass
# entry (e.g. the tail bucket when top-k covers the whole vocabulary) then contributes exactly 0
# instead of 0 * inf = nan, and exp(-1e4) underflows to 0 in fp32, so no real mass is changed.
LOG_PROB_FLOOR = -1.0e4


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
    """KL(a || b) over the last dim from log-probabilities, (..., V) -> (...)."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


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
    log_p = student_log_probs.float().clamp_min(LOG_PROB_FLOOR)
    log_q = teacher_log_probs.float().clamp_min(LOG_PROB_FLOOR)
    if kind == "forward_kl":
        return _kl(log_q, log_p)
    if kind == "reverse_kl":
        return _kl(log_p, log_q)
    log_m = torch.logsumexp(
        torch.stack([log_p + torch.log1p(torch.tensor(-alpha)), log_q + torch.log(torch.tensor(alpha))]), dim=0
    )
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


def full_vocab_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str = "reverse_kl",
    alpha: Optional[float] = None,
    temperature: float = 1.0,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Form (a): exact full-vocabulary divergence per token.

    Args:
        student_logits: (..., V) logits of p_t (gradients flow into them).
        teacher_logits: (..., V) logits of q_t (detached here: the teacher is stop-gradient).
        kind, alpha: see :func:`divergence_from_log_probs`.
        temperature: both sides are scored at logits / temperature (the rollout temperature).
        mask: (...) token mask; masked tokens return 0.

    Returns:
        (...) fp32 divergence per token.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} differ")
    log_p = log_softmax_fp32(student_logits, temperature)
    log_q = log_softmax_fp32(teacher_logits.detach(), temperature)
    return _apply_mask(divergence_from_log_probs(log_p, log_q, kind, alpha), mask)


def _chunk_divergence(
    student_hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    teacher_bias: Optional[torch.Tensor],
    kind: str,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    # Both sides' logits live only inside this call; under checkpointing they are recomputed in backward.
    with torch.no_grad():
        teacher_log_probs = log_softmax_fp32(F.linear(teacher_hidden, teacher_weight, teacher_bias), temperature)
    student_logits = F.linear(student_hidden, weight, bias)
    return divergence_from_log_probs(log_softmax_fp32(student_logits, temperature), teacher_log_probs, kind, alpha)


def chunked_hidden_divergence(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    kind: str = "reverse_kl",
    alpha: Optional[float] = None,
    temperature: float = 1.0,
    mask: Optional[torch.Tensor] = None,
    lm_head_bias: Optional[torch.Tensor] = None,
    teacher_lm_head_weight: Optional[torch.Tensor] = None,
    teacher_lm_head_bias: Optional[torch.Tensor] = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Form (b): full-vocabulary divergence from last hidden states, chunked over tokens.

    Only ``chunk_size x V`` logits of each side exist at a time: each chunk runs under activation
    checkpointing (teacher under ``no_grad``) and is recomputed in the backward pass, so only the
    (N, H) inputs are kept between chunks and [tokens x vocab] is never held for either side. Gradients
    flow into ``student_hidden``, ``lm_head_weight`` and ``lm_head_bias`` only.

    Args:
        student_hidden: (N, H) student last hidden states at the response positions.
        teacher_hidden: (N, H) teacher last hidden states at the same response tokens.
        lm_head_weight: (V, H) output projection (shared by a live teacher).
        teacher_lm_head_weight: (V, H) a different teacher projection (frozen / EMA teacher).
        mask: (N,) tokens to score; others return 0 and cost nothing.

    Returns:
        (N,) fp32 divergence per token.
    """
    kind, alpha = resolve_kind(kind, alpha)
    if student_hidden.shape != teacher_hidden.shape or student_hidden.dim() != 2:
        raise ValueError(
            f"hidden states must both be (N, H); got {tuple(student_hidden.shape)} and {tuple(teacher_hidden.shape)}"
        )
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    num_tokens = student_hidden.shape[0]
    out = torch.zeros(num_tokens, dtype=torch.float32, device=student_hidden.device)
    if mask is None:
        active = torch.arange(num_tokens, device=student_hidden.device)
    else:
        if mask.shape != (num_tokens,):
            raise ValueError(f"mask must be (N,) = ({num_tokens},), got {tuple(mask.shape)}")
        active = mask.bool().nonzero(as_tuple=True)[0]
    t_weight = (lm_head_weight if teacher_lm_head_weight is None else teacher_lm_head_weight).detach()
    t_bias = lm_head_bias if teacher_lm_head_weight is None else teacher_lm_head_bias
    t_bias = None if t_bias is None else t_bias.detach()
    teacher_hidden = teacher_hidden.detach()
    pieces = []
    for start in range(0, active.numel(), chunk_size):
        rows = active[start : start + chunk_size]
        pieces.append(
            checkpoint(
                _chunk_divergence,
                student_hidden[rows],
                lm_head_weight,
                lm_head_bias,
                teacher_hidden[rows],
                t_weight,
                t_bias,
                kind,
                alpha,
                temperature,
                use_reentrant=False,
            )
        )
    if pieces:
        out = out.index_put((active,), torch.cat(pieces))
    return out


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


def topk_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    k: int,
    kind: str = "reverse_kl",
    alpha: Optional[float] = None,
    temperature: float = 1.0,
    mask: Optional[torch.Tensor] = None,
    add_tail: bool = True,
) -> torch.Tensor:
    """Form (c): divergence on the student's top-k ids plus a tail bucket (or renormalised), (..., V) -> (...)."""
    ids = student_topk_ids(student_logits, k)
    log_p = topk_log_probs(student_logits, ids, temperature, add_tail)
    log_q = topk_log_probs(teacher_logits.detach(), ids, temperature, add_tail)
    return _apply_mask(divergence_from_log_probs(log_p, log_q, kind, alpha), mask)


def sampled_token_kl(
    student_log_probs: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    estimator: Literal["k1", "k3"] = "k1",
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Form (d): single-sample estimators of KL(p || q) on the sampled token y_t ~ p, (...) -> (...).

    k1 = log p(y) - log q(y); k3 = q(y)/p(y) - 1 - log(q(y)/p(y)) (non-negative, lower variance).
    Both are unbiased: E_{y~p}[k] = KL(p || q).
    """
    log_ratio = teacher_log_probs.float() - student_log_probs.float()  # log q/p
    if estimator == "k1":
        values = -log_ratio
    elif estimator == "k3":
        values = torch.expm1(log_ratio) - log_ratio
    else:
        raise ValueError(f"unknown sampled-token estimator {estimator!r}; expected 'k1' or 'k3'")
    return _apply_mask(values, mask)
