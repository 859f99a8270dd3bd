"""The chunked divergence kernel (plain torch) for the forms of :mod:`scgrpo_verl.algos.divergence` that run
chunk by chunk: :func:`full_vocab_divergence` (form (a), on given (N, V) logits), :func:`fused_linear_divergence`
(form (b), from hidden states and lm_heads given as :class:`Projection`, full vocabulary or the student's top-k +
tail, never holding (N, V) logits: the form training uses) and :func:`projected_token_log_probs` (the sampled
token's log-prob from hidden states). Rows go through in chunks sized in bytes of fp32 work (:func:`chunk_rows`,
:func:`device_chunk_bytes`); each chunk's divergence and its closed-form gradient are formed in the forward pass,
so backward is a scale. Its ~550 lines are one kernel (two autograd Functions sharing the chunk step, the
workspace and the per-chunk cores), kept in one module on purpose.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from scgrpo_verl.algos.divergence import _apply_mask, divergence_from_log_probs, resolve_kind

# Chunks of rows are sized in bytes of fp32 (rows x V) work: CPU keeps a fixed budget (cache-friendly, no allocator
# pressure); CUDA takes thousands of rows, from the free memory, so the lm_head GEMMs run at tensor-core size and
# the per-chunk launch overhead vanishes.

# fp32 (rows x V) buffers alive at a chunk's peak: the workspace's two logits and two probability blocks, plus the
# kind's temporaries (JSD's log M and its logaddexp operand; top-k's gradient scatter needs none)
_CHUNK_BUFFERS = {"forward_kl": 4, "reverse_kl": 4, "jsd": 6, "topk": 4}
DEFAULT_CHUNK_BYTES = 160 << 20  # CPU
CUDA_MAX_CHUNK_BYTES = 8 << 30  # CUDA: a quarter of the free memory, at most this


def device_chunk_bytes(device: Optional[torch.device] = None) -> int:
    """The chunk budget for ``device``: :data:`DEFAULT_CHUNK_BYTES` on CPU; on CUDA a quarter of the free memory
    (at least the CPU budget, at most :data:`CUDA_MAX_CHUNK_BYTES`)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(min(CUDA_MAX_CHUNK_BYTES, max(DEFAULT_CHUNK_BYTES, free // 4)))
    return DEFAULT_CHUNK_BYTES


def chunk_rows(vocab_size: int, chunk_bytes: Optional[int] = DEFAULT_CHUNK_BYTES, kind: str = "jsd",
               device: Optional[torch.device] = None) -> int:
    """Rows per chunk so that a chunk's fp32 working set stays near ``chunk_bytes`` (None: the device's budget)."""
    if chunk_bytes is None:
        chunk_bytes = device_chunk_bytes(device)
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be > 0, got {chunk_bytes}")
    return max(1, int(chunk_bytes) // (_CHUNK_BUFFERS.get(kind, 6) * 4 * max(int(vocab_size), 1)))


def _softmax_pair_(logits: torch.Tensor, probs: torch.Tensor) -> None:
    """In place on a chunk's own fp32 buffers, one exp pass: ``logits`` (n, V) becomes log softmax(logits) and
    ``probs`` (n, V) receives softmax(logits).

    The log-sum-exp is read off the probabilities' normaliser: with m = max_v u_v,
    log p_v = (u_v - m) - log sum_w exp(u_w - m), so a -inf logit gives p = 0 and log p = -inf.
    """
    logits.sub_(logits.amax(-1, keepdim=True))
    torch.exp(logits, out=probs)
    total = probs.sum(-1, keepdim=True)
    probs.div_(total)
    logits.sub_(total.log_())


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_v a[n, v] * b[n, v] per row, (n, V) x (n, V) -> (n,), without an (n, V) product buffer."""
    return torch.bmm(a.unsqueeze(-2), b.unsqueeze(-1)).reshape(-1)


def _full_core(log_p, log_q, p, q, kind: str, alpha: float, with_grad: bool, zero_mass: bool = True):
    """One chunk over the full vocabulary, in place on its fp32 buffers (``log_p``/``log_q`` hold both sides'
    scaled logits on entry, ``p``/``q`` are scratch): D per row (n,) and dD/du (n, V) w.r.t. the student's
    scaled logits u (a view of a workspace buffer), or None.

    Closed forms, with p = softmax(u) (ALGORITHMS.md sections 1-3):
    - forward KL(q || p):   d/du_j = p_j - q_j
    - reverse KL(p || q):   d/du_j = p_j (log p_j - log q_j - KL(p || q))
    - JSD_alpha, M = (1 - alpha) p + alpha q:  d/du_j = (1 - alpha) p_j (log p_j - log M_j - KL(p || M))
    With ``zero_mass`` the zero-mass terms are exactly 0 (never 0 * inf), masked on the device (no host sync);
    without it (two passes fewer) they are only right where no log-probability is -inf (see :func:`_chunk_step`).
    """

    def masked(log_ratio, weight):
        return log_ratio.masked_fill_(weight == 0, 0.0) if zero_mass else log_ratio

    _softmax_pair_(log_p, p)
    _softmax_pair_(log_q, q)
    grad = None
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
    return values, grad


def _topk_core(log_p, log_q, p, q, kind: str, alpha: float, with_grad: bool, k: int, add_tail: bool):
    """One chunk on the student's top-k ids (+ a tail bucket, or renormalised over the k ids), in place like
    :func:`_full_core`: D per row (n,) and dD/du (n, V) on the student's scaled logits u.

    With P the student's buckets and g = dD/dlog P (autograd on the (n, k+1) buckets, never on (n, V)):
    - tail:     d/du_j = [j in top-k] g_j + [j not in top-k] g_tail p_j / p_tail - p_j sum_b g_b
    - no tail:  d/du_j = [j in top-k] (g_j - P_j sum_b g_b)
    The tail mass is summed exactly over the ids outside the top-k (not 1 - sum top-k).
    """
    _softmax_pair_(log_p, p)
    _softmax_pair_(log_q, q)
    ids = log_p.topk(k, dim=-1).indices
    top_p, top_q = log_p.gather(-1, ids), log_q.gather(-1, ids)
    if add_tail:
        tail_p = p.scatter_(-1, ids, 0.0).sum(-1, keepdim=True)  # p now holds the probabilities outside the top-k
        tail_q = q.scatter_(-1, ids, 0.0).sum(-1, keepdim=True)
        buckets_p, buckets_q = torch.cat([top_p, tail_p.log()], -1), torch.cat([top_q, tail_q.log()], -1)
    else:
        buckets_p = top_p - top_p.logsumexp(-1, keepdim=True)
        buckets_q = top_q - top_q.logsumexp(-1, keepdim=True)
    if not with_grad:
        return divergence_from_log_probs(buckets_p, buckets_q, kind, alpha), None
    with torch.enable_grad():
        leaf = buckets_p.detach().requires_grad_(True)
        values = divergence_from_log_probs(leaf, buckets_q, kind, alpha)
        (g,) = torch.autograd.grad(values.sum(), leaf)
    total = g.sum(-1, keepdim=True)
    if add_tail:
        tail_scale = torch.where(tail_p > 0, g[:, -1:] / tail_p, torch.zeros_like(tail_p))
        grad = p.mul_(tail_scale - total)  # outside the top-k (p is 0 at the top-k ids)
        grad.scatter_(-1, ids, g[:, :-1] - top_p.exp() * total)
    else:
        grad = p.zero_()
        grad.scatter_(-1, ids, g - buckets_p.exp() * total)
    return values.detach(), grad


_COMPILED: dict = {}


class _no_autocast(contextlib.ExitStack):
    """The kernel's own precision, whatever autocast the caller runs under (verl's forward step autocasts to the
    param dtype: a bmm there would come out bf16)."""

    def __enter__(self):
        super().__enter__()
        for device_type in ("cpu", "cuda"):
            self.enter_context(torch.autocast(device_type, enabled=False))
        return self


def _core_for(device: torch.device, topk: Optional[int]):
    """The chunk's elementwise work: eager on CPU (compiling costs minutes per shape there); on CUDA compiled once
    with ``torch.compile`` (dynamic shapes) so that each chunk's softmax / divergence / gradient passes fuse, as
    Liger-Kernel's chunked losses do. ``SCGRPO_COMPILE=0`` keeps CUDA eager too."""
    core = _full_core if topk is None else _topk_core
    if device.type != "cuda" or os.environ.get("SCGRPO_COMPILE", "1") == "0":
        return core
    if core not in _COMPILED:
        _COMPILED[core] = torch.compile(core, dynamic=True)
    return _COMPILED[core]


class Projection(NamedTuple):
    """One side's logits as a linear map of last hidden states: ``coef * (hidden @ weight.T + bias)``, (N, V).

    ``hidden`` (N, H), ``weight`` (V, H) (an lm_head), ``bias`` (V,) or None. A teacher given as several
    projections sums them (the trust-region teacher: ``(1 - mix) * frozen + mix * live``)."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: Optional[torch.Tensor] = None
    coef: float = 1.0


def _linear_into(out: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias, coef: float, add: bool) -> None:
    """out (n, V) fp32 (+)= coef * (hidden @ weight.T + bias): the GEMM in the lm_head's dtype (bf16 tensor cores
    on a GPU, as the model computes its logits), upcast into the fp32 workspace."""
    if weight.dtype == torch.float32 and hidden.dtype == torch.float32 and not add and coef == 1.0:
        if bias is None:
            torch.mm(hidden, weight.t(), out=out)
        else:
            torch.addmm(bias.float(), hidden, weight.t(), out=out)
        return
    logits = F.linear(hidden.to(weight.dtype), weight, None if bias is None else bias.to(weight.dtype))
    if add:
        out.add_(logits, alpha=coef)
    else:
        out.copy_(logits)
        if coef != 1.0:
            out.mul_(coef)


_MM_FP32_OUT: dict = {}


def _mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with fp32 output for bf16 / fp16 operands: the GEMM in their dtype, accumulated in fp32 (CUDA's
    ``out_dtype``; elsewhere the product in their dtype, upcast)."""
    if a.dtype == torch.float32:
        return a @ b
    key = a.device.type
    if _MM_FP32_OUT.get(key, True):
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError, NotImplementedError):
            _MM_FP32_OUT[key] = False
    return (a @ b).float()


class _Workspace:
    """One chunk's fp32 (rows, V) buffers, allocated once per call and reused by every chunk: both sides' logits
    in one (2 rows, V) block (so that a shared lm_head writes both in one GEMM) and both sides' probabilities."""

    def __init__(self, rows: int, vocab: int, device: torch.device):
        self.logits = torch.empty(2 * rows, vocab, dtype=torch.float32, device=device)
        self.probs = torch.empty(2 * rows, vocab, dtype=torch.float32, device=device)

    def buffers(self, n: int):
        """(student logits, teacher logits, student probs, teacher probs) of an n-row chunk, each (n, V)."""
        return self.logits[:n], self.logits[n : 2 * n], self.probs[:n], self.probs[n : 2 * n]


class _Options(NamedTuple):
    kind: str
    alpha: float
    topk: Optional[int]
    add_tail: bool
    clamp: Optional[float]
    rows_per_chunk: int


def _chunk_step(workspace, n, fill, scale, weights, options: _Options, with_grad: bool):
    """Fill an n-row chunk's logits (``fill(student, teacher)``), scale them (per row), and run the core.

    Returns (values (n,), loss terms (n,) = weights * min(D, clamp), gradient (n, V) w.r.t. the raw student logits
    already multiplied by weights * scale * [D <= clamp], or None)."""
    student, teacher, p, q = workspace.buffers(n)
    core = _core_for(student.device, options.topk)

    def run(zero_mass: bool):
        fill(student, teacher)
        if scale is not None:
            student.mul_(scale.unsqueeze(-1))
            teacher.mul_(scale.unsqueeze(-1))
        if options.topk is not None:
            return core(student, teacher, p, q, options.kind, options.alpha, with_grad, options.topk, options.add_tail)
        return core(student, teacher, p, q, options.kind, options.alpha, with_grad, zero_mass)

    # On an accelerator the zero-mass masks are always applied (fused there; a finiteness check would sync the host
    # every chunk). On the CPU there is no device to wait for: the chunk runs without the masks and is redone with
    # them only when its values come out non-finite (a -inf logit somewhere), two (rows x V) passes fewer.
    on_cpu = student.device.type == "cpu" and options.topk is None
    values, grad = run(zero_mass=not on_cpu)
    if on_cpu and not bool(torch.isfinite(values).all()):
        values, grad = run(zero_mass=True)
    clamped = values if options.clamp is None else values.clamp(max=options.clamp)
    terms = weights * clamped
    if grad is not None:
        factor = weights if scale is None else weights * scale
        if options.clamp is not None:
            factor = factor * (values <= options.clamp)
        grad = grad.mul_(factor.unsqueeze(-1))
    return values, terms, grad


class _LogitsDivergence(torch.autograd.Function):
    """Row-chunked divergence on given logits, gradient formed in the forward pass (kept in the logits' dtype)."""

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, scale, options):
        with _no_autocast():
            return _LogitsDivergence._forward(ctx, student_logits, teacher_logits, scale, options)

    @staticmethod
    def _forward(ctx, student_logits, teacher_logits, scale, options):
        num_rows, vocab = student_logits.shape
        with_grad = ctx.needs_input_grad[0]
        values = torch.empty(num_rows, dtype=torch.float32, device=student_logits.device)
        grad = torch.empty_like(student_logits) if with_grad else None
        ones = torch.ones(num_rows, dtype=torch.float32, device=student_logits.device)
        step = options.rows_per_chunk
        workspace = _Workspace(min(step, max(num_rows, 1)), vocab, student_logits.device)
        for start in range(0, num_rows, step):
            rows = slice(start, start + step)

            def fill(student, teacher):
                student.copy_(student_logits[rows])
                teacher.copy_(teacher_logits[rows])

            n = min(step, num_rows - start)
            chunk_scale = None if scale is None else scale[rows]
            chunk_values, _, chunk_grad = _chunk_step(workspace, n, fill, chunk_scale, ones[rows], options, with_grad)
            values[rows] = chunk_values
            if with_grad:
                grad[rows] = chunk_grad
        ctx.save_for_backward(grad)
        return values

    @staticmethod
    def backward(ctx, grad_values):
        (grad,) = ctx.saved_tensors
        if grad is None:
            return None, None, None, None
        # the buffer is this Function's own: scaled in place (a second backward through it is not supported)
        return grad.mul_(grad_values.unsqueeze(-1).to(grad.dtype)), None, None, None


