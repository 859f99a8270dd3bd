"""SC-GRPO (arXiv 2606.18810): self-conditioned token weights and group routing (plain torch).

The per-token divergence D_{i,t} = KL(q_t || p_t) between the model conditioned on one of its own
verified solutions (q) and the plain model (p) marks pivotal tokens. It enters the GRPO clipped
surrogate as a detached multiplicative weight f(D) = D / (D + c), never as a loss.

Group routing by the number of correct rollouts n_c in a group of G (ALGORITHMS.md section 1):
- 2 <= n_c < G  -> ``ROUTE_WEIGHTED``: GRPO z-scored advantage, token terms weighted by f(D).
- n_c == 0      -> ``ROUTE_SOLVE_NONE``: a reference rollout o_r drawn uniformly; the others get the
                   pseudo-advantage alpha * (s_i - mean(s)) / (std(s) + eps).
- n_c in {1, G} -> ``ROUTE_PLAIN``: plain GRPO, no weighting.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Optional, Sequence

import torch

ROUTE_PLAIN = 0
ROUTE_WEIGHTED = 1
ROUTE_SOLVE_NONE = 2
ROUTE_NAMES = {ROUTE_PLAIN: "plain", ROUTE_WEIGHTED: "weighted", ROUTE_SOLVE_NONE: "solve_none"}


def group_positions(
    index: Sequence[Hashable], rollout_index: Optional[Sequence[Hashable]] = None, canonical: bool = False
) -> dict[Hashable, list[int]]:
    """Rollout positions of each group, in first-seen order of the group ids (uids).

    ``canonical=True`` (or a ``rollout_index``): groups sorted by uid and positions within a group by
    ``rollout_index`` (the rollout's index within its group; batch order when ``None``), so the result
    does not depend on how the batch was ordered (verl reorders it by rank count).
    """
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for position, uid in enumerate(index):
        groups[uid].append(position)
    if not canonical and rollout_index is None:
        return dict(groups)
    if rollout_index is not None:
        if len(rollout_index) != len(index):
            raise ValueError(f"rollout_index has {len(rollout_index)} entries for {len(index)} rollouts")
        for uid, positions in groups.items():
            keys = [rollout_index[p] for p in positions]
            if len(set(keys)) != len(keys):
                raise ValueError(f"rollout_index: group {uid!r} has duplicate rollout indices {sorted_keys(keys)}")
            order = sorted_keys(keys)
            rank = {key: i for i, key in enumerate(order)}
            positions.sort(key=lambda p: rank[rollout_index[p]])
    return {uid: groups[uid] for uid in sorted_keys(list(groups))}


def sorted_keys(keys: Sequence[Hashable]) -> list:
    """``keys`` in a total order that depends only on their values (natural order; ``repr`` order when
    the values do not compare, e.g. mixed types)."""
    try:
        return sorted(keys)
    except TypeError:
        return sorted(keys, key=lambda key: (type(key).__name__, repr(key)))


def sc_weight_constant(
    divergence: torch.Tensor, mask: torch.Tensor, c_min: float = 1e-4, quantile: float = 0.75
) -> torch.Tensor:
    """SC-GRPO's c = max(P75 of D over active tokens, c_min) (ALGORITHMS.md section 1, weight f(D)).

    Args:
        divergence: (B, T) D_{i,t}.
        mask: (B, T) active tokens (the micro-batch tokens routed to weighting).

    Returns:
        () fp32 scalar c; c_min when no token is active.
    """
    active = divergence.detach().float()[mask.bool()]
    if active.numel() == 0:
        return torch.tensor(float(c_min), device=divergence.device)
    return torch.quantile(active, quantile).clamp_min(c_min)


def sc_weight(
    divergence: torch.Tensor,
    mask: torch.Tensor,
    c_min: float = 1e-4,
    quantile: float = 0.75,
    renormalize: bool = False,
    threshold: Optional[float] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SC-GRPO token weight f(D) = D / (D + c) in [0, 1), detached (ALGORITHMS.md section 1).

    Args:
        divergence: (B, T) per-token D = KL(q || p) >= 0.
        mask: (B, T) active tokens; c is their ``quantile`` (P75), and masked tokens get weight 0.
        renormalize: rescale the active weights to mean 1 (off by default: it changes the effective
            learning rate compared with GRPO / DAPO).
        threshold: a given c (e.g. one c for the whole batch, ``threshold_scope: batch``); None computes
            it from ``mask`` as above.

    Returns:
        weights (B, T) fp32 and the constant c (scalar).
    """
    if divergence.shape != mask.shape:
        raise ValueError(f"divergence {tuple(divergence.shape)} and mask {tuple(mask.shape)} differ")
    d = divergence.detach().float().clamp_min(0.0)
    if threshold is None:
        c = sc_weight_constant(d, mask, c_min, quantile)
    else:
        c = torch.tensor(max(float(threshold), c_min), device=d.device)
    weights = d / (d + c) * mask.float()
    if renormalize:
        active = mask.bool()
        if active.any():
            weights = weights / weights[active].mean().clamp_min(torch.finfo(torch.float32).tiny)
    return weights, c


def route_groups(
    scores: torch.Tensor, index: Sequence[Hashable], success_threshold: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Route every rollout by its group's number of correct rollouts n_c (ALGORITHMS.md section 1).

    Args:
        scores: (B,) scalar rewards R_i; a rollout is correct when R_i >= success_threshold.
        index: (B,) group ids (verl's ``uid``).

    Returns:
        route (B,) int64 (ROUTE_PLAIN / ROUTE_WEIGHTED / ROUTE_SOLVE_NONE) and n_c (B,) per rollout.
    """
    if len(index) != scores.shape[0]:
        raise ValueError(f"{len(index)} group ids for {scores.shape[0]} rollouts")
    correct = scores.detach() >= success_threshold
    route = torch.full((len(index),), ROUTE_PLAIN, dtype=torch.long)
    num_correct = torch.zeros(len(index), dtype=torch.long)
    for positions in group_positions(index).values():
        rows = torch.tensor(positions)
        n_c = int(correct[rows].sum())
        num_correct[rows] = n_c
        if n_c == 0 and len(positions) > 1:
            route[rows] = ROUTE_SOLVE_NONE
        elif 2 <= n_c < len(positions):
            route[rows] = ROUTE_WEIGHTED
    return route, num_correct


def draw_solve_none_references(
    route: torch.Tensor,
    index: Sequence[Hashable],
    generator: Optional[torch.Generator] = None,
    rollout_index: Optional[Sequence[Hashable]] = None,
) -> torch.Tensor:
    """Draw one reference rollout o_r uniformly in each solve-none group, (B,) bool.

    Canonical order: groups sorted by uid, rollouts within a group by ``rollout_index`` (batch order
    when ``None``), so a seeded ``generator`` draws the same (uid, rollout index) whatever the batch order.
    """
    reference = torch.zeros(len(index), dtype=torch.bool)
    for positions in group_positions(index, rollout_index, canonical=True).values():
        if int(route[positions[0]]) != ROUTE_SOLVE_NONE:
            continue
        pick = int(torch.randint(len(positions), (1,), generator=generator))
        reference[positions[pick]] = True
    return reference


def solve_none_pseudo_advantage(
    divergence: torch.Tensor,
    response_mask: torch.Tensor,
    index: Sequence[Hashable],
    route: torch.Tensor,
    reference: torch.Tensor,
    alpha: float = 0.1,
    epsilon: float = 1e-6,
    c_min: float = 1e-4,
    quantile: float = 0.75,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-advantages of solve-none groups (n_c = 0), ALGORITHMS.md section 1.

    For every rollout o_i != o_r of a solve-none group, s_i = mean over t <= min(|o_i|, |o_r|) of
    f(D_{i,t}), with D measured against the teacher conditioned on the reference o_r, and
    A_i = alpha * (s_i - mean(s)) / (std(s) + epsilon) (std as ``torch.std``, unbiased, like verl's GRPO).
    c of f is computed per group over exactly the tokens that enter s. The reference rollout and
    groups with fewer than two scored rollouts get advantage 0.

    Args:
        divergence: (B, T) D_{i,t} against the reference-conditioned teacher.
        response_mask: (B, T) response tokens.
        route: (B,) from :func:`route_groups`; reference: (B,) bool, one True per solve-none group.

    Returns:
        advantages (B,) fp32 (0 outside solve-none groups) and s (B,) (nan where not scored).
    """
    lengths = response_mask.sum(-1).long()
    advantages = torch.zeros(len(index), dtype=torch.float32)
    scores = torch.full((len(index),), float("nan"))
    positions_t = torch.arange(divergence.shape[-1])
    for positions in group_positions(index).values():
        if int(route[positions[0]]) != ROUTE_SOLVE_NONE:
            continue
        refs = [p for p in positions if bool(reference[p])]
        if len(refs) != 1:
            raise ValueError(f"solve-none group at rows {positions} needs exactly one reference, got {len(refs)}")
        others = [p for p in positions if p != refs[0]]
        window = torch.stack([(positions_t < min(lengths[p], lengths[refs[0]])) for p in others])
        window = window & response_mask[others].bool()
        weights, _ = sc_weight(divergence[others], window, c_min=c_min, quantile=quantile)
        s = weights.sum(-1) / window.sum(-1).clamp_min(1)
        scores[others] = s
        if len(others) < 2:
            continue
        advantages[others] = alpha * (s - s.mean()) / (s.std() + epsilon)
    return advantages, scores
