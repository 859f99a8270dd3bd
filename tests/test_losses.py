"""SC-GRPO / SDPO / SDPG actor losses through verl's engine loss path (jagged micro-batches, tiny
random Qwen2), against naive per-token formulas and against verl's own ``ppo_loss``."""

import functools
import math

import numpy as np
import pytest
import torch

from conftest import (
    VOCAB,
    make_micro_batch,
    nested,
    response_logits,
    slice_micro_batch,
    teacher_loss as engine_loss,
    teacher_states,
)
from scgrpo_verl.algos.sc_grpo import ROUTE_PLAIN, ROUTE_WEIGHTED

PROMPTS, RESPONSES = [3, 2, 4, 3], [4, 6, 3, 5]


@functools.lru_cache(maxsize=None)
def actor_config(name, *overrides):
    from scgrpo_verl.compose import compose_config
    from verl.utils.config import omega_conf_to_dataclass

    return omega_conf_to_dataclass(compose_config(name, list(overrides)).actor_rollout_ref.actor)


def loss_fns(config):
    from verl.workers.utils.losses import ppo_loss

    from scgrpo_verl.losses import self_teacher_loss

    return functools.partial(self_teacher_loss, config=config), functools.partial(ppo_loss, config=config)


def padded(td, key):
    return td[key].to_padded_tensor(0.0)


def student_log_probs(model, td):
    logits = response_logits(model, td)
    ids = padded(td, "responses").long()
    return logits, logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def naive_pg_tokens(log_prob, old, adv, low=0.2, high=0.2, c=3.0):
    """verl's dual-clip surrogate written out per token."""
    ratio = torch.exp((log_prob - old).clamp(-20, 20))
    clipped = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - low, 1 + high))
    return torch.where(adv < 0, torch.minimum(-adv * c, clipped), clipped)


def naive_kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)


def naive_jsd(p, q, alpha):
    if alpha == 0:
        return naive_kl(q, p)
    if alpha == 1:
        return naive_kl(p, q)
    m = [(1 - alpha) * x + alpha * y for x, y in zip(p, q)]
    return (1 - alpha) * naive_kl(p, m) + alpha * naive_kl(q, m)


def token_mask(td):
    return padded(td, "response_mask")


@pytest.mark.parametrize("name", ["sc_grpo", "sdpo", "sdpg"])
def test_extra_terms_off_equals_verl_ppo_loss(tiny_model, name):
    overrides = {
        "sc_grpo": (),
        "sdpo": ("self_teacher.sdpo.pg_coef=1.0", "self_teacher.sdpo.distillation=sampled_token", "self_teacher.sdpo.alpha=1.0"),
        "sdpg": ("self_teacher.sdpg.beta_base=0.0", "actor_rollout_ref.actor.use_kl_loss=false"),
    }[name]
    config = actor_config(name, *overrides)
    extra = {
        "sc_divergence": nested(torch.rand(r) for r in RESPONSES),
        "sc_route": torch.full((4,), ROUTE_PLAIN),
        "teacher_log_probs": nested(-torch.rand(r) for r in RESPONSES),
        "self_teacher_mask": torch.ones(4),
    }
    td = make_micro_batch(PROMPTS, RESPONSES, extra=extra, non_tensor={"global_steps": 5})
    ours, ppo = loss_fns(config)
    loss, metrics = engine_loss(tiny_model, td, ours)
    expected, _ = engine_loss(tiny_model, td, ppo)
    assert torch.equal(loss, expected)
    assert "actor/pg_loss" in metrics


