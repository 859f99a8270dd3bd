"""BPE splicing: a demonstration's response ids reused verbatim, only the text at its junctions re-tokenised.

A demonstration is not re-tokenised: with a byte-level BPE tokenizer (GPT-2, Qwen, Llama-3 family; each split
rule checked on probes, else every prompt is tokenised whole) the sibling's response ids are reused between its
first and last split candidate -- a position where a pre-token starts whatever the text around it: before a
space followed by a non-space character, or after ``<printable ASCII>\n`` and before printable ASCII
(:func:`split_candidates`) -- and only the text outside them, joined with the template's text up to the nearest
candidate there (:func:`junction_cut`), is tokenised: a few tokens per junction, for code, indented text, LaTeX
and mixed-language text alike. The demonstration's text comes from the vocabulary's bytes (no per-token Python).
That gives the ids the chat template would give whenever the response ids are the tokenizer's own encoding of
their text. For sampled ids that are not (a non-canonical tokenisation), the teacher sees the student's own ids
in the middle of the demonstration (the same text). Plain python + numpy; the tokenizer is only read.
"""

from __future__ import annotations

import json
import operator
import re
import weakref
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from scgrpo_verl.teacher.rollouts import strip_thinking


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
# Probes of the two split rules of :func:`split_candidates`: the tokenizer must encode each joined pair as the
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
class TokenTables:
    """Vocabulary facts of a byte-level BPE tokenizer, for the split rules of :func:`split_candidates`."""

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


def byte_level_tables(tokenizer) -> Optional[TokenTables]:
    """Tables for ``tokenizer`` when the fast path is exact for it, else ``None`` (cached per tokenizer).

    The fast path needs a fast byte-level BPE tokenizer (GPT-2 / Qwen / Llama-3 family: no normaliser or
    NFC, a regex + ByteLevel pre-tokeniser without a prefix space) for which the split rules of
    :func:`split_candidates` hold; probes check each rule.
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


def _build_tables(tokenizer) -> Optional[TokenTables]:
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
    return TokenTables(
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


def token_bytes(ids: Sequence[int], tables: TokenTables) -> bytes:
    """The bytes the ids decode to, joined from the vocabulary's bytes (C-level lookups, no Python loop)."""
    if len(ids) < 2:
        return b"".join(tables.pieces[i] for i in ids)
    return b"".join(operator.itemgetter(*ids)(tables.pieces))