def _options(kind, alpha, vocab, chunk_bytes, device, topk=None, add_tail=True, clamp=None) -> _Options:
    kind, alpha = resolve_kind(kind, alpha)
    if topk is not None and not 0 < int(topk) <= vocab:
        raise ValueError(f"top-k needs 0 < k <= vocab size {vocab}, got {topk}")
    rows = chunk_rows(vocab, chunk_bytes, "topk" if topk is not None else kind, device)
    return _Options(kind, alpha, None if topk is None else int(topk), bool(add_tail), clamp, rows)


def _row_scale(temperature, num_rows: int, device) -> Optional[torch.Tensor]:
    """1 / temperature per row (N,) fp32, or None for temperature 1."""
    if torch.is_tensor(temperature) and temperature.numel() > 1:
        if temperature.shape != (num_rows,):
            raise ValueError(f"per-row temperature must be ({num_rows},), got {tuple(temperature.shape)}")
        if bool((temperature <= 0).any()):
            raise ValueError("temperature must be > 0")
        return temperature.to(device=device, dtype=torch.float32).reciprocal()
    value = float(temperature)
    if value <= 0:
        raise ValueError(f"temperature must be > 0, got {value}")
    return None if value == 1.0 else torch.full((num_rows,), 1.0 / value, device=device)