def test_sc_grpo_weights_token_terms(tiny_model):
    config = actor_config("sc_grpo")
    divergence = [torch.rand(r, generator=torch.Generator().manual_seed(i)) * 0.3 for i, r in enumerate(RESPONSES)]
    route = torch.tensor([ROUTE_WEIGHTED, ROUTE_PLAIN, ROUTE_WEIGHTED, ROUTE_WEIGHTED])
    td = make_micro_batch(PROMPTS, RESPONSES, extra={"sc_divergence": nested(divergence), "sc_route": route})
    ours, _ = loss_fns(config)
    loss, metrics = engine_loss(tiny_model, td, ours)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_model.parameters())
    tiny_model.zero_grad()

    with torch.no_grad():
        _, log_prob = student_log_probs(tiny_model, td)
    weighted = [d.item() for i in (0, 2, 3) for d in divergence[i]]
    c = max(float(np.percentile(weighted, 75)), 1e-4)
    total, old, adv = 0.0, padded(td, "old_log_probs"), padded(td, "advantages")
    pg = naive_pg_tokens(log_prob, old, adv)
    for i, r in enumerate(RESPONSES):
        for t in range(r):
            w = divergence[i][t].item() / (divergence[i][t].item() + c) if route[i] == ROUTE_WEIGHTED else 1.0
            total += w * pg[i, t].item()
    assert loss.item() == pytest.approx(total / sum(RESPONSES), rel=1e-5, abs=1e-7)
    assert metrics["self_teacher/sc_c"] == pytest.approx(c, rel=1e-6)


def _teacher_logits(seed=11):
    """(teacher hidden states for the micro-batch, the teacher logits they give) per row."""
    return teacher_states(RESPONSES, seed)


@pytest.mark.parametrize("distillation,alpha", [("full", 0.5), ("full", 0.0), ("topk", 0.5), ("topk", 1.0), ("sampled_token", 1.0)])
def test_sdpo_loss_matches_naive(tiny_model, distillation, alpha):
    k = 5
    config = actor_config(
        "sdpo", f"self_teacher.sdpo.distillation={distillation}", f"self_teacher.sdpo.alpha={alpha}", f"self_teacher.sdpo.topk={k}"
    )
    hidden, teacher = _teacher_logits()
    td0 = make_micro_batch(PROMPTS, RESPONSES)
    with torch.no_grad():
        s_logits, log_prob = student_log_probs(tiny_model, td0)
    ids = [s_logits[i, :r].topk(k, -1).indices for i, r in enumerate(RESPONSES)]
    topk_lp = []
    for i, r in enumerate(RESPONSES):
        lq = teacher[i].log_softmax(-1)
        picked = lq.gather(-1, ids[i])
        topk_lp.append(torch.cat([picked, torch.log1p(-picked.exp().sum(-1, keepdim=True))], -1))
    teacher_sampled = [teacher[i].log_softmax(-1).gather(-1, padded(td0, "responses")[i, :r].long().unsqueeze(-1)).squeeze(-1)
                       for i, r in enumerate(RESPONSES)]
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0])
    extra = {
        "teacher_hidden": nested(hidden),
        "teacher_topk_ids": nested(ids),
        "teacher_topk_log_probs": nested(topk_lp),
        "teacher_log_probs": nested(teacher_sampled),
        "self_teacher_mask": mask,
    }
    td = make_micro_batch(PROMPTS, RESPONSES, extra=extra)
    ours, _ = loss_fns(config)
    loss, metrics = engine_loss(tiny_model, td, ours)

    old = padded(td, "old_log_probs")
    total = 0.0
    for i, r in enumerate(RESPONSES):
        for t in range(r):
            p = s_logits[i, t].softmax(-1).tolist()
            q = teacher[i][t].softmax(-1).tolist()
            if distillation == "full":
                value = naive_jsd(p, q, alpha)
            elif distillation == "topk":
                top = ids[i][t].tolist()
                bp = [p[v] for v in top] + [1 - sum(p[v] for v in top)]
                bq = [q[v] for v in top] + [1 - sum(q[v] for v in top)]
                value = naive_jsd(bp, bq, alpha)
            else:
                lp = log_prob[i, t].item()
                value = (lp - teacher_sampled[i][t].item()) * lp
            weight = min(math.exp(log_prob[i, t].item() - old[i, t].item()), 2.0)
            total += value * weight * mask[i].item()
    assert loss.item() == pytest.approx(total / sum(RESPONSES), rel=1e-4, abs=1e-6)
    loss.backward()
    grads = [p.grad for p in tiny_model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads) and sum(gr.abs().sum() for gr in grads) > 0
    tiny_model.zero_grad()


