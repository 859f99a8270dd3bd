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
(``"first"``). Random draws happen in a canonical order, independent of the batch order (verl reorders
the batch by rank count): solve-none references (groups sorted by uid), then siblings (groups sorted by
uid, rollouts within a group by ``Rollout.index``; batch order within a group when no rollout has an
index), so a seeded generator gives each (uid, index) the same teacher at any world size.
``<think>...</think>`` blocks are stripped from demonstrations when ``remove_thinking``.

Speed. Each distinct teacher text is tokenised once per batch, in one batched call of the fast
tokenizer; the chat template's text around the demonstration / feedback / hint is rendered once per
(prompt, template), and its far sides (question, instruction, template) are tokenised once per prompt, in
pieces shared by every template. A demonstration is not re-tokenised: with a byte-level BPE tokenizer
(GPT-2, Qwen, Llama-3 family; each split rule checked on probes, else every prompt is tokenised whole) the
sibling's response ids are reused between its first and last split candidate -- a position where a
pre-token starts whatever the text around it: before a space followed by a non-space character, or after
``<printable ASCII>\n`` and before printable ASCII (:func:`_split_candidates`) -- and only the text outside
them, joined with the template's text up to the nearest candidate there, is tokenised: a few tokens per
junction, for code, indented text, LaTeX and mixed-language text alike. The demonstration's text comes from
the vocabulary's bytes (no per-token Python). That gives the ids the chat template would give whenever the
response ids are the tokenizer's own encoding of their text. For sampled ids that are not (a non-canonical
tokenisation), the teacher sees the student's own ids in the middle of the demonstration (the same text);
``exact=True`` re-tokenises every demonstration from its text instead. Response texts are decoded only
where a template needs them (``Rollout.response_text`` may be ``None``).

Length: a teacher prompt longer than ``max_reprompt_len`` tokens has its demonstration / feedback /
hint text shortened at the token level (beginning kept, the template's ``truncation_marker``
appended), never the question, the instruction or the chat template's generation header. If it
does not fit even with those texts reduced to the marker, the rollout gets no teacher ("too long").
"""

from __future__ import annotations

import json
import operator
import re
import weakref
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable, Optional, Sequence

import numpy as np
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
    from scgrpo_verl.settings import TeacherConfig

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


def chat_template_ids(tokenizer, messages: Sequence[dict], chat_template_kwargs: Optional[dict] = None) -> list[int]:
    """``apply_chat_template(..., add_generation_prompt=True, tokenize=True, **chat_template_kwargs)`` as a flat
    list of ids (transformers 5 returns a ``BatchEncoding``; older versions a list). ``chat_template_kwargs`` are
    verl's ``data.apply_chat_template_kwargs`` (e.g. Qwen3's ``enable_thinking``), so that the teacher's prompt
    is rendered exactly as the student's."""
    out = tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=True, tokenize=True, **dict(chat_template_kwargs or {})
    )
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
    chat_template_kwargs: Optional[dict] = None,
) -> _Fitted:
    """Render ``build(pieces)`` within ``max_len`` tokens, shortening only the ``pieces`` (demonstration,
    feedback, hint): each keeps its first tokens, followed by ``marker``. Everything else ``build`` adds
    (question, instruction, template, generation header) is never cut."""
    messages = build(list(pieces))
    ids = chat_template_ids(tokenizer, messages, chat_template_kwargs)
    if len(ids) <= max_len:
        return _Fitted(ids, messages, False, False)
    piece_ids = [_encode(tokenizer, p) for p in pieces]
    lengths = [len(p) for p in piece_ids]
    marker_len = len(_encode(tokenizer, marker)) if marker else 0
    # the shortest form of each piece: the marker alone, or the piece itself when that is no longer
    shortest = [text if n <= marker_len else marker for text, n in zip(pieces, lengths)]
    shortest_messages = build(shortest)
    shortest_ids = chat_template_ids(tokenizer, shortest_messages, chat_template_kwargs)
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
        ids = chat_template_ids(tokenizer, messages, chat_template_kwargs)
        if len(ids) <= max_len:
            return _Fitted(ids, messages, True, False)
        budget -= len(ids) - max_len  # re-tokenisation at the cut can differ by a few tokens
    return _Fitted(shortest_ids, shortest_messages, True, False)




def bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character map of byte-level BPE vocabularies (GPT-2's, used by Qwen / Llama-3)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
    printable += list(range(ord("\xae"), ord("\xff") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars

# -- fast tokenisation: per-tokenizer tables ---------------------------------------------------------
_ASCII_NONWS = np.zeros(256, dtype=bool)
_ASCII_NONWS[0x21:0x7F] = True  # printable ASCII other than space: never (part of) a white-space character
# Probes of the two split rules of :func:`_split_candidates`: the tokenizer must encode each joined pair as the
# two encodings side by side. Newline rule: every left text ends with <non-space>"\n", every right text starts
# with printable ASCII. Space rule: every right text starts with " " + a non-space character, the left texts end
# with anything.
_PROBE_LEFT = ("x\n", "Answer: 42.\n", "  indented code(a, b)\n", "123\n", "é à\n", "\t\tx;\n", "'s\n", "?!\n")
_PROBE_RIGHT = ("The", "x = 1", "'s", "123", "a  ", "(a)", "-- b", "#", "Ünïcode", "}\n\n", "A\n")
_SPACE_PROBE_LEFT = _PROBE_LEFT + ("x", "a  ", "42", "\t", "(", "'", "é", "答案", "。", "e", " ", "\n\n", "\\[", "&")
_SPACE_PROBE_RIGHT = (" x = 1", " 5", " 12.5", " (a)", " é", " 答案", " \\frac{a}{b}", " ≤ 2", " 🎉 ok", " 's", " -- b",
                      " \u0301x", " Ünïcode", " }\n", " \"quoted\"", " Поэтому")
# pre-token starts in any text: "<printable ASCII>\n|<printable ASCII>" and "| <non-space character>"
_LITERAL_SPLITS = {"newline": r"(?<=[!-~]\n)(?=[!-~])", "space": r"(?= \S)"}


def _starts_with_non_space(data: bytes) -> bool:
    """Whether ``data`` starts with a whole character that is not white space (for Python, whose white space
    includes the regex engines' ``\\s``): printable ASCII, or a complete non-space multi-byte character."""
    if not data:
        return False
    lead = data[0]
    if lead < 0x80:
        return bool(_ASCII_NONWS[lead])
    size = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
    try:
        return not data[:size].decode("utf-8").isspace()
    except UnicodeDecodeError:
        return False


@dataclass
class _TokenTables:
    """Vocabulary facts of a byte-level BPE tokenizer, for the split rules of :func:`_split_candidates`."""

    special: np.ndarray  # (V,) bool: ids ``decode(skip_special_tokens=True)`` drops
    pieces: list  # (V,) bytes: every token's bytes
    nbytes: np.ndarray  # (V,) int64: the token's length in bytes
    newline_rule: bool  # the probes of each rule passed
    space_rule: bool
    start_ok: np.ndarray  # (V,) bool: the token's first byte is printable non-space ASCII
    end_ok: np.ndarray  # (V,) bool: last byte printable non-space ASCII
    end_nl_after_ok: np.ndarray  # (V,) bool: ends with <printable non-space ASCII> + "\n"
    is_nl: np.ndarray  # (V,) bool: the token is exactly "\n"
    space_start: np.ndarray  # (V,) bool: " " + a non-space character
    is_space: np.ndarray  # (V,) bool: the token is exactly " "
    nonspace_start: np.ndarray  # (V,) bool: starts with a whole non-space character
    added: Optional["re.Pattern"] = None  # the added tokens' texts (longest first) that may cut a literal
    literal_split: Optional["re.Pattern"] = None  # the split rules on text (literals of the chat template)


_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _byte_level_tables(tokenizer) -> Optional[_TokenTables]:
    """Tables for ``tokenizer`` when the fast path is exact for it, else ``None`` (cached per tokenizer).

    The fast path needs a fast byte-level BPE tokenizer (GPT-2 / Qwen / Llama-3 family: no normaliser or
    NFC, a regex + ByteLevel pre-tokeniser without a prefix space) for which the split rules of
    :func:`_split_candidates` hold; probes check each rule.
    """
    try:
        return _TABLES[tokenizer]
    except (KeyError, TypeError):
        pass
    tables = None
    try:
        tables = _build_tables(tokenizer)
    except Exception:  # any tokenizer the checks cannot read takes the exact path
        tables = None
    try:
        _TABLES[tokenizer] = tables
    except TypeError:
        pass
    return tables


def _probes_pass(tokenizer, lefts: Sequence[str], rights: Sequence[str]) -> bool:
    pairs = [(left, right) for left in lefts for right in rights]
    texts = [t for left, right in pairs for t in (left, right, left + right)]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return all(list(ids[3 * k + 2]) == list(ids[3 * k]) + list(ids[3 * k + 1]) for k in range(len(pairs)))


def _build_tables(tokenizer) -> Optional[_TokenTables]:
    if not getattr(tokenizer, "is_fast", False) or getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return None
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    normalizer = spec.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "NFC":
        return None
    if (spec.get("model") or {}).get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        return None
    pre_tokenizer = json.dumps(spec.get("pre_tokenizer"))
    if '"add_prefix_space": true' in pre_tokenizer:
        return None
    if '"use_regex": true' not in pre_tokenizer and '"type": "Split"' not in pre_tokenizer:
        return None  # no regex pre-tokeniser: merges may span any split
    newline_rule = _probes_pass(tokenizer, _PROBE_LEFT, _PROBE_RIGHT)
    space_rule = _probes_pass(tokenizer, _SPACE_PROBE_LEFT, _SPACE_PROBE_RIGHT)
    if not (newline_rule or space_rule):
        return None
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    size = max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)
    raw: list = [b""] * size
    added = {token_id: token.content for token_id, token in tokenizer.added_tokens_decoder.items()}
    for token, token_id in tokenizer.get_vocab().items():
        if token_id in added:
            raw[token_id] = added[token_id].encode("utf-8")
        else:
            raw[token_id] = bytes(byte_of[c] for c in token)  # KeyError: not byte-level -> exact path
    first = np.array([b[0] if b else 0 for b in raw], dtype=np.int64)
    last = np.array([b[-1] if b else 0 for b in raw], dtype=np.int64)
    before_last = np.array([b[-2] if len(b) >= 2 else 0 for b in raw], dtype=np.int64)
    nbytes = np.array([len(b) for b in raw], dtype=np.int64)
    special = np.zeros(size, dtype=bool)
    special[[i for i in tokenizer.all_special_ids if 0 <= i < size]] = True
    # added tokens split the text before anything else; a literal may be cut right before / after one that
    # strips no white space and is no part of another added token (its two sides then tokenise apart)
    contents = [token.content for token in tokenizer.added_tokens_decoder.values()]
    clean = [
        token.content for token in tokenizer.added_tokens_decoder.values()
        if token.content and not (token.lstrip or token.rstrip or token.single_word)
        and not any(token.content in other and token.content != other for other in contents)
    ]
    added = re.compile("|".join(re.escape(c) for c in sorted(clean, key=len, reverse=True))) if clean else None
    rules = [_LITERAL_SPLITS[name] for name, on in (("newline", newline_rule), ("space", space_rule)) if on]
    return _TokenTables(
        added=added,
        literal_split=re.compile("|".join(rules)),
        special=special,
        pieces=raw,
        nbytes=nbytes,
        newline_rule=newline_rule,
        space_rule=space_rule,
        start_ok=_ASCII_NONWS[first],
        end_ok=_ASCII_NONWS[last],
        end_nl_after_ok=(last == 0x0A) & _ASCII_NONWS[before_last],
        is_nl=np.array([b == b"\n" for b in raw], dtype=bool),
        space_start=np.array([b[:1] == b" " and _starts_with_non_space(b[1:]) for b in raw], dtype=bool),
        is_space=np.array([b == b" " for b in raw], dtype=bool),
        nonspace_start=np.array([_starts_with_non_space(b) for b in raw], dtype=bool),
    )


def _token_bytes(ids: Sequence[int], tables: _TokenTables) -> bytes:
    """The bytes the ids decode to, joined from the vocabulary's bytes (C-level lookups, no Python loop)."""
    if len(ids) < 2:
        return b"".join(tables.pieces[i] for i in ids)
    return b"".join(operator.itemgetter(*ids)(tables.pieces))


def _split_candidates(ids: np.ndarray, tables: _TokenTables) -> np.ndarray:
    """Token positions k >= 1 where a pre-token starts whatever the text before it and after the next character.

    Two rules, for the byte-level regex pre-tokenisers (GPT-2, cl100k, Qwen, Llama-3): (1) the text splits as
    ``...<printable ASCII>\\n | <printable ASCII>...`` (no pre-token spans that); (2) token k starts with a space
    followed by a non-space character: no pattern puts a space after another character of its pre-token unless
    that character is white space too, and a white-space run followed by " <non-space>" stops before that space.
    A split at such a position gives the ids of a text as the ids of its two sides, joined (checked on probes by
    :func:`_byte_level_tables`; a rule whose probes fail is not used). Rule (1) reads the two characters before
    the split, rule (2) the character after the space.
    """
    n = len(ids)
    candidate = np.zeros(n, dtype=bool)
    if n < 2:
        return np.zeros(0, dtype=np.int64)
    if tables.space_rule:
        candidate |= tables.space_start[ids]
        candidate[:-1] |= tables.is_space[ids[:-1]] & tables.nonspace_start[ids[1:]]
    if tables.newline_rule:
        after = tables.start_ok[ids[1:]]
        candidate[1:] |= after & tables.end_nl_after_ok[ids[:-1]]
        if n >= 3:
            candidate[2:] |= after[1:] & tables.is_nl[ids[1:-1]] & tables.end_ok[ids[:-2]]
    candidate[0] = False
    return np.nonzero(candidate)[0]


@dataclass
class _Demo:
    """One demonstration (a sibling's response), tokenised at most once per batch."""

    row: int
    text: Optional[str] = None  # the demonstration text (decoded on demand)
    ids: Optional[list] = None  # fast path: the response ids reused verbatim in the middle of the demonstration
    head_text: str = ""  # fast path: the demonstration's text before / after those ids (re-tokenised)
    tail_text: str = ""


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


def _rollout_indices(rollouts: Sequence[Rollout]) -> Optional[list]:
    given = [r.index is not None for r in rollouts]
    if not any(given):
        return None
    if not all(given):
        missing = given.index(False)
        raise ValueError(f"rollout {missing} has no index while others have one; give every rollout its index or none")
    return [r.index for r in rollouts]


@dataclass
class _Plan:
    kind: str  # the source
    sibling: int  # the demonstration's row, or -1
    flavor: tuple  # which template: ("sc_grpo", solve_none) / ("sdpo", solution, feedback) / ("sdpg",)
    pieces: list  # the texts the template takes: int = the demonstration of that row, str = as is


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
    method: str,
    teacher_config: "TeacherConfig",
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
        method: ``"sc_grpo"``, ``"sdpo"`` or ``"sdpg"``.
        teacher_config: :class:`scgrpo_verl.config.TeacherConfig`.
        templates: :class:`TemplateConfig`, a mapping of its options, or ``None`` (defaults).
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
    rollout_index = _rollout_indices(rollouts)
    scores = torch.tensor([r.score for r in rollouts], dtype=torch.float64)
    verified = scores >= teacher_config.success_threshold
    verified_list = verified.tolist()
    # canonical order: groups by uid, rollouts by their index in the group (batch order without indices)
    groups = group_positions(uids, rollout_index, canonical=True)
    group_of = {row: rows for rows in groups.values() for row in rows}
    canonical_rows = [row for rows in groups.values() for row in rows]
    exclude_self = teacher_config.exclude_self

    def siblings(row: int) -> list[int]:
        return [j for j in group_of[row] if verified_list[j] and not (exclude_self and j == row)]

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
            reference = draw_solve_none_references(route, uids, generator, rollout_index)
        else:
            reference = _check_references(references, route, groups)
        route_list, reference_list = route.tolist(), reference.tolist()
        ref_row = {}
        for rows in groups.values():
            for row in rows:
                if reference_list[row]:
                    ref_row[rows[0]] = row
        for row in canonical_rows:
            kind = route_list[row]
            if kind == ROUTE_WEIGHTED:
                sibling = _choose_sibling(siblings(row), teacher_config.sibling_choice, generator)
                if sibling >= 0:
                    plans[row] = _Plan("solution", sibling, ("sc_grpo", False), [sibling])
            elif kind == ROUTE_SOLVE_NONE:
                ref = ref_row[group_of[row][0]]
                if ref != row:
                    plans[row] = _Plan("reference", ref, ("sc_grpo", True), [ref])
    elif method == "sdpo":
        for row in canonical_rows:
            rollout = rollouts[row]
            sibling = _choose_sibling(siblings(row), teacher_config.sibling_choice, generator)
            use_feedback = (
                teacher_config.use_feedback
                and rollout.feedback.strip() != ""
                and (sibling < 0 or not teacher_config.feedback_only_without_solution)
            )
            if sibling >= 0 and use_feedback:
                plans[row] = _Plan("solution+feedback", sibling, ("sdpo", True, True), [sibling, rollout.feedback])
            elif sibling >= 0:
                plans[row] = _Plan("solution", sibling, ("sdpo", True, False), [sibling])
            elif use_feedback:
                plans[row] = _Plan("feedback", -1, ("sdpo", False, True), [rollout.feedback])
    else:  # sdpg
        for row, rollout in enumerate(rollouts):
            hint = rollout.privileged
            if not teacher_config.use_privileged_context or hint is None or not hint.strip():
                continue
            plans[row] = _Plan("privileged", -1, ("sdpg",), [hint])

    builder = _PromptBuilder(rollouts, tokenizer, templates, teacher_config, exact, chat_template_kwargs)
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
        verified=verified,
        uids=uids,
        method=method,
        route=route,
        reference=reference,
        num_correct=num_correct,
        extra={"fast_demonstrations": builder.fast_count, "retokenized_demonstrations": builder.slow_count},
    )


_CHUNK = 256  # characters: the template's far sides are tokenised in pieces of at least this length
_SENTINELS = (
    tuple(f" \n<<scgrpo-teacher-piece-{k}-a>>\n " for k in range(2)),
    tuple(f"\t<<scgrpo-teacher-piece-{k}-b>> </think>\t" for k in range(2)),
)


class _PromptBuilder:
    """Tokenises the planned teacher prompts of one batch, each distinct text once, in batches.

    A teacher prompt's text is the chat template's literal text around the pieces (demonstration,
    feedback, hint): ``lit0 + piece0 + lit1 [+ piece1 + lit2]``; the literals are rendered once per
    (prompt, template) with placeholder pieces and checked to be the same for two different
    placeholders (else that prompt is rendered by ``apply_chat_template`` itself).
    """

    def __init__(self, rollouts, tokenizer, templates: TemplateConfig, teacher_config, exact: bool,
                 chat_template_kwargs: Optional[dict] = None):
        self.rollouts, self.tokenizer, self.templates = rollouts, tokenizer, templates
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.remove_thinking = bool(teacher_config.remove_thinking)
        self.max_len = int(teacher_config.max_reprompt_len)
        self.tables = None if exact else _byte_level_tables(tokenizer)
        self.exact = exact
        self._literals: dict = {}
        self._cuts: dict = {}
        self._chunked: dict = {}
        self._verified: dict = {}  # (template, roles) -> the template inserts the pieces verbatim
        self._demos: dict[int, _Demo] = {}
        backend = getattr(tokenizer, "backend_tokenizer", None)
        # the backend directly when the wrapper would not change its settings (no truncation / padding)
        self._backend = (
            backend if backend is not None and backend.truncation is None and backend.padding is None else None
        )
        self.fast_count = self.slow_count = 0

    # -- texts ----------------------------------------------------------------------------------------
    def _builder(self, row: int, flavor: tuple) -> Callable[[list], list]:
        prompt, templates = self.rollouts[row].prompt, self.templates
        if flavor[0] == "sc_grpo":
            return lambda pieces: sc_grpo_teacher_messages(prompt, pieces[0], templates, solve_none=flavor[1])
        if flavor[0] == "sdpo":
            has_solution, has_feedback = flavor[1], flavor[2]
            return lambda pieces: sdpo_teacher_messages(
                prompt, pieces[0] if has_solution else None, pieces[-1] if has_feedback else None, templates
            )
        return lambda pieces: sdpg_teacher_messages(prompt, pieces[0], templates)

    def _render(self, messages: list) -> str:
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **self.chat_template_kwargs
        )
        if not isinstance(text, str):
            raise ValueError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not a string")
        return text

    def _literal_parts(self, row: int, plan: _Plan) -> Optional[list]:
        """The template text around the pieces, or ``None`` when the template does not insert them verbatim: the
        same for a second set of placeholders (checked once per template and sequence of roles, a render each)."""
        prompt = self.rollouts[row].prompt
        key = (plan.flavor, repr(prompt))
        if key in self._literals:
            return self._literals[key]
        build, count = self._builder(row, plan.flavor), len(plan.pieces)
        shape = (plan.flavor, tuple(str(message.get("role")) for message in prompt))
        found = []
        for sentinels in _SENTINELS[: 1 if shape in self._verified else 2]:
            parts, rest = [], self._render(build(list(sentinels[:count])))
            for sentinel in sentinels[:count]:
                if rest.count(sentinel) != 1:
                    parts = None
                    break
                before, rest = rest.split(sentinel)
                parts.append(before)
            found.append(None if parts is None else parts + [rest])
        if shape not in self._verified:
            self._verified[shape] = found[0] is not None and found[0] == found[1]
        literals = found[0] if self._verified[shape] else None
        self._literals[key] = literals
        return literals

    def demonstration_text(self, row: int) -> str:
        demo = self._demo(row)
        if demo.text is None:
            rollout = self.rollouts[row]
            text = rollout.response_text
            if text is None:
                text = self.tokenizer.decode(rollout.response_ids, skip_special_tokens=True)
            demo.text = strip_thinking(text) if self.remove_thinking else text
        return demo.text

    def piece_texts(self, plan: _Plan) -> list[str]:
        return [self.demonstration_text(p) if isinstance(p, int) else p for p in plan.pieces]

    def messages(self, row: int, plan: _Plan) -> list:
        return self._builder(row, plan.flavor)(self.piece_texts(plan))

    # -- demonstrations -------------------------------------------------------------------------------
    def _demo(self, row: int) -> _Demo:
        if row not in self._demos:
            self._demos[row] = _Demo(row)
        return self._demos[row]

    def _prepare_fast(self, rows: Sequence[int]) -> None:
        """Find each demonstration's ids that the teacher prompt reuses verbatim: from its first to its last split
        candidate (:func:`_split_candidates`) inside the demonstration's text; the text outside is re-tokenised."""
        tables = self.tables
        for row in rows:
            rollout = self.rollouts[row]
            response = rollout.response_ids
            ids = np.fromiter(response, dtype=np.int64, count=len(response))
            if ids.min() < 0 or ids.max() >= len(tables.special):
                continue
            special = tables.special[ids]
            lo = 0
            if special.any():  # dropped by decode(skip_special_tokens=True): fine at the ends only
                keep = np.nonzero(~special)[0]
                if len(keep) == 0 or not (~special[keep[0] : keep[-1] + 1]).all():
                    continue
                lo = int(keep[0])
                ids = ids[lo : int(keep[-1]) + 1]
            candidates = _split_candidates(ids, tables)
            if len(candidates) == 0:
                continue
            # the response's text as decode(skip_special_tokens=True) gives it: the byte-level decoder joins the
            # tokens' bytes and replaces invalid ones
            raw = _token_bytes(response[lo : lo + len(ids)], tables)
            text = raw.decode("utf-8", "replace")
            if rollout.response_text is not None and rollout.response_text != text:
                continue  # the given text is not the ids' own: re-tokenise it
            demo_text = strip_thinking(text) if self.remove_thinking else text
            # the demonstration as a slice [c0, c1) of the text (strip_thinking keeps the text after the last
            # closing tag, up to an unclosed opening one, stripped) -- when it is one
            c0, c1 = 0, len(text)
            if self.remove_thinking:
                close = text.rfind("</think>")
                c0 = close + len("</think>") if close >= 0 else 0
                opened = text.find("<think>", c0)
                c1 = opened if opened >= 0 else len(text)
                stripped = text[c0:c1]
                c0, c1 = c0 + len(stripped) - len(stripped.lstrip()), c0 + len(stripped.rstrip())
                if c1 - c0 != len(demo_text) or text[c0:c1] != demo_text:
                    continue
            valid = len(text)  # bytes and characters correspond up to the first invalid byte
            if "\ufffd" in text:
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    valid = len(raw[: error.start].decode("utf-8"))
            if c0 > valid:
                continue
            starts = np.cumsum(tables.nbytes[ids]) - tables.nbytes[ids]
            b0 = len(text[:c0].encode("utf-8"))
            b1 = len(text[: min(c1, valid)].encode("utf-8"))
            at = starts[candidates]
            inside = candidates[(at - 2 >= b0) & (at + 2 <= b1)]  # each rule's context inside the demonstration
            if len(inside) == 0:
                continue
            head, tail = int(inside[0]), int(inside[-1])
            head_chars = len(raw[: int(starts[head])].decode("utf-8"))
            tail_chars = len(text) - len(raw[int(starts[tail]) :].decode("utf-8", "replace"))
            demo = self._demo(row)
            demo.text, demo.head_text, demo.tail_text = demo_text, text[c0:head_chars], text[tail_chars:c1]
            demo.ids = rollout.response_ids[lo + head : lo + tail]

    def _cut(self, text: str, last: bool) -> int:
        """Where ``text`` may be cut so that its two sides tokenise apart, as near its end (``last``) or its start
        as the split rules allow: a split candidate after its last added token / before its first, else at that
        added token; 0 / ``len(text)`` when it has neither."""
        key = (text, last)
        if key not in self._cuts:
            cut = 0 if last else len(text)
            if self.tables is None:
                return cut
            if self.tables.added is not None:
                if last:
                    for match in self.tables.added.finditer(text):
                        cut = match.end()
                else:
                    match = self.tables.added.search(text)
                    cut = match.start() if match else cut
            section = text[cut:] if last else text[:cut]
            found = [m.start() for m in self.tables.literal_split.finditer(section)]
            if found:
                cut = cut + found[-1] if last else found[0]
            self._cuts[key] = cut
        return self._cuts[key]

    def _chunks(self, text: str) -> tuple:
        """``text`` in pieces that tokenise apart: cut at added tokens and split candidates, each piece from a cut to
        the first cut at least ``_CHUNK`` characters later. A question shared by teacher prompts of several
        templates is then tokenised once: the pieces of their common beginning are the same."""
        if text not in self._chunked:
            cuts = []
            if self.tables is not None and len(text) >= 2 * _CHUNK:
                bounds = [0, len(text)]
                if self.tables.added is not None:
                    bounds += [k for match in self.tables.added.finditer(text) for k in match.span()]
                bounds = sorted(set(bounds))
                found = set(bounds)
                for a, b in zip(bounds, bounds[1:]):  # within the text between added tokens only
                    found.update(a + match.start() for match in self.tables.literal_split.finditer(text[a:b]))
                last = 0
                for cut in sorted(found):
                    if cut - last >= _CHUNK and len(text) - cut >= _CHUNK:
                        cuts.append(cut)
                        last = cut
            ends = [0] + cuts + [len(text)]
            self._chunked[text] = tuple(text[a:b] for a, b in zip(ends, ends[1:]) if b > a)
        return self._chunked[text]

    def _join(self, job: tuple, encoded: list, unique: dict) -> list:
        """The ids of a job: its texts' encodings and the demonstration's reused ids (an int part), in order."""
        ids: list = []
        for part in job:
            ids += encoded[unique[part]] if isinstance(part, str) else self._demos[part].ids
        return ids

    def _encode(self, texts: list) -> list:
        if not texts:
            return []
        if self._backend is not None:
            return [encoding.ids for encoding in self._backend.encode_batch(texts, add_special_tokens=False)]
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    # -- the batch ------------------------------------------------------------------------------------
    def build(self, plans: Sequence[Optional[_Plan]]):
        n = len(plans)
        prompt_ids: list = [None] * n
        messages: dict = {}
        shortened, too_long = [False] * n, [False] * n
        # what to tokenise, per row: ("text", left, middle, right): the three texts side by side, or ("fast", left,
        # before the reused ids, demo row, after them, right); left / right are the same for every row of a prompt
        jobs: dict = {}
        literals = {row: self._literal_parts(row, plan) for row, plan in enumerate(plans) if plan is not None}
        if self.tables is not None:
            fast_rows = sorted({
                plan.pieces[0] for row, plan in enumerate(plans)
                if plan is not None and isinstance(plan.pieces[0], int) and literals[row] is not None
            })
            self._prepare_fast(fast_rows)
        for row, plan in enumerate(plans):
            if plan is None:
                continue
            parts = literals[row]
            first = plan.pieces[0]
            demo = self._demos.get(first) if isinstance(first, int) else None
            fast = parts is not None and demo is not None and demo.ids is not None
            if fast or (parts is not None and not self.exact):
                # the literals' far sides (question, instruction, template) are tokenised once per prompt; each
                # row tokenises only the text between them, or around the demonstration's reused ids
                i, j = self._cut(parts[0], last=True), self._cut(parts[-1], last=False)
                texts = plan.pieces if fast else self.piece_texts(plan)
                rest = "".join(lit + text for lit, text in zip(parts[1:-1], texts[1:])) + parts[-1][:j]
                if fast:
                    jobs[row] = (*self._chunks(parts[0][:i]), parts[0][i:] + demo.head_text, first,
                                 demo.tail_text + rest, *self._chunks(parts[-1][j:]))
                else:
                    jobs[row] = (*self._chunks(parts[0][:i]), parts[0][i:] + texts[0] + rest,
                                 *self._chunks(parts[-1][j:]))
            else:  # the chat template itself, as apply_chat_template(tokenize=True) does
                msgs = self._builder(row, plan.flavor)(self.piece_texts(plan))
                messages[row] = msgs
                jobs[row] = (self._render(msgs),)
        # each job: texts tokenised apart (each distinct one once) and a demonstration row whose ids are reused
        unique: dict[str, int] = {}
        for job in jobs.values():
            for text in job:
                if isinstance(text, str):
                    unique.setdefault(text, len(unique))
        encoded = self._encode(list(unique))
        fast_demos, slow_demos = set(), set()
        made: dict = {}  # rows with the same job share one list of ids (read-only)
        for row, job in jobs.items():
            ids = made.get(job)
            if ids is None:
                ids = made[job] = self._join(job, encoded, unique)
            demo = next((part for part in job if isinstance(part, int)), None)
            if demo is not None:
                fast_demos.add(demo)
            elif isinstance(plans[row].pieces[0], int):
                slow_demos.add(plans[row].pieces[0])
            if len(ids) <= self.max_len:
                prompt_ids[row] = ids
                continue
            # too long: shorten the pieces exactly as before (rare; re-tokenises this prompt)
            plan = plans[row]
            fitted = fit_teacher_prompt(
                self._builder(row, plan.flavor), self.piece_texts(plan), self.tokenizer, self.max_len,
                self.templates.truncation_marker, self.chat_template_kwargs,
            )
            if fitted.too_long:
                too_long[row] = True
                messages.pop(row, None)
                continue
            prompt_ids[row], messages[row], shortened[row] = fitted.prompt_ids, fitted.messages, fitted.shortened
        self.fast_count, self.slow_count = len(fast_demos), len(slow_demos - fast_demos)
        return prompt_ids, messages, shortened, too_long