def full_vocab_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str = "reverse_kl",
    alpha: Optional[float] = None,
    temperature: float = 1.0,
    mask: Optional[torch.Tensor] = None,
    chunk_bytes: Optional[int] = DEFAULT_CHUNK_BYTES,
) -> torch.Tensor:
    """Form (a): exact full-vocabulary divergence per token from logits, chunked (ALGORITHMS.md sections 1-3).

    Chunks hold about ``chunk_bytes`` of fp32 work (None: the device's budget, :func:`device_chunk_bytes`); the
    gradient w.r.t. ``student_logits`` is formed in the forward pass (closed form, see :func:`_full_core`), so
    backward is one multiply. Training uses the hidden-state form :func:`fused_linear_divergence`, which holds no
    (N, V) buffer at all.

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
    vocab = student_logits.shape[-1]
    lead = student_logits.shape[:-1]
    flat = student_logits.reshape(-1, vocab)
    options = _options(kind, alpha, vocab, chunk_bytes, student_logits.device)
    values = _LogitsDivergence.apply(
        flat, teacher_logits.detach().reshape(-1, vocab), _row_scale(temperature, flat.shape[0], flat.device), options
    )
    return _apply_mask(values.reshape(lead), mask)


def _shares_head(student: Projection, teacher: Sequence[Projection]) -> bool:
    """One teacher projection through the student's own lm_head (a live teacher): one GEMM for both sides."""
    if len(teacher) != 1 or teacher[0].coef != 1.0 or student.coef != 1.0:
        return False
    t = teacher[0]
    same = lambda a, b: (a is None and b is None) or (  # noqa: E731
        a is not None and b is not None and a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.dtype == b.dtype
    )
    return same(t.weight, student.weight) and same(t.bias, student.bias)