def test_sdpg_loss_matches_naive(tiny_model):
    config = actor_config("sdpg", "self_teacher.sdpg.beta_base=0.5")
    hidden, teacher = _teacher_logits(3)
    g = torch.Generator().manual_seed(5)
    ref = [-torch.rand(r, generator=g) * 3 for r in RESPONSES]
    step = 20
    td = make_micro_batch(
        PROMPTS, RESPONSES,
        extra={"teacher_hidden": nested(hidden), "ref_log_prob": nested(ref), "self_teacher_mask": torch.ones(4)},
        non_tensor={"global_steps": step},
    )
    ours, _ = loss_fns(config)
    loss, metrics = engine_loss(tiny_model, td, ours)
    with torch.no_grad():
        s_logits, log_prob = student_log_probs(tiny_model, td)
    old, adv = padded(td, "old_log_probs"), padded(td, "advantages")
    pg = naive_pg_tokens(log_prob, old, adv, low=0.2, high=0.28, c=10.0)
    beta = 0.5 * min(1, step / 50) * min(1, (400 - step) / 350)
    n = sum(RESPONSES)
    pg_total = opd_total = kl_total = 0.0
    for i, r in enumerate(RESPONSES):
        for t in range(r):
            pg_total += pg[i, t].item()
            rev = naive_kl(s_logits[i, t].softmax(-1).tolist(), teacher[i][t].softmax(-1).tolist())
            opd_total += min(rev, 20.0) * (adv[i, t].item() > 0)
            kl_total += 0.5 * (log_prob[i, t].item() - ref[i][t].item()) ** 2
    expected = pg_total / n + beta * opd_total / n + 1e-3 * kl_total / n
    assert loss.item() == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert metrics["self_teacher/sdpg_beta"] == pytest.approx(beta)


@pytest.mark.parametrize("name,overrides,non_tensor", [
    ("sdpo", ("self_teacher.sdpo.distillation=topk", "self_teacher.sdpo.topk=4"), {}),
    ("sdpg", ("self_teacher.sdpg.beta_base=0.5",), {"global_steps": 60}),
    ("opsd", (), {}),
])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_micro_batches_sum_to_the_whole_batch_loss(tiny_model, name, overrides, non_tensor, agg):
    """Gradient accumulation: micro-batch losses normalised by the global batch info sum to the
    one-big-batch loss (and so do their gradients)."""
    config = actor_config(name, *overrides, f"actor_rollout_ref.actor.loss_agg_mode={agg}")
    hidden, teacher = _teacher_logits(4)
    ids = [torch.randint(VOCAB, (r, 4), generator=torch.Generator().manual_seed(r)) for r in RESPONSES]
    topk_lp = [torch.log_softmax(torch.randn(r, 5), -1) for r in RESPONSES]
    extra = {
        "teacher_hidden": nested(hidden), "teacher_topk_ids": nested(ids), "teacher_topk_log_probs": nested(topk_lp),
        "ref_log_prob": nested(-torch.rand(r) for r in RESPONSES), "self_teacher_mask": torch.tensor([1.0, 1, 0, 1]),
    }
    td = make_micro_batch(PROMPTS, RESPONSES, extra=extra, non_tensor=non_tensor)
    ours, _ = loss_fns(config)
    whole, _ = engine_loss(tiny_model, td, ours)
    whole.backward()
    whole_grads = [p.grad.clone() for p in tiny_model.parameters()]
    tiny_model.zero_grad()
    parts = [engine_loss(tiny_model, slice_micro_batch(td, a, b), ours)[0] for a, b in ((0, 1), (1, 3), (3, 4))]
    total = sum(parts)
    total.backward()
    torch.testing.assert_close(total, whole, rtol=1e-5, atol=1e-7)
    for p, expected in zip(tiny_model.parameters(), whole_grads):
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-7)
    tiny_model.zero_grad()


