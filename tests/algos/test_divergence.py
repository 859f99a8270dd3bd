"""The divergence formulas (kinds, top-k + tail buckets, sampled-token estimators) against naive per-token loops
over the vocabulary (independent closed forms); the chunked kernel's tests are in test_fused_divergence.py."""

import pytest
import torch

from conftest import naive_divergence
from scgrpo_verl.algos.divergence import (
    divergence_from_log_probs,
    divergence_from_log_probs as from_log_probs,
    student_topk_ids,
    topk_log_probs,
)
from scgrpo_verl.algos.fused_divergence import full_vocab_divergence


def test_invalid_kind_and_alpha_raise():
    with pytest.raises(ValueError, match="unknown divergence kind"):
        divergence_from_log_probs(torch.zeros(1, 2), torch.zeros(1, 2), "tv")
    with pytest.raises(ValueError, match="alpha"):
        divergence_from_log_probs(torch.zeros(1, 2), torch.zeros(1, 2), "jsd", 1.5)


def test_zero_mass_terms_are_zero_not_floored():
    # an independent check: the log-ratio of the mass-carrying token is 2e4 exactly
    p = torch.tensor([[1e4, -1e4, 0.0]])
    q = torch.tensor([[-1e4, 1e4, 0.0]])
    lp, lq = torch.log_softmax(p, -1), torch.log_softmax(q, -1)
    assert divergence_from_log_probs(lp, lq, "forward_kl").item() == pytest.approx(2e4, rel=1e-6)


def naive_topk(p_logits, q_logits, k, kind, alpha, add_tail):
    """Build the (K+1)-bucket or renormalised K-bucket distributions entry by entry."""
    rows_p, rows_q = [], []
    for zp, zq in zip(p_logits.double(), q_logits.double()):
        p, q = torch.softmax(zp, -1), torch.softmax(zq, -1)
        order = sorted(range(len(zp)), key=lambda v: -zp[v].item())[:k]
        bp = [p[v].item() for v in order]
        bq = [q[v].item() for v in order]
        if add_tail:
            bp.append(1 - sum(bp))
            bq.append(1 - sum(bq))
        else:
            bp = [x / sum(bp) for x in bp]
            bq = [x / sum(bq) for x in bq]
        rows_p.append(bp)
        rows_q.append(bq)
    lp, lq = torch.tensor(rows_p).log(), torch.tensor(rows_q).log()
    return naive_divergence(lp, lq, kind, alpha)  # softmax of log-probs is the distribution itself


@pytest.mark.parametrize("kind,alpha", [("forward_kl", None), ("reverse_kl", None), ("jsd", 0.5)])
@pytest.mark.parametrize("add_tail", [True, False])
def test_topk_matches_naive_buckets(kind, alpha, add_tail):
    g = torch.Generator().manual_seed(4)
    p_logits, q_logits = torch.randn(6, 40, generator=g), torch.randn(6, 40, generator=g)
    ids = student_topk_ids(p_logits, 5)
    got = from_log_probs(topk_log_probs(p_logits, ids, add_tail=add_tail), topk_log_probs(q_logits, ids, add_tail=add_tail),
                         kind, alpha)
    torch.testing.assert_close(got.double(), naive_topk(p_logits, q_logits, 5, kind, alpha, add_tail), rtol=1e-4, atol=1e-6)


def test_topk_tail_is_exact_and_full_k_equals_full_vocab():
    logits = torch.randn(3, 12)
    ids = student_topk_ids(logits, 4)
    with_tail = topk_log_probs(logits, ids)
    torch.testing.assert_close(with_tail.exp().sum(-1), torch.ones(3))
    q = torch.randn(3, 12)
    # k = V: the tail bucket is empty (zero mass) and the divergence is the full-vocabulary one
    all_ids = student_topk_ids(logits, 12)
    torch.testing.assert_close(
        from_log_probs(topk_log_probs(logits, all_ids), topk_log_probs(q, all_ids), "reverse_kl"),
        full_vocab_divergence(logits, q, "reverse_kl"), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="top-k"):
        student_topk_ids(logits, 13)


