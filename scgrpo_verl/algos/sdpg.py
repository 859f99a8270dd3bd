"""SDPG (arXiv 2606.04036): advantage-gated self-distillation and reference-KL terms (plain torch).

Loss = L_out + beta(k) * L_OPD+ + alpha * L_K(pi_theta, pi_ref) (ALGORITHMS.md section 3). L_out is
verl's dual-clip surrogate; this module holds beta(k), the gated L_OPD token term and L_K.
"""

from __future__ import annotations

import torch


def sdpg_beta(
    step: int, beta_base: float = 1e-3, warmup_steps: int = 50, decay_steps: int = 350, total_steps: int = 400
) -> float:
    """SDPG schedule beta(k) = beta_base * min(1, k / T_warm) * min(1, (T - k) / T_decay), floored at 0.

    ``warmup_steps == 0`` means no warm-up and ``decay_steps == 0`` no decay (factor 1).
    """
    warm = 1.0 if warmup_steps == 0 else min(1.0, step / warmup_steps)
    decay = 1.0 if decay_steps == 0 else min(1.0, (total_steps - step) / decay_steps)
    return beta_base * max(0.0, warm) * max(0.0, decay)


def gated_opd_token_loss(
    reverse_kl: torch.Tensor, advantages: torch.Tensor, max_value: float = 20.0
) -> torch.Tensor:
    """SDPG's L_OPD+ token term: min(KL(p_t || q_t), max_value) on rollouts with A_i > 0, else 0.

    Args:
        reverse_kl: (B, T) exact full-vocabulary KL(p_t || q_t) (student-to-teacher).
        advantages: (B, T) or (B,) group-relative advantages; the gate is A > 0.
    """
    return reverse_kl.float().clamp(max=max_value) * opd_gate(advantages).float()


def opd_gate(advantages: torch.Tensor) -> torch.Tensor:
    """SDPG's gate of L_OPD+: the tokens of rollouts with A_i > 0, (B, T) or (B, 1) bool from (B, T) or (B,)."""
    gate = advantages > 0
    return gate.unsqueeze(-1) if gate.dim() == 1 else gate


def urkl(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    """SDPG's URKL reference term on the sampled token: 0.5 * log^2(pi_theta / pi_ref), (B, T)."""
    return 0.5 * (log_prob.float() - ref_log_prob.float()).square()


def ufkl(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    """SDPG's UFKL reference term on the sampled token: pi_ref / pi_theta + log(pi_theta / pi_ref), (B, T)."""
    log_ratio = log_prob.float() - ref_log_prob.float()
    return torch.exp(-log_ratio) + log_ratio


REFERENCE_KL_TERMS = {"urkl": urkl, "ufkl": ufkl}
