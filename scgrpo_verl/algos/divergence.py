"""Per-token divergences between the student p_t and the self-teacher q_t (plain torch).

Notation (ALGORITHMS.md): p_t = pi_theta(. | x, o_<t) is the student, q_t = sg[pi_theta(. | c, x, o_<t)]
the self-teacher; both score the same response token. Every function returns one value per token,
accumulated in fp32 whatever the input dtype (bf16 logits are upcast before the softmax).

Four forms share one core (:func:`divergence_from_log_probs`):
(a) :func:`full_vocab_divergence` from full logits (N, V);
(b) :func:`fused_linear_divergence` from hidden states and the lm_head weight, chunked over tokens;
(c) :func:`topk_log_probs` / :func:`topk_divergence` on the student's top-k ids plus a tail bucket;
(d) :func:`sampled_token_kl` single-sample k1 / k3 estimators on the sampled token.

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

# Chunks of the full-vocabulary kernels are sized in bytes: this many fp32 (rows x V) buffers are alive at a
# chunk's peak (both sides' log-probs, the probabilities the kind needs, JSD's log M and its temporaries).
_CHUNK_BUFFERS = {"forward_kl": 4, "reverse_kl": 4, "jsd": 6}
DEFAULT_CHUNK_BYTES = 160 << 20


def chunk_rows(vocab_size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES, kind: str = "jsd") -> int:
    """Rows per chunk so that a chunk's fp32 working set stays near ``chunk_bytes``."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be > 0, got {chunk_bytes}")
    return max(1, int(chunk_bytes) // (_CHUNK_BUFFERS.get(kind, 6) * 4 * max(int(vocab_size), 1)))


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


def _softmax_pair_(logits: torch.Tensor, probs: torch.Tensor, temperature: float) -> None:
    """In place on a chunk's own fp32 buffers, one exp pass: ``logits`` (n, V) becomes
    log softmax(logits / T) and ``probs`` (n, V) receives softmax(logits / T).

    The log-sum-exp is read off the probabilities' normaliser: with m = max_v u_v,
    log p_v = (u_v - m) - log sum_w exp(u_w - m), so a -inf logit gives p = 0 and log p = -inf.
    """
    if temperature != 1.0:
        logits.div_(temperature)
    logits.sub_(logits.amax(-1, keepdim=True))
    torch.exp(logits, out=probs)
    total = probs.sum(-1, keepdim=True)
    probs.div_(total)
    logits.sub_(total.log_())


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_v a[n, v] * b[n, v] per row, (n, V) x (n, V) -> (n,), without an (n, V) product buffer."""
    return torch.bmm(a.unsqueeze(-2), b.unsqueeze(-1)).reshape(-1)


class _Workspace:
    """One chunk's fp32 (rows, V) buffers, allocated once per call and reused by every chunk: both sides'
    logits (student rows, then teacher rows, in one (2 rows, V) block so that a shared lm_head writes both
    in one matmul) and both sides' probabilities. A chunk of ``n`` rows uses the first ``n`` rows of each."""

    def __init__(self, rows: int, vocab: int, device: torch.device):
        self.logits = torch.empty(2 * rows, vocab, dtype=torch.float32, device=device)
        self.probs = torch.empty(2 * rows, vocab, dtype=torch.float32, device=device)

    def pair(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(student, teacher) logits buffers of an n-row chunk, each (n, V), contiguous."""
        return self.logits[:n], self.logits[n : 2 * n]


def _value_and_grad(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    workspace: _Workspace,
    kind: str,
    alpha: float,
    temperature: float,
    with_grad: bool,
    zero_mass: bool = True,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One chunk: divergence per row (n,) and its closed-form gradient w.r.t. the student logits (n, V).

    With u = logits / T and p = softmax(u) (ALGORITHMS.md sections 1-3):
    - forward KL(q || p):   d/du_j = p_j - q_j
    - reverse KL(p || q):   d/du_j = p_j (log p_j - log q_j - KL(p || q))
    - JSD_alpha, M = (1 - alpha) p + alpha q:  d/du_j = (1 - alpha) p_j (log p_j - log M_j - KL(p || M))
    ``student_logits`` and ``teacher_logits`` are the chunk's own fp32 buffers in ``workspace`` (overwritten);
    the gradient returned is a view of the workspace, valid until the next chunk. Zero-mass terms are exactly
    0 (never 0 * inf) with ``zero_mass``; without it (two passes fewer) they are only right where no
    log-probability is -inf, which :func:`_chunk` checks on the values. Everything is fp32; the gradient
    includes the 1/T.
    """

    def masked(log_ratio: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return log_ratio.masked_fill_(weight == 0, 0.0) if zero_mass else log_ratio

    n = student_logits.shape[0]
    p, q = workspace.probs[:n], workspace.probs[n : 2 * n]
    _softmax_pair_(student_logits, p, temperature)
    _softmax_pair_(teacher_logits, q, temperature)
    log_p, log_q = student_logits, teacher_logits
    grad = None
    # in place: a chunk holds the workspace's four fp32 (rows x V) buffers (JSD: two more for log M)
    if kind == "forward_kl":
        diff = masked(log_q.sub_(log_p), q)  # log q - log p where q has mass
        values = _row_dot(q, diff)
        if with_grad:
            grad = p.sub_(q)
    elif kind == "reverse_kl":
        ratio = masked(log_p.sub_(log_q), p)  # log p - log q where p has mass
        values = _row_dot(p, ratio)
        if with_grad:
            grad = ratio.sub_(values.unsqueeze(-1)).mul_(p)
    else:
        log_m = torch.add(log_p, math.log1p(-alpha))
        torch.logaddexp(log_m, log_q + math.log(alpha), out=log_m)
        ratio_p = masked(log_p.sub_(log_m), p)
        kl_pm = _row_dot(p, ratio_p)
        kl_qm = _row_dot(q, masked(log_q.sub_(log_m), q))
        del log_m
        values = (1.0 - alpha) * kl_pm + alpha * kl_qm
        if with_grad:
            grad = ratio_p.sub_(kl_pm.unsqueeze(-1)).mul_(p).mul_(1.0 - alpha)
    if grad is not None and temperature != 1.0:
        grad = grad.div_(temperature)
    return values, grad


def _chunk(fill_logits, workspace, kind, alpha, temperature, with_grad):
    """:func:`_value_and_grad` on the chunk ``fill_logits()`` writes into the workspace (returning the student and
    teacher buffers), first without the zero-mass masks (finite logits: the common case), redone with them
    for a chunk whose values come out non-finite (a -inf logit somewhere)."""
    values, grad = _value_and_grad(*fill_logits(), workspace, kind, alpha, temperature, with_grad, zero_mass=False)
    if bool(torch.isfinite(values).all()):
        return values, grad
    del grad
    return _value_and_grad(*fill_logits(), workspace, kind, alpha, temperature, with_grad, zero_mass=True)


class _LogitsDivergence(torch.autograd.Function):
    """Row-chunked full-vocabulary divergence whose gradient is formed in the forward pass.

    Only one chunk's fp32 working set exists at a time (reused across chunks); what is kept for backward is
    the gradient w.r.t. the student logits, in their dtype (one (N, V) buffer instead of autograd's several
    fp32 ones).
    """

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, kind, alpha, temperature, rows_per_chunk):
        num_rows, vocab = student_logits.shape
        with_grad = ctx.needs_input_grad[0]
        values = torch.empty(num_rows, dtype=torch.float32, device=student_logits.device)
        grad = torch.empty_like(student_logits) if with_grad else None
        workspace = _Workspace(min(rows_per_chunk, max(num_rows, 1)), vocab, student_logits.device)
        for start in range(0, num_rows, rows_per_chunk):
            rows = slice(start, start + rows_per_chunk)
            n = min(rows_per_chunk, num_rows - start)

            def fill_logits():
                student, teacher = workspace.pair(n)
                return student.copy_(student_logits[rows]), teacher.copy_(teacher_logits[rows])

            chunk_values, chunk_grad = _chunk(fill_logits, workspace, kind, alpha, temperature, with_grad)
            values[rows] = chunk_values
            if with_grad:
                grad[rows] = chunk_grad
        ctx.save_for_backward(grad)
        return values

    @staticmethod
    def backward(ctx, grad_values):
        (grad,) = ctx.saved_tensors
        if grad is None:
            return (None,) * 6
        # the buffer is this Function's own: scaled in place (a second backward through it is not supported)
        return grad.mul_(grad_values.unsqueeze(-1).to(grad.dtype)), None, None, None, None, None


def full_vocab_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str = "reverse_kl",
    alpha: Optional[float] = None,
    temperature: float = 1.0,
    mask: Optional[torch.Tensor] = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> torch.Tensor:
    """Form (a): exact full-vocabulary divergence per token, chunked over tokens (ALGORITHMS.md sections 1-3).

    The kernel training uses for SC-GRPO's D, SDPO ``full`` and SDPG's L_OPD. Chunks hold about
    ``chunk_bytes`` of fp32 work; the gradient w.r.t. ``student_logits`` is formed in the forward pass
    (closed form, see :func:`_value_and_grad`), so backward is one multiply.

    Args:
        student_logits: (..., V) logits of p_t (gradients flow into them).
        teacher_logits: (..., V) logits of q_t (stop-gradient).
        kind, alpha: see :func:`divergence_from_log_probs`.
        temperature: both sides are scored at logits / temperature (the rollout temperature).
        mask: (...) token mask; masked tokens return 0.

    Returns:
        (...) fp32 divergence per token.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} differ")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    kind, alpha = resolve_kind(kind, alpha)
    vocab = student_logits.shape[-1]
    lead = student_logits.shape[:-1]
    values = _LogitsDivergence.apply(
        student_logits.reshape(-1, vocab),
        teacher_logits.detach().reshape(-1, vocab),
        kind,
        alpha,
        float(temperature),
        chunk_rows(vocab, chunk_bytes, kind),
    )
    return _apply_mask(values.reshape(lead), mask)


def _project_into(out: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    """out (n, V) fp32 = hidden (n, H) @ weight (V, H)^T + bias, written into the workspace buffer."""
    with torch.no_grad():
        if hidden.dtype == weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32):
            if bias is None:
                torch.mm(hidden, weight.t(), out=out)
            else:
                torch.addmm(bias, hidden, weight.t(), out=out)
        else:  # bf16 / fp16 lm_head: the matmul in its dtype, as the model computes its logits
            out.copy_(F.linear(hidden, weight, bias))


class _FusedLinearDivergence(torch.autograd.Function):
    """lm_head projection + divergence + weighted sum, chunked over tokens, gradients formed in the forward."""

    @staticmethod
    def forward(ctx, student_hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, token_weights,
                kind, alpha, temperature, rows_per_chunk):
        num_rows = student_hidden.shape[0]
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        with_grad = need_h or need_w or need_b
        values = torch.zeros(num_rows, dtype=torch.float32, device=student_hidden.device)
        grad_hidden = torch.zeros_like(student_hidden) if need_h else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        active = (token_weights != 0).nonzero(as_tuple=True)[0]
        shared_head = teacher_weight is weight.detach() or (
            teacher_weight.data_ptr() == weight.data_ptr() and teacher_weight.shape == weight.shape
            and (teacher_bias is None) == (bias is None)
            and (bias is None or teacher_bias.data_ptr() == bias.data_ptr())
        )
        workspace = _Workspace(min(rows_per_chunk, max(active.numel(), 1)), weight.shape[0], student_hidden.device)
        for start in range(0, active.numel(), rows_per_chunk):
            rows = active[start : start + rows_per_chunk]
            hidden = student_hidden[rows]

            def fill_logits():
                student, teacher = workspace.pair(len(rows))
                if shared_head:  # one pass over the lm_head for both sides (a live teacher)
                    _project_into(workspace.logits[: 2 * len(rows)], torch.cat([hidden, teacher_hidden[rows]]),
                                  weight, bias)
                else:
                    _project_into(student, hidden, weight, bias)
                    _project_into(teacher, teacher_hidden[rows], teacher_weight, teacher_bias)
                return student, teacher

            chunk_values, grad = _chunk(fill_logits, workspace, kind, alpha, temperature, with_grad)
            values[rows] = chunk_values
            if with_grad:
                grad = grad.mul_(token_weights[rows].float().unsqueeze(-1))
                if need_h:
                    grad_hidden[rows] = (grad.to(weight.dtype) @ weight).to(grad_hidden.dtype)
                if need_w:
                    grad_weight.addmm_(grad.t(), hidden.float())
                if need_b:
                    grad_bias.add_(grad.sum(0))
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.mark_non_differentiable(values)
        loss = (values * token_weights.float()).sum()
        return loss, values

    @staticmethod
    def backward(ctx, grad_loss, _grad_values):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        # the buffers are this Function's own: scaled in place (a second backward is not supported)
        if grad_hidden is not None:
            grad_hidden = grad_hidden.mul_(grad_loss.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_loss).to(weight_dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.mul_(grad_loss).to(bias_dtype)
        return (grad_hidden, grad_weight, grad_bias) + (None,) * 8


def fused_linear_divergence(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    token_weights: torch.Tensor,
    kind: str = "reverse_kl",
    alpha: Optional[float] = None,
    temperature: float = 1.0,
    lm_head_bias: Optional[torch.Tensor] = None,
    teacher_lm_head_weight: Optional[torch.Tensor] = None,
    teacher_lm_head_bias: Optional[torch.Tensor] = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Form (b): sum_t w_t D_t from last hidden states and the lm_head, never holding (N, V) logits.

    Liger-Kernel style fused linear loss: each chunk of rows (sized by ``chunk_bytes``) projects both
    sides through the lm_head, computes D and its closed-form gradient, and keeps only the (N, H)
    hidden-state gradient and the (V, H) weight gradient; backward is a scale. Tokens with weight 0
    cost nothing. Gradients flow into ``student_hidden``, ``lm_head_weight`` and ``lm_head_bias`` only.

    Args:
        student_hidden: (N, H) student last hidden states at the response positions.
        teacher_hidden: (N, H) teacher last hidden states at the same response tokens.
        lm_head_weight: (V, H) output projection (shared by a live teacher).
        token_weights: (N,) detached weights w_t (mask, normalisation, gates).
        teacher_lm_head_weight: (V, H) a different teacher projection (frozen / EMA teacher).

    Returns:
        the scalar sum_t w_t D_t (differentiable) and the per-token D (N,) fp32 (detached).
    """
    kind, alpha = resolve_kind(kind, alpha)
    if student_hidden.shape != teacher_hidden.shape or student_hidden.dim() != 2:
        raise ValueError(
            f"hidden states must both be (N, H); got {tuple(student_hidden.shape)} and {tuple(teacher_hidden.shape)}"
        )
    if token_weights.shape != (student_hidden.shape[0],):
        raise ValueError(f"token_weights must be (N,) = ({student_hidden.shape[0]},), got {tuple(token_weights.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t_weight = lm_head_weight if teacher_lm_head_weight is None else teacher_lm_head_weight
    t_bias = lm_head_bias if teacher_lm_head_weight is None else teacher_lm_head_bias
    return _FusedLinearDivergence.apply(
        student_hidden,
        lm_head_weight,
        lm_head_bias,
        teacher_hidden.detach(),
        t_weight.detach(),
        None if t_bias is None else t_bias.detach(),
        token_weights.detach(),
        kind,
        alpha,
        float(temperature),
        chunk_rows(lm_head_weight.shape[0], chunk_bytes, kind),
    )


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
