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

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# Qwen-style ChatML: a system message only when given; generation header '<|im_start|>assistant\n'.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

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
    """Train a tiny byte-level BPE, wrap it as ``PreTrainedTokenizerFast`` with ChatML, save it to ``tmp_dir``.

    Special tokens get the ids after the byte symbols and merges (as in Qwen); eos = ``<|im_end|>``,
    pad = ``<|endoftext|>``. Returns the tokenizer; ``AutoTokenizer.from_pretrained(tmp_dir)`` loads it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) + NUM_MERGES, initial_alphabet=alphabet, special_tokens=[], show_progress=False
    )
    tok.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.model_max_length = 1 << 20
    fast.save_pretrained(str(tmp_dir))
    return fast