class _FusedLinearDivergence(torch.autograd.Function):
    """lm_head projections + divergence + weighted sum, chunked over tokens, gradients formed in the forward."""

    @staticmethod
    def forward(ctx, student_hidden, weight, bias, token_weights, scale, teacher, student_coef, options):
        with _no_autocast():
            return _FusedLinearDivergence._forward(ctx, student_hidden, weight, bias, token_weights, scale, teacher,
                                                   student_coef, options)

    @staticmethod
    def _forward(ctx, student_hidden, weight, bias, token_weights, scale, teacher, student_coef, options):
        num_rows = student_hidden.shape[0]
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        with_grad = need_h or need_w or need_b
        device = student_hidden.device
        values = torch.zeros(num_rows, dtype=torch.float32, device=device)
        loss = torch.zeros((), dtype=torch.float32, device=device)
        grad_hidden = torch.zeros_like(student_hidden) if need_h else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        student = Projection(student_hidden, weight, bias, student_coef)
        shared = _shares_head(student, teacher)
        # tokens with weight 0 cost nothing (one host sync per call, none per chunk)
        active = (token_weights != 0).nonzero(as_tuple=True)[0]
        step = options.rows_per_chunk
        workspace = _Workspace(min(step, max(active.numel(), 1)), weight.shape[0], device)
        for start in range(0, active.numel(), step):
            rows = active[start : start + step]
            n = rows.numel()
            hidden = student_hidden[rows]

            def fill(student_logits, teacher_logits):
                if shared:
                    both = workspace.logits[: 2 * n]
                    _linear_into(both, torch.cat([hidden, teacher[0].hidden[rows]]), weight, bias, 1.0, False)
                    return
                _linear_into(student_logits, hidden, weight, bias, student_coef, False)
                for i, term in enumerate(teacher):
                    _linear_into(teacher_logits, term.hidden[rows], term.weight, term.bias, term.coef, i > 0)

            chunk_scale = None if scale is None else scale[rows]
            chunk_values, terms, grad = _chunk_step(
                workspace, n, fill, chunk_scale, token_weights[rows].float(), options, with_grad
            )
            values[rows] = chunk_values
            loss += terms.sum()
            if with_grad:
                if student_coef != 1.0:
                    grad.mul_(student_coef)
                low = grad.to(weight.dtype)
                if need_h:
                    grad_hidden[rows] = (low @ weight).to(grad_hidden.dtype)
                if need_w:
                    if low.dtype == torch.float32:  # in place: no (V, H) temporary per chunk
                        grad_weight.addmm_(low.t(), hidden.float())
                    else:
                        grad_weight += _mm_fp32(low.t(), hidden.to(weight.dtype))
                if need_b:
                    grad_bias += grad.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.mark_non_differentiable(values)
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
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


