"""Teacher plans: which rollouts get a teacher, from which source, with which template and texts.

A plan is what a method decides per rollout (its ``plan_contexts`` hook, :mod:`scgrpo_verl.methods`); this module
holds the plan's data types and the pieces methods share: :func:`privileged_plans` (a teacher from the row's
privileged text: SDPG's hint, OPSD's reference solution), :func:`check_references` (SC-GRPO's given solve-none
references) and :func:`refuse_routes`. Random draws follow the canonical order of
:class:`~scgrpo_verl.teacher.rollouts.GroupedBatch`. A plan names its template as a function ``(student prompt,
piece texts, templates) -> teacher messages``; the prompt builder (:mod:`scgrpo_verl.teacher.prompt`) renders and
tokenises it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from scgrpo_verl.algos.sc_grpo import ROUTE_SOLVE_NONE
from scgrpo_verl.teacher.rollouts import GroupedBatch

SOURCES = ("solution", "feedback", "solution+feedback", "privileged", "reference")


@dataclass
class Plan:
    """One rollout's teacher: its source, the demonstration's row and the template with the texts it takes."""

    kind: str  # the source (one of SOURCES)
    sibling: int  # the demonstration's row, or -1
    # (student prompt, piece texts, TemplateConfig) -> teacher messages; one function object per template (a
    # module-level function, or one made once per batch), also the key under which the prompt builder caches the
    # template's literal text
    template: Callable[[list, list, object], list]
    pieces: list  # the texts the template takes: int = the demonstration of that row, str = as is


@dataclass
class BatchPlan:
    """A method's plans for the batch (``None``: no teacher) and the SC-GRPO facts :class:`TeacherContexts` reports."""

    plans: list  # list[Plan | None], one per rollout
    route: Optional[torch.Tensor] = None  # (B,) long, SC-GRPO only
    reference: Optional[torch.Tensor] = None  # (B,) bool, SC-GRPO only
    num_correct: Optional[torch.Tensor] = None  # (B,) long, SC-GRPO only


def privileged_plans(batch: GroupedBatch, kind: str, template: Callable[[list, list, object], list]) -> BatchPlan:
    """Every rollout whose ``privileged`` text is not empty gets a teacher from it (SDPG's hint, OPSD's reference
    solution); the others get none."""
    plans: list = [None] * len(batch)
    for row, rollout in enumerate(batch.rollouts):
        text = rollout.privileged
        if text is not None and text.strip():
            plans[row] = Plan(kind, -1, template, [text])
    return BatchPlan(plans)


def refuse_routes(method: str, routes, references) -> None:
    """Only SC-GRPO's plan takes precomputed routes / references."""
    if routes is not None or references is not None:
        raise ValueError(f"routes / references are SC-GRPO inputs; method is {method!r}")


def check_references(references, route: torch.Tensor, groups: dict) -> torch.Tensor:
    """Given solve-none references (B,) bool: exactly one per solve-none group, none elsewhere."""
    references = torch.as_tensor(references).reshape(-1).bool()
    n = sum(map(len, groups.values()))
    if references.shape[0] != n:
        raise ValueError(f"references has {references.shape[0]} entries for {n} rollouts")
    for uid, rows in groups.items():
        count = int(references[rows].sum())
        expected = 1 if int(route[rows[0]]) == ROUTE_SOLVE_NONE else 0
        if count != expected:
            kind = "solve-none group" if expected else "group that is not solve-none"
            raise ValueError(f"references: {kind} {uid!r} must have {expected} reference(s), got {count}")
    return references
