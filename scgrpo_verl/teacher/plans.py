"""Per-method teacher plans: which rollouts get a teacher, from which source, with which template and texts.

Every branch on the method name lives here, one function per method, all with the same arguments
``(batch, teacher_config, generator, routes, references)`` (:data:`PLANNERS`; ALGORITHMS.md, "Shared machinery"):

- SC-GRPO (:func:`plan_sc_grpo`): groups are routed by their number of verified rollouts n_c
  (:func:`scgrpo_verl.algos.sc_grpo.route_groups`). ``2 <= n_c < G``: every rollout is conditioned on
  a verified sibling other than itself. ``n_c = 0`` (solve-none): one reference rollout per group is
  drawn uniformly (:func:`~scgrpo_verl.algos.sc_grpo.draw_solve_none_references`, or given) and every
  OTHER rollout is conditioned on the reference's (unverified) response; the reference gets no teacher.
  ``n_c in {1, G}``: no teacher.
- SDPO (:func:`plan_sdpo`): a verified sibling other than the rollout itself and/or the rollout's own
  feedback (when ``use_feedback``; by default only without a sibling). Neither: no teacher. Groups
  where every rollout succeeded still get a teacher (each from another success).
- SDPG (:func:`plan_sdpg`): the rollout's privileged text (dataset hint / reference answer) when
  ``use_privileged_context``; none: no teacher.

Random draws follow the canonical order of :class:`~scgrpo_verl.teacher.rollouts.GroupedBatch`: solve-none
references first, then siblings. A plan names its template as a function ``(student prompt, piece texts,
templates) -> teacher messages``; the prompt builder (:mod:`scgrpo_verl.teacher.prompt`) renders and tokenises it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import torch

from scgrpo_verl.algos.sc_grpo import (
    ROUTE_SOLVE_NONE,
    ROUTE_WEIGHTED,
    draw_solve_none_references,
    route_groups,
)
from scgrpo_verl.teacher.rollouts import GroupedBatch, choose_sibling
from scgrpo_verl.teacher.templates import sc_grpo_teacher_messages, sdpg_teacher_messages, sdpo_teacher_messages

if TYPE_CHECKING:  # scgrpo_verl.config imports verl; this module must not
    from scgrpo_verl.config import TeacherConfig

SOURCES = ("solution", "feedback", "solution+feedback", "privileged", "reference")


@dataclass
class Plan:
    """One rollout's teacher: its source, the demonstration's row and the template with the texts it takes."""

    kind: str  # the source (one of SOURCES)
    sibling: int  # the demonstration's row, or -1
    # (student prompt, piece texts, TemplateConfig) -> teacher messages; a module-level function, also the key
    # under which the prompt builder caches the template's literal text
    template: Callable[[list, list, object], list]
    pieces: list  # the texts the template takes: int = the demonstration of that row, str = as is


@dataclass
class BatchPlan:
    """A method's plans for the batch (``None``: no teacher) and the SC-GRPO facts :class:`TeacherContexts` reports."""

    plans: list  # list[Plan | None], one per rollout
    route: Optional[torch.Tensor] = None  # (B,) long, SC-GRPO only
    reference: Optional[torch.Tensor] = None  # (B,) bool, SC-GRPO only
    num_correct: Optional[torch.Tensor] = None  # (B,) long, SC-GRPO only


# -- templates: (student prompt, piece texts, TemplateConfig) -> teacher messages -----------------------
def sc_grpo_solution_template(prompt, pieces, templates):
    return sc_grpo_teacher_messages(prompt, pieces[0], templates, solve_none=False)


def sc_grpo_reference_template(prompt, pieces, templates):
    return sc_grpo_teacher_messages(prompt, pieces[0], templates, solve_none=True)


def sdpo_solution_feedback_template(prompt, pieces, templates):
    return sdpo_teacher_messages(prompt, pieces[0], pieces[-1], templates)


def sdpo_solution_template(prompt, pieces, templates):
    return sdpo_teacher_messages(prompt, pieces[0], None, templates)


def sdpo_feedback_template(prompt, pieces, templates):
    return sdpo_teacher_messages(prompt, None, pieces[-1], templates)


def sdpg_template(prompt, pieces, templates):
    return sdpg_teacher_messages(prompt, pieces[0], templates)


