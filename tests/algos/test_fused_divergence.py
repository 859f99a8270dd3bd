"""The chunked divergence kernel (full-vocabulary logits, fused lm_head projections, top-k + tail, clamp, the
sampled token's log-prob) against naive per-token loops and plain float64 autograd (independent computations)."""

import math

import pytest
import torch

from conftest import naive_divergence
from scgrpo_verl.algos.divergence import divergence_from_log_probs
from scgrpo_verl.algos.fused_divergence import (
    Projection,
    full_vocab_divergence,
    fused_linear_divergence,
    projected_token_log_probs,
)

KINDS = [("forward_kl", None), ("reverse_kl", None), ("jsd", 0.5), ("jsd", 0.2), ("jsd", 0.0), ("jsd", 1.0)]


@pytest.mark.parametrize("kind,alpha", KINDS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_full_vocab_matches_naive_loop(kind, alpha, temperature):
    g = torch.Generator().manual_seed(0)
    p_logits = torch.randn(7, 11, generator=g) * 2
    q_logits = torch.randn(7, 11, generator=g) * 2
    got = full_vocab_divergence(p_logits, q_logits, kind, alpha, temperature)
    expected = naive_divergence(p_logits, q_logits, kind, alpha, temperature)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_full_vocab_bf16_inputs_accumulate_in_fp32_and_mask():
    g = torch.Generator().manual_seed(1)
    p_logits = (torch.randn(2, 5, 300, generator=g) * 3).bfloat16()
    q_logits = (torch.randn(2, 5, 300, generator=g) * 3).bfloat16()
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]])
    got = full_vocab_divergence(p_logits, q_logits, "reverse_kl", mask=mask)
    assert got.dtype == torch.float32 and got.shape == (2, 5)
    # the reference upcasts the same bf16 values and loops in float64
    expected = naive_divergence(p_logits.reshape(10, 300).float(), q_logits.reshape(10, 300).float(), "reverse_kl", None)
    torch.testing.assert_close(got.double(), expected.reshape(2, 5) * mask, rtol=1e-4, atol=1e-6)
    assert (got[mask == 0] == 0).all()


def test_identical_distributions_have_zero_divergence_and_jsd_is_bounded():
    logits = torch.randn(4, 9)
    for kind, alpha in KINDS:
        torch.testing.assert_close(full_vocab_divergence(logits, logits, kind, alpha), torch.zeros(4), atol=1e-6, rtol=0)
    far = torch.full((1, 2), -50.0)
    p = far.clone()
    p[0, 0] = 50
    q = far.clone()
    q[0, 1] = 50
    # JSD with alpha = 1/2 is at most log 2
    assert full_vocab_divergence(p, q, "jsd", 0.5).item() <= math.log(2) + 1e-6


def naive_autograd_divergence(p_logits, q_logits, kind, alpha, temperature=1.0, dtype=torch.float64):
    """Plain autograd over whole log-softmaxes (no chunks, no closed-form gradient), in ``dtype`` (fp64)."""
    log_p = torch.log_softmax(p_logits.to(dtype) / temperature, -1)
    log_q = torch.log_softmax(q_logits.to(dtype) / temperature, -1)
    if kind == "forward_kl" or (kind == "jsd" and alpha == 0.0):
        return (log_q.exp() * (log_q - log_p)).sum(-1)
    if kind == "reverse_kl" or (kind == "jsd" and alpha == 1.0):
        return (log_p.exp() * (log_p - log_q)).sum(-1)
    m = (1 - alpha) * log_p.exp() + alpha * log_q.exp()
    return (1 - alpha) * (log_p.exp() * (log_p - m.log())).sum(-1) + alpha * (log_q.exp() * (log_q - m.log())).sum(-1)


