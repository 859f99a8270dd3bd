"""Tiny local assets for a CPU run: a byte-level BPE tokenizer with ChatML, a 2-layer random Qwen2, a math parquet.

Nothing is downloaded. The tokenizer is byte-level BPE over the 256 byte symbols (no merges) plus the ChatML special
tokens: transformers 5 rebuilds Qwen2 tokenizers as byte-level BPE, so a character-level vocabulary would not
round-trip through ``AutoTokenizer``. The parquet follows verl's format (``data_source="openai/gsm8k"`` so verl's
default rule reward applies).

``task="parity"`` builds the miniature's task instead (``examples/cpu_miniature.sh``): "is n odd? answer 1 or 0",
graded by :mod:`.reward` on the first ``0``/``1`` in the response, and a tiny model whose output layer favours the
tokens ``0``, ``1`` and ``<|im_end|>`` (:data:`PARITY_LOGIT_BIAS`), so that about 40% of its samples are right by
chance from the first step: groups with some but not all rollouts verified, so SC-GRPO's weighting and SDPO's
sibling reprompting run. The random math model never answers correctly, so neither would run on it.
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

ASSETS_VERSION = 2

TASKS = ("math", "parity")
PARITY_SOURCE = "tiny_parity"
DIGIT_SOURCE = "tiny_find_digit"  # the learning task (scgrpo_verl.cpu_backend.learning)
"""``data_source`` of the parity task (graded by :func:`scgrpo_verl.cpu_backend.reward.compute_score`)."""

CHANCE_LEVELS = {PARITY_SOURCE: 0.5}
"""The accuracy of guessing per ``data_source`` (the parity answer is 0 or 1); ``scgrpo-verl report`` draws it."""

PARITY_LOGIT_BIAS = {"0": 5.3, "1": 5.3, "<|im_end|>": 3.6}
"""Logit offsets of the parity model's output layer: P('0' or '1') ~ 0.55 and P(end) ~ 0.06 per position."""

_BIAS_DIM_VALUE = 1.0  # embedding value on hidden dim 0 for every token: after the final RMSNorm h[0] ~ sqrt(hidden)


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


#: the tiny Qwen2 of the CPU runs (:func:`build_model`); the unit tests' model (``tests/conftest.py``) is smaller
TINY_QWEN2 = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512)


def tiny_qwen2(vocab_size: int, seed: int = 0, **config):
    """A randomly initialised float32 ``Qwen2ForCausalLM`` (in memory, untied embeddings): :data:`TINY_QWEN2`
    with ``config`` overriding or adding ``Qwen2Config`` fields, the weights drawn after ``torch.manual_seed(seed)``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab_size, tie_word_embeddings=False,
                                        **{**TINY_QWEN2, **config})).float()


def build_model(folder: str | os.PathLike, vocab_size: int, eos_token_id: int, pad_token_id: int, seed: int = 0,
                logit_bias: dict[int, float] | None = None):
    """Save a randomly initialised 2-layer Qwen2 (hidden 64, :func:`tiny_qwen2`) in float32.

    ``logit_bias`` ({token id: offset}) gives the output layer a bias (Qwen2's lm_head has none): every token's
    embedding gets a constant on hidden dimension 0, which dominates the residual stream, so after the final RMSNorm
    h[0] is ~ sqrt(hidden) for any input; lm_head[v, 0] = offset / sqrt(hidden) then adds ~offset to token v's logit.
    """
    import torch
    from transformers import GenerationConfig

    model = tiny_qwen2(vocab_size, seed, bos_token_id=eos_token_id, eos_token_id=eos_token_id,
                       pad_token_id=pad_token_id, torch_dtype="float32")
    config = model.config
    if logit_bias:
        with torch.no_grad():
            model.model.embed_tokens.weight[:, 0] = _BIAS_DIM_VALUE
            scale = config.hidden_size ** 0.5
            model.lm_head.weight[:, 0] = 0.0
            for token_id, offset in logit_bias.items():
                model.lm_head.weight[token_id, 0] = offset / scale
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
                # a worked solution in data_prep's gsm8k layout (OPSD's teacher reads it)
                "extra_info": {"split": split, "index": i, "reference_solution": f"{a} + {b} = {a + b}.\n#### {a + b}"},
            }
        )
    return rows


def parity_rows(n: int = 16, split: str = "train", seed: int = 0) -> list[dict]:
    """``n`` prompts "Is <k> odd?" (answer ``1``/``0``) in verl's RL parquet layout, data_source :data:`PARITY_SOURCE`.

    Balanced: even rows are odd numbers, odd rows even numbers, so always answering one digit scores 0.5.
    """
    import random

    rng = random.Random(f"parity-{split}-{seed}")
    rows = []
    for i in range(n):
        k = 2 * rng.randint(1, 49) + (1 if i % 2 == 0 else 0)
        rows.append(
            {
                "data_source": PARITY_SOURCE,
                "prompt": [{"role": "user", "content": f"Is {k} odd? Answer 1 for yes, 0 for no."}],
                "ability": "parity",
                "reward_model": {"style": "rule", "ground_truth": str(k % 2)},
                # a worked solution, as data_prep's gsm8k keeps one (OPSD's teacher reads it)
                "extra_info": {"split": split, "index": i,
                               "reference_solution": f"{k} = 2 x {k // 2} + {k % 2}, so the answer is {k % 2}."},
            }
        )
    return rows


def write_parquet(rows: list[dict], path: str | os.PathLike) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return str(path)


def prepare_assets(folder: str | os.PathLike, n_train: int = 16, n_val: int = 8, seed: int = 0,
                   task: str = "math") -> AssetPaths:
    """Build (or reuse, if already complete) the model folder and the train/val parquets under ``folder``.

    ``task``: ``math`` (random model, arithmetic prompts: the README demo) or ``parity`` (the miniature's task and
    a model biased towards ``0`` / ``1``, see the module docstring).
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r}: expected one of {list(TASKS)}")
    root = Path(folder)
    model_dir = root / "tiny_qwen2"
    paths = AssetPaths(
        root=str(root),
        model=str(model_dir),
        train_file=str(root / "train.parquet"),
        val_file=str(root / "val.parquet"),
    )
    stamp = root / "assets.json"
    want = {"version": ASSETS_VERSION, "n_train": n_train, "n_val": n_val, "seed": seed, "task": task}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return paths
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(model_dir)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    bias = None
    rows = math_rows
    if task == "parity":
        bias = {tokenizer.convert_tokens_to_ids(tokenizer.tokenize(t)[0] if t[0] != "<" else t): v
                for t, v in PARITY_LOGIT_BIAS.items()}
        rows = parity_rows
    build_model(model_dir, vocab_size=len(tokenizer), eos_token_id=eos, pad_token_id=pad, seed=seed, logit_bias=bias)
    write_parquet(rows(n_train, "train", seed), paths.train_file)
    write_parquet(rows(n_val, "test", seed), paths.val_file)
    stamp.write_text(json.dumps(want))
    return paths


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m scgrpo_verl.cpu_backend.assets",
                                     description="Build the CPU backend's tiny model, tokenizer and parquets.")
    parser.add_argument("--out", required=True, help="folder (reused when already built with the same options)")
    parser.add_argument("--task", choices=TASKS, default="math")
    parser.add_argument("--n-train", type=int, default=16)
    parser.add_argument("--n-val", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = prepare_assets(args.out, n_train=args.n_train, n_val=args.n_val, seed=args.seed, task=args.task)
    print(json.dumps(paths.__dict__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