def fused_linear_divergence(
    student: Projection,
    teacher: Union[Projection, Sequence[Projection]],
    token_weights: torch.Tensor,
    kind: str = "reverse_kl",
    alpha: Optional[float] = None,
    temperature: Union[float, torch.Tensor] = 1.0,
    topk: Optional[int] = None,
    add_tail: bool = True,
    clamp: Optional[float] = None,
    chunk_bytes: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Form (b): sum_t w_t min(D_t, clamp) from last hidden states and lm_heads, never holding (N, V) logits
    (ALGORITHMS.md sections 1-3: SC-GRPO's D, SDPO's full / top-k distillation, SDPG's clamped L_OPD).

    Liger-Kernel style fused linear loss: each chunk of rows projects both sides through their lm_heads (GEMMs in
    the lm_head's dtype, the weight gradient accumulated in fp32 across chunks), computes D and its closed-form
    gradient, and keeps only the (N, H) hidden-state and (V, H) weight gradients; backward is a scale. Tokens with
    weight 0 cost nothing. Gradients flow into the student projection only.

    Args:
        student: the student's :class:`Projection`, hidden (N, H) at the response tokens.
        teacher: the teacher's projection(s), hidden (N, H) at the same tokens (stop-gradient); several are summed.
        token_weights: (N,) detached weights w_t (mask, normalisation, gates).
        kind, alpha: see :func:`divergence_from_log_probs`.
        temperature: float or (N,) per token: both sides are scored at logits / temperature.
        topk: score on the student's top-k ids (+ a tail bucket when ``add_tail``, else renormalised over them).
        clamp: per-token clamp of D in the loss (its gradient is 0 where D > clamp), SDPG's c = 20.
        chunk_bytes: fp32 work per chunk; None: the device's budget (:func:`device_chunk_bytes`).

    Returns:
        the scalar sum_t w_t min(D_t, clamp) (differentiable) and the per-token D (N,) fp32 (detached).
    """
    teacher = [teacher] if isinstance(teacher, Projection) else list(teacher)
    hidden, weight = student.hidden, student.weight
    if hidden.dim() != 2 or any(t.hidden.shape != hidden.shape for t in teacher) or not teacher:
        raise ValueError(
            f"hidden states must all be (N, H); got student {tuple(hidden.shape)} and teacher "
            f"{[tuple(t.hidden.shape) for t in teacher]}"
        )
    if any(t.weight.shape[0] != weight.shape[0] for t in teacher):
        raise ValueError("student and teacher lm_heads must have the same vocabulary size")
    if token_weights.shape != (hidden.shape[0],):
        raise ValueError(f"token_weights must be (N,) = ({hidden.shape[0]},), got {tuple(token_weights.shape)}")
    options = _options(kind, alpha, weight.shape[0], chunk_bytes, hidden.device, topk, add_tail, clamp)
    detached = [Projection(t.hidden.detach(), t.weight.detach(), None if t.bias is None else t.bias.detach(),
                           float(t.coef)) for t in teacher]
    return _FusedLinearDivergence.apply(
        hidden, weight, student.bias, token_weights.detach(), _row_scale(temperature, hidden.shape[0], hidden.device),
        detached, float(student.coef), options,
    )


@torch.no_grad()
def projected_token_log_probs(
    projections: Union[Projection, Sequence[Projection]],
    token_ids: torch.Tensor,
    temperature: Union[float, torch.Tensor] = 1.0,
    chunk_bytes: Optional[int] = None,
) -> torch.Tensor:
    """log softmax(logits / T)[y_t] per token from hidden states, (N,) fp32, chunked: no (N, V) buffer
    (the teacher's log-prob of the sampled token, SDPO's sampled-token distillation, ALGORITHMS.md section 2)."""
    projections = [projections] if isinstance(projections, Projection) else list(projections)
    first = projections[0]
    num_rows, vocab = first.hidden.shape[0], first.weight.shape[0]
    if token_ids.shape != (num_rows,):
        raise ValueError(f"token_ids must be (N,) = ({num_rows},), got {tuple(token_ids.shape)}")
    scale = _row_scale(temperature, num_rows, first.hidden.device)
    step = chunk_rows(vocab, chunk_bytes, "forward_kl", first.hidden.device) * 2
    out = torch.empty(num_rows, dtype=torch.float32, device=first.hidden.device)
    buffer = torch.empty(min(step, max(num_rows, 1)), vocab, dtype=torch.float32, device=first.hidden.device)
    with _no_autocast():
        _token_log_probs_into(out, buffer, projections, token_ids, scale, step)
    return out


def _token_log_probs_into(out, buffer, projections, token_ids, scale, step) -> None:
    num_rows = out.shape[0]
    for start in range(0, num_rows, step):
        rows = slice(start, start + step)
        logits = buffer[: min(step, num_rows - start)]
        for i, term in enumerate(projections):
            _linear_into(logits, term.hidden[rows], term.weight, term.bias, float(term.coef), i > 0)
        if scale is not None:
            logits.mul_(scale[rows].unsqueeze(-1))
        picked = logits.gather(-1, token_ids[rows].long().unsqueeze(-1)).squeeze(-1)
        out[rows] = picked - torch.logsumexp(logits, dim=-1)
