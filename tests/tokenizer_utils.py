"""A small tokenizer built locally for tests: byte-level BPE + ChatML specials + a Qwen-style chat template.

No hub access. The BPE is trained in milliseconds on a few sentences over the 256 byte symbols, so it has
real merges (a token prefix is not a character prefix) and round-trips any UTF-8 text. Byte-level, not
character-level: transformers 5 rebuilds Qwen2-style tokenizers as byte-level BPE.

    from tokenizer_utils import build_byte_level_tokenizer
    tok = build_byte_level_tokenizer(tmp_path)          # also saved under tmp_path
    AutoTokenizer.from_pretrained(tmp_path)             # loads the same tokenizer
"""

from __future__ import annotations

import os

TRAINING_TEXT = (
    "What is 2 + 3? The answer is 5.",
    "Solve the equation x + 4 = 10 for x, so x = 6.",
    "The quick brown fox jumps over the lazy dog.",
    "Correct solution: first add the numbers, then divide by two.",
    "Feedback: the test failed with an assertion error on line 3.",
    "def add(a, b):\n    return a + b\n",
    "Reference solution: the answer is 42.",
)
NUM_MERGES = 120


def build_byte_level_tokenizer(tmp_dir: str | os.PathLike):
    """The CPU backend's byte-level BPE + ChatML tokenizer with merges trained on TRAINING_TEXT, saved to ``tmp_dir``."""
    from scgrpo_verl.cpu_backend.assets import build_tokenizer

    return build_tokenizer(tmp_dir, TRAINING_TEXT, NUM_MERGES, model_max_length=1 << 20)
