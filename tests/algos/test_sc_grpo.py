"""SC-GRPO weights, routing and solve-none pseudo-advantages against naive computations, and the
registered estimator against verl's own GRPO."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from scgrpo_verl.algos.sc_grpo import (
    ROUTE_PLAIN,
    ROUTE_SOLVE_NONE,
    ROUTE_WEIGHTED,
    draw_solve_none_references,
    route_groups,
    sc_weight,
    solve_none_pseudo_advantage,
)


def test_sc_weight_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    divergence = torch.rand(3, 8, generator=g) * 2
    mask = torch.rand(3, 8, generator=g) > 0.25
    weights, c = sc_weight(divergence, mask)
    c_expected = max(float(np.percentile(divergence[mask].numpy(), 75)), 1e-4)  # numpy's linear percentile
    assert c.item() == pytest.approx(c_expected, rel=1e-6)
    for i in range(3):
        for t in range(8):
            d = divergence[i, t].item()
            expected = d / (d + c_expected) if mask[i, t] else 0.0
            assert weights[i, t].item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert ((weights >= 0) & (weights < 1)).all()


def test_sc_weight_c_min_floor_renormalisation_and_detach():
    divergence = torch.full((2, 4), 1e-6, requires_grad=True)
    mask = torch.ones(2, 4, dtype=torch.bool)
    weights, c = sc_weight(divergence, mask, c_min=1e-4)
    assert c.item() == pytest.approx(1e-4)
    assert not weights.requires_grad
    torch.testing.assert_close(weights, torch.full((2, 4), 1e-6 / (1e-6 + 1e-4)))
    d = torch.tensor([[0.1, 0.5, 2.0, 0.0]])
    renorm, _ = sc_weight(d, torch.tensor([[1, 1, 1, 0]]).bool(), renormalize=True)
    assert renorm[0, :3].mean().item() == pytest.approx(1.0)
    assert renorm[0, 3].item() == 0.0
    empty, c_empty = sc_weight(d, torch.zeros(1, 4, dtype=torch.bool))
    assert c_empty.item() == pytest.approx(1e-4) and (empty == 0).all()


def test_route_groups_by_number_correct():
    # G = 4 per group: n_c = 0, 1, 2, 4
    scores = torch.tensor([0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1.0])
    index = ["a"] * 4 + ["b"] * 4 + ["c"] * 4 + ["d"] * 4
    route, n_c = route_groups(scores, index)
    assert route.tolist() == [ROUTE_SOLVE_NONE] * 4 + [ROUTE_PLAIN] * 4 + [ROUTE_WEIGHTED] * 4 + [ROUTE_PLAIN] * 4
    assert n_c.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [4] * 4
    # interleaved uids and a threshold
    route, _ = route_groups(torch.tensor([0.6, 0.2, 0.7, 0.1]), ["x", "y", "x", "y"], success_threshold=0.5)
    assert route.tolist() == [ROUTE_PLAIN, ROUTE_SOLVE_NONE, ROUTE_PLAIN, ROUTE_SOLVE_NONE]


def test_reference_draw_is_seeded_and_uniform():
    index = [g for g in range(200) for _ in range(4)]
    route = torch.full((800,), ROUTE_SOLVE_NONE)
    first = draw_solve_none_references(route, index, torch.Generator().manual_seed(7))
    again = draw_solve_none_references(route, index, torch.Generator().manual_seed(7))
    assert torch.equal(first, again)
    assert first.reshape(200, 4).sum(-1).eq(1).all()
    counts = first.reshape(200, 4).float().sum(0)  # each slot picked ~50 times
    assert ((counts > 25) & (counts < 75)).all()
    plain = draw_solve_none_references(torch.full((8,), ROUTE_PLAIN), [0] * 4 + [1] * 4)
    assert not plain.any()


def test_solve_none_pseudo_advantage_matches_naive_loop():
    g = torch.Generator().manual_seed(3)
    B, T = 5, 6
    divergence = torch.rand(B, T, generator=g)
    lengths = [6, 3, 5, 2, 4]
    response_mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    index = ["g"] * 5
    route = torch.full((B,), ROUTE_SOLVE_NONE)
    reference = torch.tensor([False, False, True, False, False])
    adv, s = solve_none_pseudo_advantage(divergence, response_mask, index, route, reference, alpha=0.1)

    ref_len = lengths[2]
    others = [0, 1, 3, 4]
    window_values = [divergence[i, : min(lengths[i], ref_len)].tolist() for i in others]
    pooled = sorted(v for vals in window_values for v in vals)
    c = max(float(np.percentile(pooled, 75)), 1e-4)
    s_naive = [sum(d / (d + c) for d in vals) / len(vals) for vals in window_values]
    mean = sum(s_naive) / 4
    std = (sum((x - mean) ** 2 for x in s_naive) / 3) ** 0.5
    for j, i in enumerate(others):
        assert s[i].item() == pytest.approx(s_naive[j], rel=1e-5)
        assert adv[i].item() == pytest.approx(0.1 * (s_naive[j] - mean) / (std + 1e-6), rel=1e-4)
    assert adv[2].item() == 0.0


def _algorithm_config(**extra):
    return OmegaConf.create({"adv_estimator": "sc_grpo", "norm_adv_by_std_in_grpo": True, **extra})


@pytest.mark.parametrize("norm", [True, False])
def test_estimator_without_divergence_is_verl_grpo(norm):
    from verl import DataProto
    from verl.trainer.ppo.ray_trainer import compute_advantage

    g = torch.Generator().manual_seed(0)
    B, T = 12, 7
    rewards = torch.zeros(B, T)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T) < lengths.unsqueeze(-1)).float()
    rewards[torch.arange(B), lengths - 1] = torch.randint(0, 2, (B,), generator=g).float()
    uid = np.array([f"u{i // 4}" for i in range(B)], dtype=object)

    def run(estimator):
        data = DataProto.from_dict(
            tensors={"token_level_rewards": rewards.clone(), "response_mask": mask.clone()}, non_tensors={"uid": uid}
        )
        cfg = _algorithm_config(norm_adv_by_std_in_grpo=norm, adv_estimator=estimator)
        return compute_advantage(data, estimator, norm_adv_by_std_in_grpo=norm, config=cfg).batch["advantages"]

    assert torch.equal(run("sc_grpo"), run("grpo"))
