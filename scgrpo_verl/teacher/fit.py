"""Teacher prompts within ``max_reprompt_len`` tokens, and the chat-template tokenisation they are measured with.

A teacher prompt longer than ``max_reprompt_len`` tokens has its demonstration / feedback / hint text shortened
at the token level (beginning kept, the template's ``truncation_marker`` appended), never the question, the
instruction or the chat template's generation header. If it does not fit even with those texts reduced to the
marker, the rollout gets no teacher ("too long").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence


from scgrpo_verl.teacher.templates import chat_prompt_ids


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
class FittedPrompt:
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
    chat_template_kwargs: Optional[dict] = None,
) -> FittedPrompt:
    """Render ``build(pieces)`` within ``max_len`` tokens, shortening only the ``pieces`` (demonstration,
    feedback, hint): each keeps its first tokens, followed by ``marker``. Everything else ``build`` adds
    (question, instruction, template, generation header) is never cut."""
    messages = build(list(pieces))
    ids = chat_prompt_ids(tokenizer, messages, chat_template_kwargs)
    if len(ids) <= max_len:
        return FittedPrompt(ids, messages, False, False)
    piece_ids = [_encode(tokenizer, p) for p in pieces]
    lengths = [len(p) for p in piece_ids]
    marker_len = len(_encode(tokenizer, marker)) if marker else 0
    # the shortest form of each piece: the marker alone, or the piece itself when that is no longer
    shortest = [text if n <= marker_len else marker for text, n in zip(pieces, lengths)]
    shortest_messages = build(shortest)
    shortest_ids = chat_prompt_ids(tokenizer, shortest_messages, chat_template_kwargs)
    if len(shortest_ids) > max_len:
        return FittedPrompt(None, None, False, True)
    budget = sum(lengths) - (len(ids) - max_len) - marker_len * sum(1 for n in lengths if n)
    while budget > 0:
        keep = _water_fill(lengths, budget)
        texts = [
            text if k >= len(p) else _decode_prefix(tokenizer, p[:k]) + marker
            for text, p, k in zip(pieces, piece_ids, keep)
        ]
        messages = build(texts)
        ids = chat_prompt_ids(tokenizer, messages, chat_template_kwargs)
        if len(ids) <= max_len:
            return FittedPrompt(ids, messages, True, False)
        budget -= len(ids) - max_len  # re-tokenisation at the cut can differ by a few tokens
    return FittedPrompt(shortest_ids, shortest_messages, True, False)