@pytest.mark.parametrize("kind,alpha", KINDS)
@pytest.mark.parametrize("chunk_bytes", [1, 4 * 8 * 23 * 3, 1 << 20])
def test_full_vocab_gradient_matches_autograd_and_finite_differences(kind, alpha, chunk_bytes):
    g = torch.Generator().manual_seed(4)
    p_logits = (torch.randn(9, 23, generator=g, dtype=torch.float64) * 2).float().requires_grad_(True)
    q_logits = torch.randn(9, 23, generator=g) * 2
    upstream = torch.randn(9, generator=g)
    got = full_vocab_divergence(p_logits, q_logits, kind, alpha, 0.8, chunk_bytes=chunk_bytes)
    (got * upstream).sum().backward()
    ref_logits = p_logits.detach().double().requires_grad_(True)
    expected = naive_autograd_divergence(ref_logits, q_logits, kind, alpha, 0.8)
    (expected * upstream.double()).sum().backward()
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p_logits.grad.double(), ref_logits.grad, rtol=1e-4, atol=1e-6)
    # central finite differences on one logit, in float64 through the naive formula
    row, col, eps = 2, 5, 1e-6
    bumped = ref_logits.detach().clone()
    bumped[row, col] += eps
    plus = naive_autograd_divergence(bumped, q_logits, kind, alpha, 0.8)[row]
    bumped[row, col] -= 2 * eps
    minus = naive_autograd_divergence(bumped, q_logits, kind, alpha, 0.8)[row]
    fd = (plus - minus) / (2 * eps) * upstream[row].double()
    assert abs(float(p_logits.grad[row, col]) - float(fd)) < 1e-4


def test_kernel_zero_mass_terms_are_zero_not_floored():
    # an independent check: the log-ratio of the mass-carrying token is 2e4 exactly
    p = torch.tensor([[1e4, -1e4, 0.0]])
    q = torch.tensor([[-1e4, 1e4, 0.0]])
    assert full_vocab_divergence(p, q, "forward_kl").item() == pytest.approx(2e4, rel=1e-6)
    assert full_vocab_divergence(p, q, "reverse_kl").item() == pytest.approx(2e4, rel=1e-6)
    # -inf logits (masked vocabulary entries) on both sides contribute 0, not nan
    masked = torch.tensor([[0.5, float("-inf"), 1.0]])
    other = torch.tensor([[1.0, float("-inf"), 0.0]])
    for kind, alpha in KINDS:
        value = full_vocab_divergence(masked, other, kind, alpha)
        # equal to the divergence over the two entries that carry mass (naive loop without the -inf column)
        expected = naive_divergence(masked[:, [0, 2]], other[:, [0, 2]], kind, alpha)
        torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)
        logits = masked.clone().requires_grad_(True)
        full_vocab_divergence(logits, other, kind, alpha).sum().backward()
        assert torch.isfinite(logits.grad).all() and logits.grad[0, 1] == 0


@pytest.mark.parametrize("kind,alpha", [("forward_kl", None), ("reverse_kl", None), ("jsd", 0.3)])
@pytest.mark.parametrize("chunk_bytes", [1, 4 * 8 * 23 * 3, 1 << 20])
def test_fused_linear_values_and_gradients_match_autograd(kind, alpha, chunk_bytes):
    g = torch.Generator().manual_seed(2)
    num_tokens, hidden, vocab = 10, 6, 23
    weight = torch.randn(vocab, hidden, generator=g, requires_grad=True)
    bias = torch.randn(vocab, generator=g, requires_grad=True)
    h_s = torch.randn(num_tokens, hidden, generator=g, requires_grad=True)
    h_t = torch.randn(num_tokens, hidden, generator=g, requires_grad=True)
    token_weights = torch.randn(num_tokens, generator=g) * (torch.rand(num_tokens, generator=g) > 0.3)

    loss, values = fused_linear_divergence(Projection(h_s, weight, bias), Projection(h_t, weight, bias),
                                           token_weights, kind, alpha, 0.9, chunk_bytes=chunk_bytes)
    (2.5 * loss).backward()
    grads = h_s.grad.clone(), weight.grad.clone(), bias.grad.clone()
    assert h_t.grad is None  # the teacher side is stop-gradient

    h_s.grad = weight.grad = bias.grad = None
    teacher = (h_t @ weight.T + bias).detach()
    ref = naive_autograd_divergence(h_s @ weight.T + bias, teacher, kind, alpha, 0.9)
    (2.5 * (ref * token_weights.double()).sum()).backward()
    active = token_weights != 0
    torch.testing.assert_close(values[active].double(), ref[active].detach(), rtol=1e-5, atol=1e-5)
    assert torch.equal(values[~active], torch.zeros(int((~active).sum())))  # weight-0 tokens cost nothing
    torch.testing.assert_close(loss.double(), (ref * token_weights.double()).sum().detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], h_s.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[1], weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[2], bias.grad, rtol=1e-4, atol=1e-5)


