"""SDPO's sampled-token distillation term and its clipped importance weight (scgrpo_verl.algos.sdpo) against plain
python loops and, for the gradient, the closed-form KL(p || q) on a small vocabulary (ALGORITHMS.md section 2)."""

import math

import pytest
import torch

from scgrpo_verl.algos.sdpo import sampled_token_distillation_loss, sdpo_importance_weight


def test_sampled_token_loss_value_and_gradient_per_token():
    """sg(log p - log q) * log p: its value, and its gradient d/d log p = log p - log q (the first factor is held
    constant); the teacher's log-probs get no gradient."""
    g = torch.Generator().manual_seed(0)
    student = (-torch.rand(2, 5, generator=g) * 4).requires_grad_()
    teacher = (-torch.rand(2, 5, generator=g) * 4).requires_grad_()
    loss = sampled_token_distillation_loss(student, teacher)
    loss.sum().backward()
    for b in range(2):
        for t in range(5):
            lp, lq = student[b, t].item(), teacher[b, t].item()
            assert loss[b, t].item() == pytest.approx((lp - lq) * lp, rel=1e-6)
            assert student.grad[b, t].item() == pytest.approx(lp - lq, rel=1e-6)
    assert teacher.grad is None


def test_sampled_token_gradient_is_the_reverse_kl_gradient_in_expectation():
    """Over y ~ p, E[grad of the sampled-token loss] = grad KL(p || q) with respect to the student's logits: the
    expectation taken exactly, summing the loss's gradient at every token of a 6-word vocabulary weighted by p(y)."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, generator=g, dtype=torch.float64)
    log_q = torch.log_softmax(torch.randn(6, generator=g, dtype=torch.float64), -1)
    expected_grad = torch.zeros(6, dtype=torch.float64)  # E_{y~p}[grad of the loss at y]
    p = torch.softmax(logits, -1)
    for y in range(6):
        theta = logits.clone().requires_grad_()
        log_p_y = torch.log_softmax(theta, -1)[y]
        sampled_token_distillation_loss(log_p_y.reshape(1, 1), log_q[y].reshape(1, 1)).sum().backward()
        expected_grad += p[y] * theta.grad
    theta = logits.clone().requires_grad_()
    log_p = torch.log_softmax(theta, -1)
    kl = sum(log_p[v].exp() * (log_p[v] - log_q[v]) for v in range(6))  # KL(p || q), a plain sum
    kl.backward()
    torch.testing.assert_close(expected_grad, theta.grad, rtol=1e-6, atol=1e-9)  # (the loss is float32 inside)


def test_importance_weight_is_the_clipped_ratio_times_rollout_weights():
    log_prob = torch.tensor([[-1.0, -0.2, -3.0, -0.5], [-2.0, -25.0, 0.0, -1.0]])
    old = torch.tensor([[-1.0, -1.5, -2.0, -0.1], [-30.0, -1.0, -0.5, -1.0]])
    rollout = torch.tensor([[0.5, 1.0, 2.0, 1.0], [1.0, 1.0, 0.25, 3.0]])
    for clip in (2.0, 1.2, 50.0):
        weight = sdpo_importance_weight(log_prob, old, clip)
        with_rollout = sdpo_importance_weight(log_prob, old, clip, rollout)
        for b in range(2):
            for t in range(4):
                ratio = math.exp(min(log_prob[b, t].item() - old[b, t].item(), 20.0))  # the log-ratio is capped at 20
                assert weight[b, t].item() == pytest.approx(min(ratio, clip), rel=1e-6)
                assert with_rollout[b, t].item() == pytest.approx(min(ratio, clip) * rollout[b, t].item(), rel=1e-6)
    # [1, 0]: log-ratio 28, capped at 20: exp(20) when the clip allows it
    assert sdpo_importance_weight(log_prob, old, 1e9)[1, 0].item() == pytest.approx(math.exp(20.0), rel=1e-6)


def test_importance_weight_off_detached_and_float32():
    log_prob = torch.tensor([[-1.0, -0.2]], dtype=torch.bfloat16, requires_grad=True)
    old = torch.tensor([[-1.5, -0.1]], dtype=torch.bfloat16)
    weight = sdpo_importance_weight(log_prob, old, 2.0)
    assert weight.dtype == torch.float32 and not weight.requires_grad
    assert sdpo_importance_weight(log_prob, old, None).tolist() == [[1.0, 1.0]]
    rollout = torch.tensor([[0.5, 4.0]], requires_grad=True)
    off = sdpo_importance_weight(log_prob, old, None, rollout)
    assert off.tolist() == [[0.5, 4.0]] and not off.requires_grad
