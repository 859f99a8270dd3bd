"""A batch of rollouts as the teacher-context builder sees it: the rollouts, their groups and verified siblings.

Method-independent (plain python + torch; no tokenizer). A verified rollout has ``score >= success_threshold``.
Siblings are drawn uniformly with the given ``torch.Generator`` (``sibling_choice="uniform"``) or taken as the
first verified one in group order (``"first"``). Draws happen in a canonical order, independent of the batch
order (verl reorders the batch by rank count): groups sorted by uid, rollouts within a group by
``Rollout.index`` (batch order within a group when no rollout has an index), so a seeded generator gives each
(uid, index) the same teacher at any world size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Hashable, Optional, Sequence

import numpy as np
import torch

from scgrpo_verl.algos.sc_grpo import group_positions
from scgrpo_verl.teacher.templates import normalize_messages


@dataclass
class Rollout:
    """One rollout as the teacher-context builder sees it."""

    uid: Hashable  # group id (verl's ``uid``)
    prompt: list  # the student's chat messages, [{"role", "content"}, ...]
    # response token ids, reused verbatim after the teacher prompt: a list of ints, or an integer tensor / array
    # (made a list; a list is kept as given, not converted id by id)
    response_ids: list
    # the decoded response (the demonstration text when a sibling uses it); None: the builder decodes
    # ``tokenizer.decode(response_ids, skip_special_tokens=True)`` itself, and only where a template needs it
    response_text: Optional[str]
    score: float  # scalar reward
    feedback: str = ""  # environment feedback for this rollout ("" when none)
    privileged: Optional[str] = None  # dataset hint / reference answer (SDPG)
    # the rollout's index within its group (verl: the sample's ``session_id``); orders the draws so that
    # they do not depend on the batch order. None for every rollout: batch order within a group.
    index: Optional[Hashable] = None

    def __post_init__(self):
        self.prompt = normalize_messages(self.prompt)
        ids = self.response_ids
        if torch.is_tensor(ids) or isinstance(ids, np.ndarray):
            if ids.dtype.is_floating_point if torch.is_tensor(ids) else ids.dtype.kind not in "iu":
                raise ValueError(f"rollout of group {self.uid!r}: response_ids must be integers, got {ids.dtype}")
            ids = ids.reshape(-1).tolist()
        elif not isinstance(ids, list):
            ids = list(ids)
        if not ids:
            raise ValueError(f"rollout of group {self.uid!r} has an empty response")
        if not isinstance(ids[0], (int, np.integer)) or not isinstance(ids[-1], (int, np.integer)):
            raise ValueError(f"rollout of group {self.uid!r}: response_ids must be integers, got {type(ids[0]).__name__}")
        self.response_ids = ids
        if self.response_text is not None and not isinstance(self.response_text, str):
            raise ValueError(f"response_text must be a string or None, got {type(self.response_text).__name__}")
        self.score = float(self.score)
        self.feedback = "" if self.feedback is None else str(self.feedback)
        if self.privileged is not None:
            self.privileged = str(self.privileged)


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


def rollout_indices(rollouts: Sequence[Rollout]) -> Optional[list]:
    """Every rollout's ``index`` within its group, or ``None`` when no rollout has one (a mix is an error)."""
    given = [r.index is not None for r in rollouts]
    if not any(given):
        return None
    if not all(given):
        missing = given.index(False)
        raise ValueError(f"rollout {missing} has no index while others have one; give every rollout its index or none")
    return [r.index for r in rollouts]


class GroupedBatch:
    """The batch's groups in canonical order, which rollouts are verified, and each rollout's verified siblings."""

    def __init__(self, rollouts: Sequence[Rollout], success_threshold: float, exclude_self: bool):
        self.rollouts = list(rollouts)
        self.uids = [r.uid for r in self.rollouts]
        self.rollout_index = rollout_indices(self.rollouts)
        self.scores = torch.tensor([r.score for r in self.rollouts], dtype=torch.float64)
        self.verified = self.scores >= success_threshold
        self._verified_list = self.verified.tolist()
        # canonical order: groups by uid, rollouts by their index in the group (batch order without indices)
        self.groups = group_positions(self.uids, self.rollout_index, canonical=True)
        self.group_of = {row: rows for rows in self.groups.values() for row in rows}
        self.canonical_rows = [row for rows in self.groups.values() for row in rows]
        self.exclude_self = exclude_self

    def __len__(self) -> int:
        return len(self.rollouts)

    def siblings(self, row: int) -> list[int]:
        """The verified rollouts of ``row``'s group in canonical order (without ``row`` itself when ``exclude_self``)."""
        verified = self._verified_list
        return [j for j in self.group_of[row] if verified[j] and not (self.exclude_self and j == row)]


def choose_sibling(candidates: Sequence[int], choice: str, generator: Optional[torch.Generator]) -> int:
    """One of ``candidates``: the first (``choice="first"``) or a uniform draw with ``generator``; -1 when none."""
    if not candidates:
        return -1
    if choice == "first":
        return candidates[0]
    return candidates[int(torch.randint(len(candidates), (1,), generator=generator))]