def split_candidates(ids: np.ndarray, tables: TokenTables) -> np.ndarray:
    """Token positions k >= 1 where a pre-token starts whatever the text before it and after the next character.

    Two rules, for the byte-level regex pre-tokenisers (GPT-2, cl100k, Qwen, Llama-3): (1) the text splits as
    ``...<printable ASCII>\\n | <printable ASCII>...`` (no pre-token spans that); (2) token k starts with a space
    followed by a non-space character: no pattern puts a space after another character of its pre-token unless
    that character is white space too, and a white-space run followed by " <non-space>" stops before that space.
    A split at such a position gives the ids of a text as the ids of its two sides, joined (checked on probes by
    :func:`byte_level_tables`; a rule whose probes fail is not used). Rule (1) reads the two characters before
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
class Splice:
    """A demonstration as text around reused ids: ``head_text + decode(ids) + tail_text == text``."""

    text: str  # the demonstration text (the response's text, ``<think>`` blocks stripped when asked)
    head_text: str  # the demonstration's text before the reused ids (re-tokenised)
    ids: list  # the response ids reused verbatim
    tail_text: str  # the demonstration's text after them (re-tokenised)


def splice_demonstration(
    response_ids: list, response_text: Optional[str], tables: TokenTables, remove_thinking: bool
) -> Optional[Splice]:
    """The response ids that a teacher prompt may reuse verbatim: from the first to the last split candidate
    (:func:`split_candidates`) inside the demonstration's text; ``None`` when there are none, or when the ids do
    not decode to ``response_text`` (given) or hold special tokens other than at their ends."""
    ids = np.fromiter(response_ids, dtype=np.int64, count=len(response_ids))
    if ids.min() < 0 or ids.max() >= len(tables.special):
        return None
    special = tables.special[ids]
    lo = 0
    if special.any():  # dropped by decode(skip_special_tokens=True): fine at the ends only
        keep = np.nonzero(~special)[0]
        if len(keep) == 0 or not (~special[keep[0] : keep[-1] + 1]).all():
            return None
        lo = int(keep[0])
        ids = ids[lo : int(keep[-1]) + 1]
    candidates = split_candidates(ids, tables)
    if len(candidates) == 0:
        return None
    # the response's text as decode(skip_special_tokens=True) gives it: the byte-level decoder joins the
    # tokens' bytes and replaces invalid ones
    raw = token_bytes(response_ids[lo : lo + len(ids)], tables)
    text = raw.decode("utf-8", "replace")
    if response_text is not None and response_text != text:
        return None  # the given text is not the ids' own: re-tokenise it
    demo_text = strip_thinking(text) if remove_thinking else text
    # the demonstration as a slice [c0, c1) of the text (strip_thinking keeps the text after the last
    # closing tag, up to an unclosed opening one, stripped) -- when it is one
    c0, c1 = 0, len(text)
    if remove_thinking:
        close = text.rfind("</think>")
        c0 = close + len("</think>") if close >= 0 else 0
        opened = text.find("<think>", c0)
        c1 = opened if opened >= 0 else len(text)
        stripped = text[c0:c1]
        c0, c1 = c0 + len(stripped) - len(stripped.lstrip()), c0 + len(stripped.rstrip())
        if c1 - c0 != len(demo_text) or text[c0:c1] != demo_text:
            return None
    valid = len(text)  # bytes and characters correspond up to the first invalid byte
    if "\ufffd" in text:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as error:
            valid = len(raw[: error.start].decode("utf-8"))
    if c0 > valid:
        return None
    starts = np.cumsum(tables.nbytes[ids]) - tables.nbytes[ids]
    b0 = len(text[:c0].encode("utf-8"))
    b1 = len(text[: min(c1, valid)].encode("utf-8"))
    at = starts[candidates]
    inside = candidates[(at - 2 >= b0) & (at + 2 <= b1)]  # each rule's context inside the demonstration
    if len(inside) == 0:
        return None
    head, tail = int(inside[0]), int(inside[-1])
    head_chars = len(raw[: int(starts[head])].decode("utf-8"))
    tail_chars = len(text) - len(raw[int(starts[tail]) :].decode("utf-8", "replace"))
    return Splice(demo_text, text[c0:head_chars], response_ids[lo + head : lo + tail], text[tail_chars:c1])


def junction_cut(text: str, last: bool, tables: Optional[TokenTables]) -> int:
    """Where ``text`` may be cut so that its two sides tokenise apart, as near its end (``last``) or its start
    as the split rules allow: a split candidate after its last added token / before its first, else at that
    added token; 0 / ``len(text)`` when it has neither (or without tables)."""
    cut = 0 if last else len(text)
    if tables is None:
        return cut
    if tables.added is not None:
        if last:
            for match in tables.added.finditer(text):
                cut = match.end()
        else:
            match = tables.added.search(text)
            cut = match.start() if match else cut
    section = text[cut:] if last else text[:cut]
    found = [m.start() for m in tables.literal_split.finditer(section)]
    if found:
        cut = cut + found[-1] if last else found[0]
    return cut


def text_chunks(text: str, tables: Optional[TokenTables], min_chars: int) -> tuple:
    """``text`` in pieces that tokenise apart: cut at added tokens and split candidates, each piece from a cut to
    the first cut at least ``min_chars`` characters later (the whole text without tables). A question shared by
    teacher prompts of several templates is then tokenised once: the pieces of their common beginning are the same."""
    cuts = []
    if tables is not None and len(text) >= 2 * min_chars:
        bounds = [0, len(text)]
        if tables.added is not None:
            bounds += [k for match in tables.added.finditer(text) for k in match.span()]
        bounds = sorted(set(bounds))
        found = set(bounds)
        for a, b in zip(bounds, bounds[1:]):  # within the text between added tokens only
            found.update(a + match.start() for match in tables.literal_split.finditer(text[a:b]))
        last = 0
        for cut in sorted(found):
            if cut - last >= min_chars and len(text) - cut >= min_chars:
                cuts.append(cut)
                last = cut
    ends = [0] + cuts + [len(text)]
    return tuple(text[a:b] for a, b in zip(ends, ends[1:]) if b > a)