def test_missing_teacher_inputs_raise_clear_errors(tiny_model):
    td = make_micro_batch(PROMPTS, RESPONSES)
    ours, _ = loss_fns(actor_config("sc_grpo"))
    with pytest.raises(KeyError, match="sc_divergence"):
        engine_loss(tiny_model, td, ours)
    ours, _ = loss_fns(actor_config("sdpg"))
    td = make_micro_batch(PROMPTS, RESPONSES, extra={"teacher_hidden": nested(_teacher_logits()[0]),
                                                     "ref_log_prob": nested(-torch.rand(r) for r in RESPONSES),
                                                     "self_teacher_mask": torch.ones(4)},
                          )
    with pytest.raises(ValueError, match="global_steps"):
        engine_loss(tiny_model, td, ours)
    ours, _ = loss_fns(actor_config("sdpo", "self_teacher.sdpo.distillation=full"))
    td = make_micro_batch(PROMPTS, RESPONSES, extra={"self_teacher_mask": torch.ones(4)})
    with pytest.raises(ValueError, match="self-teacher"):
        engine_loss(tiny_model, td, ours, teacher_fn=None)


def test_sdpo_topk_without_tail_bucket_trains(tiny_model):
    """add_tail=false: both sides renormalised over the student's top-k ids (the landed code crashed here)."""
    k = 4
    config = actor_config("sdpo", "self_teacher.sdpo.add_tail=false", f"self_teacher.sdpo.topk={k}",
                          "self_teacher.sdpo.alpha=0.5")
    hidden, teacher = _teacher_logits(7)
    td = make_micro_batch(PROMPTS, RESPONSES, extra={"teacher_hidden": nested(hidden), "self_teacher_mask": torch.ones(4)},
                          )
    loss, _ = engine_loss(tiny_model, td, loss_fns(config)[0])
    with torch.no_grad():
        s_logits, log_prob = student_log_probs(tiny_model, td)
    old = padded(td, "old_log_probs")
    total = 0.0
    for i, r in enumerate(RESPONSES):
        for t in range(r):
            top = s_logits[i, t].topk(k).indices.tolist()
            p, q = s_logits[i, t].softmax(-1).tolist(), teacher[i][t].softmax(-1).tolist()
            bp = [p[v] / sum(p[u] for u in top) for v in top]
            bq = [q[v] / sum(q[u] for u in top) for v in top]
            total += naive_jsd(bp, bq, 0.5) * min(math.exp(log_prob[i, t].item() - old[i, t].item()), 2.0)
    assert loss.item() == pytest.approx(total / sum(RESPONSES), rel=1e-4, abs=1e-6)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in tiny_model.parameters() if p.grad is not None)
    tiny_model.zero_grad()


@pytest.mark.parametrize("normalize", ["all_tokens", "teacher_tokens"])
def test_sdpo_normalization_counts_teacher_tokens_over_the_global_batch(tiny_model, normalize):
    """teacher_tokens: the distillation sum is divided by the global number of tokens that have a teacher
    (handed in by the worker, here for a global batch twice this micro-batch); all_tokens: by all tokens."""
    config = actor_config("sdpo", "self_teacher.sdpo.distillation=full", f"self_teacher.sdpo.normalize={normalize}",
                          "self_teacher.sdpo.is_clip=null")
    hidden, teacher = _teacher_logits(8)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
    global_teacher_tokens, global_tokens = 2 * (RESPONSES[0] + RESPONSES[2]), 2 * sum(RESPONSES)
    td = make_micro_batch(PROMPTS, RESPONSES, extra={"teacher_hidden": nested(hidden), "self_teacher_mask": mask},
                          batch_num_tokens=global_tokens, global_batch_size=8,
                          non_tensor={"self_teacher_num_tokens": global_teacher_tokens,
                                      "self_teacher_num_rows": 4})
    loss, _ = engine_loss(tiny_model, td, loss_fns(config)[0])
    with torch.no_grad():
        s_logits, _ = student_log_probs(tiny_model, td)
    total = sum(naive_jsd(s_logits[i, t].softmax(-1).tolist(), teacher[i][t].softmax(-1).tolist(), 0.5)
                for i in (0, 2) for t in range(RESPONSES[i]))
    denominator = global_teacher_tokens if normalize == "teacher_tokens" else global_tokens
    assert loss.item() == pytest.approx(total / denominator, rel=1e-4)


