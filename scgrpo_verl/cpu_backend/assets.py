"""Tiny local assets for a CPU run: a byte-level BPE tokenizer with ChatML, a 2-layer random Qwen2, a math parquet.

Nothing is downloaded. The tokenizer is byte-level BPE over the 256 byte symbols (no merges) plus the ChatML special
tokens: transformers 5 rebuilds Qwen2 tokenizers as byte-level BPE, so a character-level vocabulary would not
round-trip through ``AutoTokenizer``. The parquet follows verl's format (``data_source="openai/gsm8k"`` so verl's
default rule reward applies).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

ASSETS_VERSION = 1


@dataclass(frozen=True)
class AssetPaths:
    root: str
    model: str
    train_file: str
    val_file: str


def build_tokenizer(folder: str | os.PathLike, training_text: Sequence[str] = (), num_merges: int = 0,
                    model_max_length: int = 1024):
    """Save a byte-level BPE tokenizer (256 byte symbols + ChatML specials) loadable by ``AutoTokenizer``.

    Without ``training_text`` it has no merges (one token per byte); with it, ``num_merges`` merges are
    trained on the text in milliseconds, so that a token prefix is not a character prefix. The special
    tokens get the ids after the bytes and merges (as in Qwen); eos = ``<|im_end|>``, pad = ``<|endoftext|>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    assert len(alphabet) == 256
    if training_text:
        tok = Tokenizer(models.BPE(fuse_unk=False))
    else:
        tok = Tokenizer(models.BPE(vocab={symbol: i for i, symbol in enumerate(alphabet)}, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    if training_text:
        trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + num_merges, initial_alphabet=alphabet,
                                      special_tokens=[], show_progress=False)
        tok.train_from_iterator(list(training_text), trainer=trainer)
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
    fast.model_max_length = model_max_length
    fast.save_pretrained(str(folder))
    return fast


def build_model(folder: str | os.PathLike, vocab_size: int, eos_token_id: int, pad_token_id: int, seed: int = 0):
    """Save a randomly initialised 2-layer Qwen2 (hidden 64) in float32."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        torch_dtype="float32",
    )
    model = Qwen2ForCausalLM(config).float()
    model.generation_config = GenerationConfig(
        eos_token_id=[eos_token_id, pad_token_id], pad_token_id=pad_token_id, bos_token_id=eos_token_id
    )
    model.save_pretrained(str(folder), safe_serialization=True)
    return model


def math_rows(n: int = 16, split: str = "train", seed: int = 0) -> list[dict]:
    """``n`` small arithmetic word problems in verl's RL parquet layout."""
    import random

    rng = random.Random(f"{split}-{seed}")
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        question = f"What is {a} + {b}? End with #### and the answer."
        rows.append(
            {
                "data_source": "openai/gsm8k",
                "prompt": [
                    {
                        "role": "user",
                        "content": question,
                    }
                ],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": str(a + b)},
                "extra_info": {"split": split, "index": i},
            }
        )
    return rows


def write_parquet(rows: list[dict], path: str | os.PathLike) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return str(path)


def prepare_assets(folder: str | os.PathLike, n_train: int = 16, n_val: int = 8, seed: int = 0) -> AssetPaths:
    """Build (or reuse, if already complete) the model folder and the train/val parquets under ``folder``."""
    root = Path(folder)
    model_dir = root / "tiny_qwen2"
    paths = AssetPaths(
        root=str(root),
        model=str(model_dir),
        train_file=str(root / "train.parquet"),
        val_file=str(root / "val.parquet"),
    )
    stamp = root / "assets.json"
    want = {"version": ASSETS_VERSION, "n_train": n_train, "n_val": n_val, "seed": seed}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return paths
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(model_dir)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    build_model(model_dir, vocab_size=len(tokenizer), eos_token_id=eos, pad_token_id=pad, seed=seed)
    write_parquet(math_rows(n_train, "train", seed), paths.train_file)
    write_parquet(math_rows(n_val, "test", seed), paths.val_file)
    stamp.write_text(json.dumps(want))
    return paths