def test_fused_linear_separate_teacher_head():
    g = torch.Generator().manual_seed(3)
    w_s, w_t = torch.randn(17, 4, generator=g), torch.randn(17, 4, generator=g)
    h_s, h_t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    _, values = fused_linear_divergence(Projection(h_s, w_s), Projection(h_t, w_t), torch.ones(5), "forward_kl")
    torch.testing.assert_close(values.double(), naive_autograd_divergence(h_s @ w_s.T, h_t @ w_t.T, "forward_kl", None),
                               rtol=1e-5, atol=1e-6)


def test_fused_linear_bf16_head_scores_the_bf16_logits_in_fp32():
    # a bf16 lm_head: the logits are the model's own bf16 matmul, the divergence and its gradients fp32 math
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(29, 8, generator=g).bfloat16().requires_grad_(True)
    h_s = torch.randn(7, 8, generator=g).bfloat16().requires_grad_(True)
    h_t = torch.randn(7, 8, generator=g).bfloat16()
    loss, values = fused_linear_divergence(Projection(h_s, weight), Projection(h_t, weight), torch.ones(7),
                                           "reverse_kl", chunk_bytes=4 * 4 * 29 * 3)
    loss.backward()
    assert values.dtype == torch.float32 and h_s.grad.dtype == weight.grad.dtype == torch.bfloat16
    s_logits = (h_s.detach() @ weight.detach().T).float().requires_grad_(True)  # bf16 matmul, then fp32
    ref = naive_autograd_divergence(s_logits, (h_t @ weight.detach().T).float(), "reverse_kl", None)
    torch.testing.assert_close(values.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    ref.sum().backward()
    torch.testing.assert_close(h_s.grad.float(), (s_logits.grad.float().bfloat16() @ weight.detach()).float(),
                               rtol=2e-2, atol=2e-2)


def _naive_buckets(student_logits, teacher_logits, k, add_tail):
    """Top-k (+ tail) log-probs built with plain autograd ops from full log-softmaxes (the tail as a log-sum-exp
    over the ids outside the top-k), the independent reference of the kernel's closed form."""
    lp, lq = student_logits.log_softmax(-1), teacher_logits.log_softmax(-1)
    ids = student_logits.detach().topk(k, -1).indices
    tp, tq = lp.gather(-1, ids), lq.gather(-1, ids)
    if not add_tail:
        return tp - tp.logsumexp(-1, keepdim=True), tq - tq.logsumexp(-1, keepdim=True)
    rest_p = lp.scatter(-1, ids, float("-inf")).logsumexp(-1, keepdim=True)
    rest_q = lq.scatter(-1, ids, float("-inf")).logsumexp(-1, keepdim=True)
    return torch.cat([tp, rest_p], -1), torch.cat([tq, rest_q], -1)


@pytest.mark.parametrize("kind,alpha", [("forward_kl", None), ("reverse_kl", None), ("jsd", 0.5)])
@pytest.mark.parametrize("add_tail", [True, False])
@pytest.mark.parametrize("clamp", [None, 0.3])
def test_fused_linear_topk_and_clamp_match_float64_autograd(kind, alpha, add_tail, clamp):
    """The kernel's top-k(+tail) closed-form gradient, the per-token clamp (SDPG's c) and a per-token temperature,
    against plain float64 autograd through the same buckets; separate teacher head, chunks of 3 rows."""
    g = torch.Generator().manual_seed(7)
    n, hidden, vocab, k = 11, 5, 31, 4
    weight = torch.randn(vocab, hidden, generator=g, dtype=torch.float64)
    teacher_weight = torch.randn(vocab, hidden, generator=g, dtype=torch.float64)
    h_s, h_t = torch.randn(n, hidden, generator=g, dtype=torch.float64), torch.randn(n, hidden, generator=g, dtype=torch.float64)
    token_weights = torch.rand(n, generator=g, dtype=torch.float64)
    temperature = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)

    h64, w64 = h_s.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    lp, lq = _naive_buckets((h64 @ w64.T) / temperature[:, None], (h_t @ teacher_weight.T) / temperature[:, None], k,
                            add_tail)
    ref = divergence_from_log_probs(lp, lq, kind, alpha).double()
    ((ref if clamp is None else ref.clamp(max=clamp)) * token_weights).sum().backward()

    h32, w32 = h_s.float().requires_grad_(True), weight.float().requires_grad_(True)
    loss, values = fused_linear_divergence(
        Projection(h32, w32), Projection(h_t.float(), teacher_weight.float()), token_weights.float(), kind, alpha,
        temperature=temperature.float(), topk=k, add_tail=add_tail, clamp=clamp, chunk_bytes=4 * 4 * vocab * 3,
    )
    loss.backward()
    torch.testing.assert_close(values.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h32.grad.double(), h64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w32.grad.double(), w64.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind,alpha", [("forward_kl", None), ("reverse_kl", None), ("jsd", 0.5)])
def test_fused_linear_fp32_gradient_at_least_as_accurate_as_fp32_autograd(kind, alpha):
    """Against a float64 reference, the kernel's fp32 gradients are no less accurate than plain fp32 autograd's
    (within 1.5x, over several seeds, at a realistic logit scale)."""
    ours_err, autograd_err = [], []
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        n, hidden, vocab = 64, 32, 2048
        weight = torch.randn(vocab, hidden, generator=g, dtype=torch.float64) * 0.6
        h_s = torch.randn(n, hidden, generator=g, dtype=torch.float64)
        h_t = h_s + 0.3 * torch.randn(n, hidden, generator=g, dtype=torch.float64)

        def autograd(dtype):
            h, w = h_s.detach().to(dtype).clone().requires_grad_(True), weight.to(dtype).clone().requires_grad_(True)
            d = divergence_from_log_probs((h @ w.T).log_softmax(-1), (h_t.to(dtype) @ w.detach().T).log_softmax(-1),
                                          kind, alpha) if dtype == torch.float64 else naive_autograd_divergence(
                h @ w.T, h_t.to(dtype) @ w.detach().T, kind, alpha, dtype=dtype)
            d.sum().backward()
            return h.grad.double()

        exact = autograd(torch.float64)
        h32 = h_s.float().requires_grad_(True)
        w32 = weight.float()
        loss, _ = fused_linear_divergence(Projection(h32, w32), Projection(h_t.float(), w32), torch.ones(n), kind, alpha)
        loss.backward()
        scale = exact.abs().max()
        ours_err.append(float((h32.grad.double() - exact).abs().max() / scale))
        autograd_err.append(float((autograd(torch.float32) - exact).abs().max() / scale))
    assert max(ours_err) <= 1.5 * max(autograd_err) + 1e-7, (ours_err, autograd_err)


def test_projected_token_log_probs_match_log_softmax():
    g = torch.Generator().manual_seed(9)
    h1, h2 = torch.randn(13, 6, generator=g), torch.randn(13, 6, generator=g)
    w1, w2 = torch.randn(40, 6, generator=g), torch.randn(40, 6, generator=g)
    ids = torch.randint(40, (13,), generator=g)
    got = projected_token_log_probs([Projection(h1, w1, None, 0.25), Projection(h2, w2, None, 0.75)], ids, 0.8,
                                    chunk_bytes=4 * 4 * 40 * 2)
    logits = (0.25 * h1.double() @ w1.double().T + 0.75 * h2.double() @ w2.double().T) / 0.8
    torch.testing.assert_close(got.double(), logits.log_softmax(-1).gather(-1, ids[:, None]).squeeze(-1),
                               rtol=1e-5, atol=1e-5)


def test_kernels_keep_fp32_under_the_callers_autocast():
    """verl's forward step runs the loss under torch.autocast(bf16): the kernels' values, loss and gradients are the
    same as without it (their matmuls in the lm_head's dtype, their math in fp32)."""
    g = torch.Generator().manual_seed(12)
    weight = torch.randn(37, 8, generator=g)
    h_s, h_t = torch.randn(9, 8, generator=g), torch.randn(9, 8, generator=g)
    ids = torch.randint(37, (9,), generator=g)
    results = []
    student_logits, teacher_logits = h_s @ weight.T, h_t @ weight.T
    for enabled in (False, True):
        h = h_s.clone().requires_grad_(True)
        logits = student_logits.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            loss, values = fused_linear_divergence(Projection(h, weight), Projection(h_t, weight), torch.ones(9),
                                                   "jsd", 0.5, topk=5)
            full = full_vocab_divergence(logits, teacher_logits, "reverse_kl")
            tokens = projected_token_log_probs(Projection(h_t, weight), ids)
        loss.backward()
        assert values.dtype == full.dtype == tokens.dtype == torch.float32
        results.append((loss.detach(), values, full.detach(), tokens, h.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