def test_sc_grpo_batch_threshold_scope_uses_the_given_c(tiny_model):
    config = actor_config("sc_grpo", "self_teacher.sc_grpo.threshold_scope=batch")
    divergence = [torch.rand(r, generator=torch.Generator().manual_seed(i)) for i, r in enumerate(RESPONSES)]
    extra = {"sc_divergence": nested(divergence), "sc_route": torch.full((4,), ROUTE_WEIGHTED)}
    td = make_micro_batch(PROMPTS, RESPONSES, extra=extra, non_tensor={"sc_threshold": 0.37})
    _, metrics = engine_loss(tiny_model, td, loss_fns(config)[0])
    assert metrics["self_teacher/sc_c"] == pytest.approx(0.37)
    with pytest.raises(ValueError, match="sc_threshold"):
        engine_loss(tiny_model, make_micro_batch(PROMPTS, RESPONSES, extra=extra), loss_fns(config)[0])


@pytest.mark.parametrize("overrides,kind", [
    ((), "forward"),  # the paper's default: forward KL(q || p), full vocabulary
    (("self_teacher.opsd.divergence=reverse_kl",), "reverse"),
    (("self_teacher.opsd.divergence=jsd", "self_teacher.opsd.beta=0.3"), 0.3),
])
def test_opsd_loss_matches_naive(tiny_model, overrides, kind):
    """OPSD: the sequence-mean of each rollout's token-mean divergence (seq-mean-token-mean, the paper's Eq. 6/8),
    over the rollouts with a teacher (a row without a reference solution counts with 0); no policy-gradient term."""
    config = actor_config("opsd", *overrides)
    hidden, teacher = _teacher_logits(6)
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0])
    td = make_micro_batch(PROMPTS, RESPONSES, extra={"teacher_hidden": nested(hidden), "self_teacher_mask": mask})
    ours, _ = loss_fns(config)
    loss, metrics = engine_loss(tiny_model, td, ours)
    with torch.no_grad():
        s_logits, _ = student_log_probs(tiny_model, td)
    total = 0.0
    for i, r in enumerate(RESPONSES):
        if not mask[i]:
            continue
        per_token = []
        for t in range(r):
            p, q = s_logits[i, t].softmax(-1).tolist(), teacher[i][t].softmax(-1).tolist()
            per_token.append(naive_kl(q, p) if kind == "forward" else naive_kl(p, q) if kind == "reverse"
                             else naive_jsd(p, q, kind))
        total += sum(per_token) / r
    expected = total / len(RESPONSES)
    assert loss.item() == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert metrics["self_teacher/distill_loss"].aggregate() == pytest.approx(expected, rel=1e-4)


def test_opsd_topk_is_the_student_topk_with_a_tail_bucket(tiny_model):
    """``opsd.distillation=topk``: forward KL over the student's top-k ids plus one tail bucket per distribution."""
    config = actor_config("opsd", "self_teacher.opsd.distillation=topk", "self_teacher.opsd.topk=5",
                          "actor_rollout_ref.actor.loss_agg_mode=token-mean")
    hidden, teacher = _teacher_logits(7)
    td = make_micro_batch(PROMPTS, RESPONSES, extra={"teacher_hidden": nested(hidden), "self_teacher_mask": torch.ones(4)})
    loss, _ = engine_loss(tiny_model, td, loss_fns(config)[0])
    with torch.no_grad():
        s_logits, _ = student_log_probs(tiny_model, td)
    total = 0.0
    for i, r in enumerate(RESPONSES):
        for t in range(r):
            p, q = s_logits[i, t].softmax(-1), teacher[i][t].softmax(-1)
            ids = p.topk(5).indices
            p_k, q_k = p[ids].tolist(), q[ids].tolist()
            total += naive_kl(q_k + [1 - sum(q_k)], p_k + [1 - sum(p_k)])
    assert loss.item() == pytest.approx(total / sum(RESPONSES), rel=1e-4, abs=1e-7)
