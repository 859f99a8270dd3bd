"""Self-teacher contexts: one teacher prompt per rollout, built from its group (plain python + a tokenizer).

The self-teacher scores the student's response ids VERBATIM after a different prompt; this module
decides, per rollout, what that prompt contains and tokenises it (ALGORITHMS.md, "Shared machinery"):

- SC-GRPO (``method="sc_grpo"``): groups are routed by their number of verified rollouts n_c
  (:func:`scgrpo_verl.algos.sc_grpo.route_groups`). ``2 <= n_c < G``: every rollout is conditioned on
  a verified sibling other than itself. ``n_c = 0`` (solve-none): one reference rollout per group is
  drawn uniformly (:func:`~scgrpo_verl.algos.sc_grpo.draw_solve_none_references`, or given) and every
  OTHER rollout is conditioned on the reference's (unverified) response; the reference gets no teacher.
  ``n_c in {1, G}``: no teacher.
- SDPO (``method="sdpo"``): a verified sibling other than the rollout itself and/or the rollout's own
  feedback (when ``use_feedback``; by default only without a sibling). Neither: no teacher. Groups
  where every rollout succeeded still get a teacher (each from another success).
- SDPG (``method="sdpg"``): the rollout's privileged text (dataset hint / reference answer) when
  ``use_privileged_context``; none: no teacher.

A verified rollout has ``score >= success_threshold``. Siblings are drawn uniformly with the given
``torch.Generator`` (``sibling_choice="uniform"``) or taken as the first verified one in group order
(``"first"``). Random draws happen in a fixed order: solve-none references (groups in first-seen
order), then siblings (rollouts in batch order), so a seeded generator reproduces a batch exactly.
``<think>...</think>`` blocks are stripped from demonstrations when ``remove_thinking``.

Length: a teacher prompt longer than ``max_reprompt_len`` tokens has its demonstration / feedback /
hint text shortened at the token level (beginning kept, the template's ``truncation_marker``
appended), never the question, the instruction or the chat template's generation header. If it
does not fit even with those texts reduced to the marker, the rollout gets no teacher ("too long").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable, Optional, Sequence

import torch

from scgrpo_verl.algos.sc_grpo import (
    ROUTE_SOLVE_NONE,
    ROUTE_WEIGHTED,
    draw_solve_none_references,
    group_positions,
    route_groups,
)
from scgrpo_verl.teacher.templates import (
    TemplateConfig,
    normalize_messages,
    sc_grpo_teacher_messages,
    sdpg_teacher_messages,
    sdpo_teacher_messages,
)

if TYPE_CHECKING:  # scgrpo_verl.config imports verl; this module must not
    from scgrpo_verl.config import TeacherConfig

METHODS = ("sc_grpo", "sdpo", "sdpg")
SOURCES = ("solution", "feedback", "solution+feedback", "privileged", "reference")
_TEACHER_FIELDS = (
    "success_threshold",
    "sibling_choice",
    "exclude_self",
    "remove_thinking",
    "use_feedback",
    "feedback_only_without_solution",
    "use_privileged_context",
    "max_reprompt_len",
)


@dataclass
class Rollout:
    """One rollout as the teacher-context builder sees it."""

    uid: Hashable  # group id (verl's ``uid``)
    prompt: list  # the student's chat messages, [{"role", "content"}, ...]
    response_ids: list  # response token ids, reused verbatim after the teacher prompt
    response_text: str  # the decoded response (the demonstration text when a sibling uses it)
    score: float  # scalar reward
    feedback: str = ""  # environment feedback for this rollout ("" when none)
    privileged: Optional[str] = None  # dataset hint / reference answer (SDPG)

    def __post_init__(self):
        self.prompt = normalize_messages(self.prompt)
        if torch.is_tensor(self.response_ids):
            self.response_ids = self.response_ids.tolist()
        self.response_ids = [int(i) for i in self.response_ids]
        if not self.response_ids:
            raise ValueError(f"rollout of group {self.uid!r} has an empty response")
        if not isinstance(self.response_text, str):
            raise ValueError(f"response_text must be a string, got {type(self.response_text).__name__}")
        self.score = float(self.score)
        self.feedback = "" if self.feedback is None else str(self.feedback)
        if self.privileged is not None:
            self.privileged = str(self.privileged)


@dataclass
class TeacherContexts:
    """Per-rollout teacher prompts; entries are ``None`` / ``-1`` where the rollout has no teacher."""

    teacher_prompt_ids: list  # list[list[int] | None]
    teacher_input_ids: list  # list[list[int] | None]: teacher prompt ids + the SAME response ids
    teacher_messages: list  # list[list[dict] | None]: the chat messages the prompt ids render
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


# -- text helpers --------------------------------------------------------------------------------------
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)


def strip_thinking(text: str) -> str:
    """Remove ``<think>...</think>`` blocks, an unopened leading block (text up to a ``</think>`` without
    its ``<think>``, as when the chat template opens the block) and an unclosed trailing ``<think>...``."""
    text = _THINK_BLOCK.sub("", text)
    close = text.rfind("</think>")
    if close >= 0:
        text = text[close + len("</think>") :]
    start = text.find("<think>")
    if start >= 0:
        text = text[:start]
    return text.strip()


def chat_template_ids(tokenizer, messages: Sequence[dict]) -> list[int]:
    """``apply_chat_template(..., add_generation_prompt=True, tokenize=True)`` as a flat list of ids
    (transformers 5 returns a ``BatchEncoding``; older versions a list)."""
    out = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    if torch.is_tensor(out):
        out = out.tolist()
    out = list(out)
    if out and isinstance(out[0], (list, tuple)) or (out and torch.is_tensor(out[0])):
        if len(out) != 1:
            raise ValueError(f"apply_chat_template returned {len(out)} sequences for one conversation")
        out = list(out[0])
    return [int(i) for i in out]


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _decode_prefix(tokenizer, ids: Sequence[int]) -> str:
    text = tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return text.rstrip("\ufffd")  # a cut inside a multi-byte character


def _water_fill(lengths: Sequence[int], budget: int) -> list[int]:
    """Token counts k_i <= lengths_i with sum <= budget, as equal as possible (short pieces kept whole)."""
    keep = [0] * len(lengths)
    remaining, left = max(budget, 0), len(lengths)
    for i in sorted(range(len(lengths)), key=lambda j: lengths[j]):
        keep[i] = min(lengths[i], remaining // left)
        remaining -= keep[i]
        left -= 1
    return keep


@dataclass
class _Fitted:
    prompt_ids: Optional[list]
    messages: Optional[list]
    shortened: bool
    too_long: bool


def fit_teacher_prompt(
    build: Callable[[list], list],
    pieces: Sequence[str],
    tokenizer,
    max_len: int,
    marker: str,
) -> _Fitted:
    """Render ``build(pieces)`` within ``max_len`` tokens, shortening only the ``pieces`` (demonstration,
    feedback, hint): each keeps its first tokens, followed by ``marker``. Everything else ``build`` adds
    (question, instruction, template, generation header) is never cut."""
    messages = build(list(pieces))
    ids = chat_template_ids(tokenizer, messages)
    if len(ids) <= max_len:
        return _Fitted(ids, messages, False, False)
    piece_ids = [_encode(tokenizer, p) for p in pieces]
    lengths = [len(p) for p in piece_ids]
    marker_len = len(_encode(tokenizer, marker)) if marker else 0
    # the shortest form of each piece: the marker alone, or the piece itself when that is no longer
    shortest = [text if n <= marker_len else marker for text, n in zip(pieces, lengths)]
    shortest_messages = build(shortest)
    shortest_ids = chat_template_ids(tokenizer, shortest_messages)
    if len(shortest_ids) > max_len:
        return _Fitted(None, None, False, True)
    budget = sum(lengths) - (len(ids) - max_len) - marker_len * sum(1 for n in lengths if n)
    while budget > 0:
        keep = _water_fill(lengths, budget)
        texts = [
            text if k >= len(p) else _decode_prefix(tokenizer, p[:k]) + marker
            for text, p, k in zip(pieces, piece_ids, keep)
        ]
        messages = build(texts)
        ids = chat_template_ids(tokenizer, messages)
        if len(ids) <= max_len:
            return _Fitted(ids, messages, True, False)
        budget -= len(ids) - max_len  # re-tokenisation at the cut can differ by a few tokens
    return _Fitted(shortest_ids, shortest_messages, True, False)


# -- the builder ---------------------------------------------------------------------------------------
def _check_teacher_config(teacher_config) -> None:
    if teacher_config is None:
        raise ValueError("teacher_config is required (scgrpo_verl.config.TeacherConfig)")
    missing = [name for name in _TEACHER_FIELDS if not hasattr(teacher_config, name)]
    if missing:
        raise ValueError(f"teacher_config lacks {missing}; pass a scgrpo_verl.config.TeacherConfig")
    if teacher_config.sibling_choice not in ("uniform", "first"):
        raise ValueError(
            f"self_teacher.teacher.sibling_choice: must be 'uniform' or 'first', got {teacher_config.sibling_choice!r}"
        )
    if int(teacher_config.max_reprompt_len) <= 0:
        raise ValueError(f"self_teacher.teacher.max_reprompt_len: must be > 0, got {teacher_config.max_reprompt_len}")


def _choose_sibling(
    candidates: Sequence[int], choice: str, generator: Optional[torch.Generator]
) -> int:
    if not candidates:
        return -1
    if choice == "first":
        return candidates[0]
    return candidates[int(torch.randint(len(candidates), (1,), generator=generator))]


def _check_references(references, route: torch.Tensor, uids: Sequence[Hashable]) -> torch.Tensor:
    references = torch.as_tensor(references).reshape(-1).bool()
    if references.shape[0] != len(uids):
        raise ValueError(f"references has {references.shape[0]} entries for {len(uids)} rollouts")
    for uid, rows in group_positions(uids).items():
        count = int(references[rows].sum())
        expected = 1 if int(route[rows[0]]) == ROUTE_SOLVE_NONE else 0
        if count != expected:
            kind = "solve-none group" if expected else "group that is not solve-none"
            raise ValueError(f"references: {kind} {uid!r} must have {expected} reference(s), got {count}")
    return references


def build_teacher_contexts(
    rollouts: Sequence[Rollout],
    tokenizer,
    method: str,
    teacher_config: "TeacherConfig",
    templates: Any = None,
    generator: Optional[torch.Generator] = None,
    routes: Optional[torch.Tensor] = None,
    references: Optional[torch.Tensor] = None,
) -> TeacherContexts:
    """Teacher prompt (and teacher input = prompt + the same response ids) for every rollout.

    Args:
        rollouts: the batch, groups identified by ``uid`` (members need not be contiguous).
        tokenizer: a HF tokenizer with a chat template.
        method: ``"sc_grpo"``, ``"sdpo"`` or ``"sdpg"``.
        teacher_config: :class:`scgrpo_verl.config.TeacherConfig`.
        templates: :class:`TemplateConfig`, a mapping of its options, or ``None`` (defaults).
        generator: seeds the uniform draws (siblings, solve-none references); ``None`` uses torch's
            global generator.
        routes: SC-GRPO only, (B,) precomputed :func:`route_groups` routes (recomputed when ``None``).
        references: SC-GRPO only, (B,) bool, one True per solve-none group (drawn when ``None``).

    Returns:
        :class:`TeacherContexts`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown self-teacher method {method!r}; expected one of {METHODS}")
    rollouts = list(rollouts)
    if not rollouts:
        raise ValueError("build_teacher_contexts: empty batch")
    for i, rollout in enumerate(rollouts):
        if not isinstance(rollout, Rollout):
            raise ValueError(f"rollout {i} must be a Rollout, got {type(rollout).__name__}")
    _check_teacher_config(teacher_config)
    templates = TemplateConfig.from_mapping(templates)
    if method != "sc_grpo" and (routes is not None or references is not None):
        raise ValueError(f"routes / references are SC-GRPO inputs; method is {method!r}")
    if method == "sc_grpo" and not teacher_config.exclude_self:
        raise ValueError(
            "self_teacher.teacher.exclude_self: SC-GRPO never conditions a rollout on itself; must be true"
        )

    n = len(rollouts)
    uids = [r.uid for r in rollouts]
    scores = torch.tensor([r.score for r in rollouts], dtype=torch.float64)
    verified = scores >= teacher_config.success_threshold
    groups = group_positions(uids)
    group_of = {row: rows for rows in groups.values() for row in rows}

    def demonstration(row: int) -> str:
        text = rollouts[row].response_text
        return strip_thinking(text) if teacher_config.remove_thinking else text

    def siblings(row: int) -> list[int]:
        return [
            j for j in group_of[row] if bool(verified[j]) and not (teacher_config.exclude_self and j == row)
        ]

    # per rollout: (source, sibling, builder, pieces) or None
    plans: list = [None] * n
    route = reference = num_correct = None
    if method == "sc_grpo":
        route_computed, num_correct = route_groups(scores, uids, teacher_config.success_threshold)
        if routes is None:
            route = route_computed
        else:
            route = torch.as_tensor(routes).reshape(-1).long()
            if route.shape[0] != n:
                raise ValueError(f"routes has {route.shape[0]} entries for {n} rollouts")
        if references is None:
            reference = draw_solve_none_references(route, uids, generator)
        else:
            reference = _check_references(references, route, uids)
        ref_row = {}
        for rows in groups.values():
            for row in rows:
                if bool(reference[row]):
                    ref_row[rows[0]] = row
        for row, rollout in enumerate(rollouts):
            kind = int(route[row])
            if kind == ROUTE_WEIGHTED:
                sibling = _choose_sibling(siblings(row), teacher_config.sibling_choice, generator)
                if sibling < 0:
                    continue
                build = _sc_builder(rollout.prompt, templates, False)
                plans[row] = ("solution", sibling, build, [demonstration(sibling)])
            elif kind == ROUTE_SOLVE_NONE:
                ref = ref_row[group_of[row][0]]
                if ref == row:
                    continue
                plans[row] = ("reference", ref, _sc_builder(rollout.prompt, templates, True), [demonstration(ref)])
    elif method == "sdpo":
        for row, rollout in enumerate(rollouts):
            sibling = _choose_sibling(siblings(row), teacher_config.sibling_choice, generator)
            use_feedback = (
                teacher_config.use_feedback
                and rollout.feedback.strip() != ""
                and (sibling < 0 or not teacher_config.feedback_only_without_solution)
            )
            if sibling >= 0 and use_feedback:
                plans[row] = ("solution+feedback", sibling, _sdpo_builder(rollout.prompt, templates, True, True),
                              [demonstration(sibling), rollout.feedback])
            elif sibling >= 0:
                plans[row] = ("solution", sibling, _sdpo_builder(rollout.prompt, templates, True, False),
                              [demonstration(sibling)])
            elif use_feedback:
                plans[row] = ("feedback", -1, _sdpo_builder(rollout.prompt, templates, False, True), [rollout.feedback])
    else:  # sdpg
        for row, rollout in enumerate(rollouts):
            hint = rollout.privileged
            if not teacher_config.use_privileged_context or hint is None or not hint.strip():
                continue
            plans[row] = ("privileged", -1, _sdpg_builder(rollout.prompt, templates), [rollout.privileged])

    prompt_ids: list = [None] * n
    input_ids: list = [None] * n
    messages: list = [None] * n
    source: list = [None] * n
    sibling_index = [-1] * n
    shortened = [False] * n
    too_long = [False] * n
    for row, plan in enumerate(plans):
        if plan is None:
            continue
        kind, sibling, build, pieces = plan
        fitted = fit_teacher_prompt(
            build, pieces, tokenizer, int(teacher_config.max_reprompt_len), templates.truncation_marker
        )
        if fitted.too_long:
            too_long[row] = True
            continue
        prompt_ids[row] = fitted.prompt_ids
        input_ids[row] = fitted.prompt_ids + rollouts[row].response_ids
        messages[row] = fitted.messages
        source[row] = kind
        sibling_index[row] = sibling
        shortened[row] = fitted.shortened
    mask = torch.tensor([1.0 if ids is not None else 0.0 for ids in prompt_ids])
    return TeacherContexts(
        teacher_prompt_ids=prompt_ids,
        teacher_input_ids=input_ids,
        teacher_messages=messages,
        mask=mask,
        source=source,
        sibling_index=sibling_index,
        shortened=shortened,
        too_long=too_long,
        verified=verified,
        uids=uids,
        method=method,
        route=route,
        reference=reference,
        num_correct=num_correct,
    )


def _sc_builder(prompt: list, templates: TemplateConfig, solve_none: bool) -> Callable[[list], list]:
    return lambda pieces: sc_grpo_teacher_messages(prompt, pieces[0], templates, solve_none=solve_none)


def _sdpo_builder(prompt: list, templates: TemplateConfig, has_solution: bool, has_feedback: bool):
    def build(pieces: list) -> list:
        solution = pieces[0] if has_solution else None
        feedback = pieces[-1] if has_feedback else None
        return sdpo_teacher_messages(prompt, solution, feedback, templates)

    return build


def _sdpg_builder(prompt: list, templates: TemplateConfig) -> Callable[[list], list]:
    return lambda pieces: sdpg_teacher_messages(prompt, pieces[0], templates)