# -- the methods ----------------------------------------------------------------------------------------
def plan_sc_grpo(
    batch: GroupedBatch,
    teacher_config: "TeacherConfig",
    generator: Optional[torch.Generator],
    routes: Optional[torch.Tensor],
    references: Optional[torch.Tensor],
) -> BatchPlan:
    """SC-GRPO: a verified sibling for weighted groups, the drawn reference's response for solve-none groups."""
    if not teacher_config.exclude_self:
        raise ValueError(
            "self_teacher.teacher.exclude_self: SC-GRPO never conditions a rollout on itself; must be true"
        )
    n, groups = len(batch), batch.groups
    route_computed, num_correct = route_groups(batch.scores, batch.uids, teacher_config.success_threshold)
    if routes is None:
        route = route_computed
    else:
        route = torch.as_tensor(routes).reshape(-1).long()
        if route.shape[0] != n:
            raise ValueError(f"routes has {route.shape[0]} entries for {n} rollouts")
    if references is None:
        reference = draw_solve_none_references(route, batch.uids, generator, batch.rollout_index)
    else:
        reference = _check_references(references, route, groups)
    route_list, reference_list = route.tolist(), reference.tolist()
    ref_row = {}
    for rows in groups.values():
        for row in rows:
            if reference_list[row]:
                ref_row[rows[0]] = row
    plans: list = [None] * n
    for row in batch.canonical_rows:
        kind = route_list[row]
        if kind == ROUTE_WEIGHTED:
            sibling = choose_sibling(batch.siblings(row), teacher_config.sibling_choice, generator)
            if sibling >= 0:
                plans[row] = Plan("solution", sibling, sc_grpo_solution_template, [sibling])
        elif kind == ROUTE_SOLVE_NONE:
            ref = ref_row[batch.group_of[row][0]]
            if ref != row:
                plans[row] = Plan("reference", ref, sc_grpo_reference_template, [ref])
    return BatchPlan(plans, route=route, reference=reference, num_correct=num_correct)


def plan_sdpo(
    batch: GroupedBatch,
    teacher_config: "TeacherConfig",
    generator: Optional[torch.Generator],
    routes: Optional[torch.Tensor],
    references: Optional[torch.Tensor],
) -> BatchPlan:
    """SDPO: a verified sibling and / or the rollout's own feedback."""
    _no_sc_grpo_inputs("sdpo", routes, references)
    plans: list = [None] * len(batch)
    for row in batch.canonical_rows:
        rollout = batch.rollouts[row]
        sibling = choose_sibling(batch.siblings(row), teacher_config.sibling_choice, generator)
        use_feedback = (
            teacher_config.use_feedback
            and rollout.feedback.strip() != ""
            and (sibling < 0 or not teacher_config.feedback_only_without_solution)
        )
        if sibling >= 0 and use_feedback:
            pieces = [sibling, rollout.feedback]
            plans[row] = Plan("solution+feedback", sibling, sdpo_solution_feedback_template, pieces)
        elif sibling >= 0:
            plans[row] = Plan("solution", sibling, sdpo_solution_template, [sibling])
        elif use_feedback:
            plans[row] = Plan("feedback", -1, sdpo_feedback_template, [rollout.feedback])
    return BatchPlan(plans)


def plan_sdpg(
    batch: GroupedBatch,
    teacher_config: "TeacherConfig",
    generator: Optional[torch.Generator],
    routes: Optional[torch.Tensor],
    references: Optional[torch.Tensor],
) -> BatchPlan:
    """SDPG: the rollout's privileged text (hint / reference answer), when ``use_privileged_context``."""
    _no_sc_grpo_inputs("sdpg", routes, references)
    plans: list = [None] * len(batch)
    for row, rollout in enumerate(batch.rollouts):
        hint = rollout.privileged
        if not teacher_config.use_privileged_context or hint is None or not hint.strip():
            continue
        plans[row] = Plan("privileged", -1, sdpg_template, [hint])
    return BatchPlan(plans)


PLANNERS = {"sc_grpo": plan_sc_grpo, "sdpo": plan_sdpo, "sdpg": plan_sdpg}
METHODS = tuple(PLANNERS)


def _no_sc_grpo_inputs(method: str, routes, references) -> None:
    if routes is not None or references is not None:
        raise ValueError(f"routes / references are SC-GRPO inputs; method is {method!r}")


def _check_references(references, route: torch.Tensor, groups: dict) -> torch.Tensor:
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
