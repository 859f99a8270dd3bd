"""Realistic model responses for the teacher-context bench and tests, and a tokenizer trained on them (offline).

Four kinds of text (:data:`KINDS`), as reasoning / coding models write them:

- ``code``: Python in a markdown fence between prose lines, with nested indentation, comments, docstrings,
  string literals and blank lines;
- ``indented``: markdown prose with headings, nested bullet and numbered lists, block quotes and indented
  continuation lines;
- ``latex``: math with inline ``$...$``, display ``\\[ ... \\]`` and ``align`` environments, ``\\frac``, sub- and
  superscripts, and line breaks ``\\\\``;
- ``mixed``: mixed-language prose: English, French / German / Spanish with accents, Chinese, Japanese, Korean,
  Russian, Greek, emoji, and the occasional decomposed accent (a combining mark).

:func:`response_text` writes one response of about ``tokens`` tokens (optionally opening with a ``<think>``
block); :func:`build_realistic_tokenizer` trains a byte-level BPE (thousands of merges, so tokens span several
bytes and whole CJK characters) with Qwen2's pre-tokeniser and NFC normaliser (``style="qwen"``) or GPT-2's
(``style="gpt2"``), plus the ChatML specials and template of :func:`scgrpo_verl.cpu_backend.assets.build_tokenizer`.
"""

from __future__ import annotations

import os
import random

KINDS = ("code", "indented", "latex", "mixed")
# Qwen2 / Qwen2.5 / Qwen3's pre-tokeniser pattern (as in their tokenizer.json)
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# approximate characters per token of each kind under a few thousand merges (sizes the generated text)
_CHARS_PER_TOKEN = {"code": 4.0, "indented": 4.6, "latex": 2.3, "mixed": 4.0}

_WORDS = ("the value of each term is bounded so we can sum them and compare with the previous estimate "
          "note that this function returns a list whose length depends on the input size first consider "
          "case where number divides both sides then apply induction hypothesis carefully check edge").split()
_NAMES = ("total", "count", "values", "result", "index", "node", "left", "right", "memo", "graph", "queue", "seen",
          "best", "dp", "prefix", "cost", "items", "key", "data", "parent")
_LATIN = ("Ünïcode résumé naïve café déjà vu", "Grüße aus München, schön", "el niño pequeño, ¿qué tal?",
          "façade, œuvre, garçon", "Smørrebrød og blåbær", "Zażółć gęślą jaźń", "İstanbul'da çay içtik")
_CJK = ("答案是五。", "我们先计算左边，再比较右边的值。", "因此，结果为：", "这个函数返回一个列表。", "注意边界情况！",
        "次に、両辺を比較します。", "この関数はリストを返す。", "しかし、境界に注意してください。",
        "따라서 답은 5입니다.", "먼저 왼쪽을 계산합니다.")
_OTHER = ("Поэтому ответ равен пяти.", "Сначала вычислим сумму.", "Άρα η απάντηση είναι πέντε.", "π ≈ 3.14159, √2 ≈ 1.414",
          "✓ done 🎉", "📌 Note:", "🙂", "→ next step ⇒ result", "≤ ≥ ≠ ∞ ∑ ∫", "e\u0301te\u0301 (decomposed accents)")


def _words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi)))


def _code_block(rng: random.Random) -> list[str]:
    name, args = rng.choice(_NAMES), ", ".join(rng.sample(_NAMES, rng.randint(1, 3)))
    lines = [f"def solve_{name}({args}):", f'    """{_words(rng, 4, 10).capitalize()}."""']
    depth = 1
    for _ in range(rng.randint(4, 14)):
        pad = "    " * depth
        a, b = rng.sample(_NAMES, 2)
        choice = rng.random()
        if choice < 0.2 and depth < 4:
            lines.append(f"{pad}for {a} in range(len({b})):")
            depth += 1
        elif choice < 0.35 and depth < 4:
            lines.append(f"{pad}if {a} > {b} and not {rng.choice(_NAMES)}:")
            depth += 1
        elif choice < 0.45:
            lines.append(f"{pad}# {_words(rng, 3, 9)}")
        elif choice < 0.55:
            lines.append("")
        elif choice < 0.65 and depth > 1:
            depth -= 1
            lines.append(f"{'    ' * depth}else:")
            depth += 1
        elif choice < 0.75:
            lines.append(f"{pad}{a} = {{'{b}': {rng.randint(0, 99)}, \"k\": [{a}[i] for i in {b}]}}")
        elif choice < 0.85:
            lines.append(f'{pad}print(f"{a} = {{{a}}}, {b}={{{b}!r}}")')
        else:
            lines.append(f"{pad}{a} += {b}[{rng.randint(0, 9)}] * {rng.randint(2, 7)}  # {_words(rng, 1, 4)}")
    lines.append(f"    return {rng.choice(_NAMES)}")
    return ["```python"] + lines + ["```"]


def _code(rng: random.Random) -> str:
    return ("\n".join(_code_block(rng)) + "\n"
            + f"\n{_words(rng, 8, 25).capitalize()}.\n" + ("\n" if rng.random() < 0.5 else ""))


