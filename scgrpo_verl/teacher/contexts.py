"""Self-teacher contexts: one teacher prompt per rollout, built from its group (plain python + a tokenizer).

The self-teacher scores the student's response ids VERBATIM after a different prompt; :func:`build_teacher_contexts`
decides, per rollout, what that prompt contains and tokenises it (ALGORITHMS.md, "Shared machinery"):

- :mod:`scgrpo_verl.teacher.rollouts`: the batch, its groups and verified siblings (method-independent);
- the method's ``plan_contexts`` (:mod:`scgrpo_verl.methods`, with :mod:`scgrpo_verl.teacher.plans`): which
  rollouts get a teacher, from which source and template;
- :mod:`scgrpo_verl.teacher.prompt`: renders and tokenises the planned prompts, each distinct text once;
- :mod:`scgrpo_verl.teacher.splice`: reuses a demonstration's response ids, re-tokenising only its junctions;
- :mod:`scgrpo_verl.teacher.fit`: shortens a prompt over ``max_reprompt_len`` (or gives no teacher: "too long").

``<think>...</think>`` blocks are stripped from demonstrations when ``remove_thinking``.
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from scgrpo_verl.algos.sc_grpo import group_positions
from scgrpo_verl.settings import SelfTeacherConfig, TeacherConfig, TemplateConfig
from scgrpo_verl.teacher.prompt import PromptBuilder
from scgrpo_verl.teacher.rollouts import GroupedBatch, Rollout


@dataclass
class TeacherContexts:
    """Per-rollout teacher prompts; entries are ``None`` / ``-1`` where the rollout has no teacher."""

    teacher_prompt_ids: list  # list[list[int] | None]; rows with the same teacher prompt share one list (read-only)
    teacher_input_ids: Sequence  # list[int] | None per rollout: teacher prompt ids + the SAME response ids (lazily)
    teacher_messages: Sequence  # list[dict] | None per rollout: the chat messages the prompt ids render (built lazily)
    mask: torch.Tensor  # (B,) float, 1 where the rollout has a teacher
    source: list  # list[str | None]: solution / feedback / solution+feedback / privileged / reference
    sibling_index: list  # list[int]: batch index of the rollout whose response is the demonstration, or -1
    shortened: list  # list[bool]: demonstration / feedback / hint text cut to fit max_reprompt_len
    too_long: list  # list[bool]: no teacher because even the shortest prompt exceeds max_reprompt_len
    verified: torch.Tensor  # (B,) bool, score >= success_threshold
    uids: list
    method: str
    route: Optional[torch.Tensor] = None  # (B,) long, SC-GRPO only (ROUTE_* of scgrpo_verl.algos.sc_grpo)
    reference: Optional[torch.Tensor] = None  # (B,) bool, SC-GRPO only: the solve-none reference rollouts
    num_correct: Optional[torch.Tensor] = None  # (B,) long, SC-GRPO only: n_c of the rollout's group
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.teacher_prompt_ids)

    def metrics(self) -> dict[str, float]:
        """Batch statistics. Fractions are over the batch's rollouts, except the first (over uid groups)."""
        n = len(self)
        groups = group_positions(self.uids)
        with_success = sum(1 for rows in groups.values() if any(bool(self.verified[r]) for r in rows))
        lengths = [len(ids) for ids in self.teacher_prompt_ids if ids is not None]
        return {
            "self_teacher/frac_groups_with_success": with_success / len(groups),
            "self_teacher/frac_rollouts_with_teacher": float(self.mask.sum()) / n,
            "self_teacher/frac_feedback_used": sum(1 for s in self.source if s and "feedback" in s) / n,
            "self_teacher/frac_contexts_shortened": sum(map(bool, self.shortened)) / n,
            "self_teacher/num_too_long": float(sum(map(bool, self.too_long))),
            "self_teacher/mean_teacher_prompt_len": float(sum(lengths)) / len(lengths) if lengths else 0.0,
        }



def _settings(settings):
    """The whole ``self_teacher`` section from a :class:`~scgrpo_verl.settings.SelfTeacherConfig` or from its
    :class:`~scgrpo_verl.settings.TeacherConfig` alone (the other blocks at their defaults)."""
    if isinstance(settings, SelfTeacherConfig):
        return settings
    if isinstance(settings, TeacherConfig):
        return SelfTeacherConfig(teacher=settings)
    raise ValueError(f"settings must be a scgrpo_verl.settings.SelfTeacherConfig or TeacherConfig, got "
                     f"{type(settings).__name__}")


