"""SDPG's beta schedule, advantage-gated L_OPD+ token term and reference-KL terms (scgrpo_verl.algos.sdpg) against
hand-computed tables and plain python loops (ALGORITHMS.md section 3)."""

import math

import pytest
import torch

from scgrpo_verl.algos.sdpg import REFERENCE_KL_TERMS, gated_opd_token_loss, opd_gate, sdpg_beta, ufkl, urkl


@pytest.mark.parametrize("warmup, decay, total, table", [
    # beta_base 1: a linear ramp up over `warmup` steps, flat, a linear ramp down over the last `decay` steps, 0 after
    (4, 3, 10, {0: 0.0, 1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0, 6: 1.0, 7: 1.0, 8: 2 / 3, 9: 1 / 3, 10: 0.0, 12: 0.0}),
    # the ramps overlap: the two factors multiply (k = 1: 1/4 * 7/8, k = 2: 2/4 * 6/8)
    (4, 8, 8, {0: 0.0, 1: 0.21875, 2: 0.375, 4: 0.5, 6: 0.25, 8: 0.0}),
    # no warm-up / no decay: that factor is 1
    (0, 3, 10, {0: 1.0, 7: 1.0, 8: 2 / 3, 10: 0.0, 11: 0.0}),
    (4, 0, 10, {0: 0.0, 2: 0.5, 4: 1.0, 10: 1.0, 50: 1.0}),
])
def test_beta_schedule_hand_computed(warmup, decay, total, table):
    for step, expected in table.items():
        assert sdpg_beta(step, 1.0, warmup, decay, total) == pytest.approx(expected, abs=1e-12), step
        assert sdpg_beta(step, 1e-3, warmup, decay, total) == pytest.approx(1e-3 * expected, abs=1e-15), step


def test_beta_schedule_paper_values():
    """beta_base 1e-3, T_warm 50, T_decay 350, T 400: the warm-up ends at k = 50 exactly where the decay starts."""
    assert sdpg_beta(25) == pytest.approx(0.5e-3)
    assert sdpg_beta(50) == pytest.approx(1e-3)
    assert sdpg_beta(225) == pytest.approx(0.5e-3)  # (400 - 225) / 350
    assert sdpg_beta(400) == 0.0 and sdpg_beta(401) == 0.0


def test_gated_opd_token_loss_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    kl = torch.rand(3, 5, generator=g) * 30  # some above the clamp at 20
    per_rollout = torch.tensor([0.7, 0.0, -1.2])  # A = 0 is not gated in
    per_token = torch.tensor([[0.5] * 5, [0.1, -0.1, 0.0, 2.0, -3.0], [-1.0] * 5])
    for advantages in (per_rollout, per_token):
        loss = gated_opd_token_loss(kl, advantages)
        for b in range(3):
            for t in range(5):
                a = advantages[b].item() if advantages.dim() == 1 else advantages[b, t].item()
                expected = min(kl[b, t].item(), 20.0) if a > 0 else 0.0
                assert loss[b, t].item() == pytest.approx(expected, rel=1e-6)
    assert gated_opd_token_loss(kl, per_rollout, max_value=5.0).max().item() == pytest.approx(5.0)


def test_opd_gate_shapes():
    assert opd_gate(torch.tensor([1.0, 0.0, -2.0])).tolist() == [[True], [False], [False]]  # (B,) -> (B, 1)
    assert opd_gate(torch.tensor([[1.0, -1.0], [0.0, 3.0]])).tolist() == [[True, False], [False, True]]


def test_reference_kl_terms_match_their_definitions_on_probabilities():
    """URKL 0.5 * log^2(pi / pi_ref) and UFKL pi_ref / pi + log(pi / pi_ref), written with the probabilities."""
    log_prob = torch.tensor([[-0.1, -2.0, -5.0], [-0.7, -0.7, -12.0]])
    ref_log_prob = torch.tensor([[-0.3, -1.0, -5.0], [-4.0, -0.7, -0.2]])
    rk, fk = urkl(log_prob, ref_log_prob), ufkl(log_prob, ref_log_prob)
    for b in range(2):
        for t in range(3):
            pi, ref = math.exp(log_prob[b, t].item()), math.exp(ref_log_prob[b, t].item())
            assert rk[b, t].item() == pytest.approx(0.5 * math.log(pi / ref) ** 2, rel=1e-5, abs=1e-12)
            assert fk[b, t].item() == pytest.approx(ref / pi + math.log(pi / ref), rel=1e-5)
    # both vanish (URKL) / reach their minimum 1 (UFKL) where the policy equals the reference
    assert rk[0, 2].item() == 0.0 and fk[0, 2].item() == 1.0 and bool((fk >= 1.0).all())


def test_reference_kl_names_are_the_config_choices():
    from scgrpo_verl.settings import REFERENCE_KL_TYPES

    assert REFERENCE_KL_TERMS == {"urkl": urkl, "ufkl": ufkl} and set(REFERENCE_KL_TERMS) == set(REFERENCE_KL_TYPES)