def _indented(rng: random.Random) -> str:
    choice = rng.random()
    if choice < 0.15:
        return f"\n## {_words(rng, 2, 5).title()}\n\n"
    if choice < 0.45:
        return "  " * rng.randint(0, 3) + rng.choice("-*+") + f" {_words(rng, 4, 14)}\n"
    if choice < 0.6:
        return f"{rng.randint(1, 9)}. **{_words(rng, 1, 3)}**: {_words(rng, 5, 15)}\n   {_words(rng, 4, 10)}\n"
    if choice < 0.7:
        return f"> {_words(rng, 6, 16)}\n>\n"
    if choice < 0.8:
        return f"\t{_words(rng, 3, 8)}\n    {_words(rng, 3, 8)}\n"
    return f"{_words(rng, 10, 30).capitalize()}. {_words(rng, 5, 12)}, `{rng.choice(_NAMES)}`.\n\n"


def _latex(rng: random.Random) -> str:
    a, b, c = rng.sample("xyzabnk", 3)
    n = rng.randint(2, 12)
    choice = rng.random()
    if choice < 0.3:
        return f"Let ${a}_{{{n}}} = \\frac{{{b}^{n} + {c}}}{{{n}{a} - 1}}$, so {_words(rng, 3, 8)}.\n"
    if choice < 0.55:
        return (f"\\[\n  \\sum_{{{a}=1}}^{{{n}}} {a}^2 = \\frac{{{n}({n}+1)(2\\cdot {n}+1)}}{{6}} "
                f"= {n * (n + 1) * (2 * n + 1) // 6}\n\\]\n")
    if choice < 0.75:
        return ("\\begin{align*}\n"
                f"  {a}^2 + {b}^2 &= {c}^2 \\\\\n"
                f"  \\sqrt{{{a}^2 + {b}^2}} &\\le |{a}| + |{b}| \\quad \\text{{({_words(rng, 1, 3)})}} \\\\\n"
                f"  \\int_0^{{\\pi}} \\sin({n}{a})\\,d{a} &= \\left[-\\frac{{\\cos({n}{a})}}{{{n}}}\\right]_0^{{\\pi}}\n"
                "\\end{align*}\n")
    return (f"Therefore $\\boxed{{{rng.randint(0, 999)}}}$ when ${a} \\geq {n}$ and "
            f"${b} \\in \\mathbb{{Z}}$; {_words(rng, 4, 10)}.\n\n")


def _mixed(rng: random.Random) -> str:
    choice = rng.random()
    if choice < 0.35:
        return rng.choice(_CJK) + rng.choice(("", " ", "\n"))
    if choice < 0.55:
        return f"{_words(rng, 3, 10)} ({rng.choice(_LATIN)}) "
    if choice < 0.75:
        return rng.choice(_OTHER) + rng.choice((" ", "\n", ""))
    if choice < 0.85:
        return f"\n- {rng.choice(_CJK)} {rng.choice(_LATIN)}\n"
    return f"{_words(rng, 5, 12).capitalize()}. "


# each writes one piece of its kind; a response is pieces up to the wanted length
_WRITERS = {"code": _code, "indented": _indented, "latex": _latex, "mixed": _mixed}


def _fill(rng: random.Random, kind: str, chars: int) -> str:
    parts, size = [f"Here is {_words(rng, 3, 8)}:\n"] if kind == "code" else [], 0
    while size < chars:
        parts.append(_WRITERS[kind](rng))
        size += len(parts[-1])
    return "".join(parts)


def response_text(rng: random.Random, kind: str, tokens: int, think: bool = False) -> str:
    """One response of the given kind, about ``tokens`` tokens long (under a tokenizer of a few thousand merges);
    ``think``: it opens with a ``<think>`` block of the same kind."""
    if kind not in _WRITERS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    chars = int(tokens * _CHARS_PER_TOKEN[kind])
    text = _fill(rng, kind, chars)
    if think:
        text = f"<think>\n{_fill(rng, kind, chars // 8).strip()}\n</think>\n\n{text}"
    return text


def build_realistic_tokenizer(folder: str | os.PathLike, style: str = "qwen", num_merges: int = 6000, seed: int = 0):
    """A byte-level BPE with ``num_merges`` merges trained on every kind, ChatML specials and template, saved to
    ``folder``. ``style="qwen"``: Qwen2's NFC normaliser and split pattern (digits apart); ``"gpt2"``: GPT-2's."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from scgrpo_verl.cpu_backend.assets import CHATML_TEMPLATE, SPECIAL_TOKENS

    if style not in ("qwen", "gpt2"):
        raise ValueError(f"style must be 'qwen' or 'gpt2', got {style!r}")
    rng = random.Random(seed)
    corpus = [response_text(rng, kind, 600, think=rng.random() < 0.2) for kind in KINDS for _ in range(30)]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(fuse_unk=False))
    if style == "qwen":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + num_merges, initial_alphabet=alphabet,
                                  special_tokens=[], show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None,
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHATML_TEMPLATE
    fast.model_max_length = 1 << 20
    fast.save_pretrained(str(folder))
    return fast