class _LazyRows(SequenceABC):
    """A per-rollout sequence whose entries are made on first access (teacher messages, teacher input ids:
    the trainer reads neither; it stages the prompt ids next to the response tensor it already has)."""

    def __init__(self, n: int, make: Callable[[int], Optional[list]], known: dict):
        self._n, self._make, self._cache = n, make, dict(known)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, row):
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(self._n))]
        if row < 0:
            row += self._n
        if not 0 <= row < self._n:
            raise IndexError(row)
        if row not in self._cache:
            self._cache[row] = self._make(row)
        return self._cache[row]

    def __eq__(self, other):
        return isinstance(other, SequenceABC) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"_LazyRows({list(self)!r})"


def build_teacher_contexts(
    rollouts: Sequence[Rollout],
    tokenizer,
    method,
    settings,
    templates: Any = None,
    generator: Optional[torch.Generator] = None,
    routes: Optional[torch.Tensor] = None,
    references: Optional[torch.Tensor] = None,
    exact: bool = False,
    chat_template_kwargs: Optional[dict] = None,
) -> TeacherContexts:
    """Teacher prompt (and teacher input = prompt + the same response ids) for every rollout.

    Args:
        rollouts: the batch, groups identified by ``uid`` (members need not be contiguous). Give every
            rollout its ``index`` within its group so that the draws do not depend on the batch order.
        tokenizer: a HF tokenizer with a chat template.
        method: the registered method (``scgrpo_verl.methods.get_method(loss_mode)``): its ``plan_contexts``
            decides which rollouts get a teacher and from what.
        settings: :class:`scgrpo_verl.settings.SelfTeacherConfig` (or its ``TeacherConfig`` alone).
        templates: :class:`TemplateConfig`, a mapping of its options, or ``None`` (``settings.teacher.templates``).
        generator: seeds the uniform draws (siblings, solve-none references); ``None`` uses torch's
            global generator.
        routes: SC-GRPO only, (B,) precomputed :func:`route_groups` routes (recomputed when ``None``).
        references: SC-GRPO only, (B,) bool, one True per solve-none group (drawn when ``None``).
        exact: re-tokenise every demonstration from its text (as the chat template would), instead of
            reusing the sibling's response ids in the middle of the demonstration. The two differ only
            where a response's ids are not the tokenizer's own encoding of their text (module docstring).
        chat_template_kwargs: extra ``apply_chat_template`` arguments, verl's ``data.apply_chat_template_kwargs``
            (e.g. ``{"enable_thinking": False}``): the teacher prompt is rendered as the student's was.

    Returns:
        :class:`TeacherContexts`.
    """
    if not callable(getattr(method, "plan_contexts", None)):
        raise ValueError(f"method must be a registered self-teacher method (scgrpo_verl.methods.get_method), got "
                         f"{method!r}")
    rollouts = list(rollouts)
    if not rollouts:
        raise ValueError("build_teacher_contexts: empty batch")
    for i, rollout in enumerate(rollouts):
        if not isinstance(rollout, Rollout):
            raise ValueError(f"rollout {i} must be a Rollout, got {type(rollout).__name__}")
    settings = _settings(settings)
    teacher_config = settings.teacher
    templates = TemplateConfig.from_mapping(teacher_config.templates if templates is None else templates)
    batch = GroupedBatch(rollouts, teacher_config.success_threshold, teacher_config.exclude_self)
    planned = method.plan_contexts(batch, settings, generator, routes, references)
    n, plans = len(batch), planned.plans

    builder = PromptBuilder(rollouts, tokenizer, templates, teacher_config, exact, chat_template_kwargs)
    prompt_ids, messages, shortened, too_long = builder.build(plans)
    source: list = [None] * n
    sibling_index = [-1] * n
    for row, plan in enumerate(plans):
        if plan is None or prompt_ids[row] is None:
            continue
        source[row] = plan.kind
        sibling_index[row] = plan.sibling
    mask = torch.tensor([1.0 if ids is not None else 0.0 for ids in prompt_ids])
    input_ids = _LazyRows(
        n, lambda row: prompt_ids[row] + rollouts[row].response_ids if prompt_ids[row] is not None else None, {}
    )
    lazy_messages = _LazyRows(
        n, lambda row: builder.messages(row, plans[row]) if prompt_ids[row] is not None else None, messages
    )
    return TeacherContexts(
        teacher_prompt_ids=prompt_ids,
        teacher_input_ids=input_ids,
        teacher_messages=lazy_messages,
        mask=mask,
        source=source,
        sibling_index=sibling_index,
        shortened=shortened,
        too_long=too_long,
        verified=batch.verified,
        uids=batch.uids,
        method=method.name,
        route=planned.route,
        reference=planned.reference,
        num_correct=planned.num_correct,
        extra={"fast_demonstrations": builder.fast_count, "retokenized_demonstrations": builder.slow_count},
    )
