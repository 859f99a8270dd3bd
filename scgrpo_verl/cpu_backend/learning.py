"""A task the tiny CPU model learns in a few dozen RL steps ("find the digit"), and the warm start that sets it up.

    python -m scgrpo_verl.cpu_backend.learning --out DIR   # DIR/tiny_qwen2, DIR/train.parquet, DIR/val.parquet

The task: "Find the digit in: qk7zt" -> ``7`` (graded by :func:`scgrpo_verl.cpu_backend.reward.grade_digit` on the
first digit of the response). A 2-layer model represents the rule easily (attend to the one digit token and copy it),
so the question is only how likely the policy is to use it. (A rule at a fixed distance instead, "the last digit of
4827", stayed on the loss plateau of random guessing for 400 supervised steps in our trials, at lr 3e-3 and 1e-2;
presumably the tiny model's rotary positions barely resolve a distance of ~40 tokens.)

The warm start (:func:`warm_start`, supervised, one torch thread, no downloads; 104 s measured on a shared 2-core
host, about 3 minutes when that host was overloaded) trains the random tiny Qwen2 of :mod:`.assets` in two phases
(:data:`WARM_STEPS`): first to copy the digit from every prompt, then on two kinds of examples:

* student prompts, labelled with the right digit with probability :data:`WARM_CORRECT` and with a uniformly random
  digit otherwise, so that the model learns a *mixture*: it samples the right digit about
  ``WARM_CORRECT + (1 - WARM_CORRECT) / 10`` of the time (about 30%; measured 0.28 on the held-out prompts) and a
  random digit otherwise. RL only has to move probability mass onto a rule the model already computes, which a few
  dozen steps on a handful of prompts do, and which carries over to held-out prompts;
* teacher prompts of the three self-teacher methods (:mod:`scgrpo_verl.teacher.templates`'s defaults: SDPO's
  reprompt with a verified sibling's answer and/or the grader's feedback, SDPG's hint, SC-GRPO's reference in the
  system message), always labelled with the right digit: the model learns to *read* the context, so a teacher that
  sees a verified sibling or the reference answer is far more confident than the student (measured: 0.96 on the
  right digit for each of the five teacher prompt kinds), and its next-token distribution differs from the
  student's where the student is wrong (what SDPO and SDPG distil, and what SC-GRPO's divergence weighting
  measures).
"""

from __future__ import annotations

import json
import os
import random
import string
import sys
from pathlib import Path

from .assets import DIGIT_SOURCE, AssetPaths, build_model, build_tokenizer, write_parquet  # noqa: F401 (DIGIT_SOURCE:
# the task's data_source, graded by scgrpo_verl.cpu_backend.reward.compute_score; tests read it from here too)

WARM_CORRECT = 0.22
"""Probability that a warm-start student example carries the right digit (else a uniformly random digit)."""

WARM_STEPS = (200, 150)
"""Steps of the warm start's two phases (copy everywhere; then student prompts relabelled, see the module doc)."""

LEARNING_VERSION = 1


def digit_question(letters: str, digit: int) -> str:
    """"Find the digit in: qk7zt" (the digit at position ``len(letters) // 2``; positions vary with the letters)."""
    cut = len(letters) // 2
    return f"Find the digit in: {letters[:cut]}{digit}{letters[cut:]}"


def _letters(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 6)))


def digit_rows(n_train: int, n_val: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Train and val prompts "Find the digit in: <letters with one digit>" (disjoint between the splits) in verl's RL
    parquet layout. Answers cycle through 0-9 so that every digit is equally represented."""
    rng = random.Random(f"digit-{seed}")
    used: set[int] = set()
    splits = []
    for split, n in (("train", n_train), ("test", n_val)):
        rows = []
        for i in range(n):
            question = digit_question(_letters(rng), i % 10)
            while question in used:
                question = digit_question(_letters(rng), i % 10)
            used.add(question)
            rows.append({
                "data_source": DIGIT_SOURCE,
                "prompt": [{"role": "user", "content": question}],
                "ability": "digit",
                "reward_model": {"style": "rule", "ground_truth": str(i % 10)},
                "extra_info": {"split": split, "index": i},
            })
        splits.append(rows)
    return splits[0], splits[1]


def _teacher_prompts(question: str, answer: str, templates, rng: random.Random) -> list[list[dict]]:
    """The teacher prompts of the three methods for one question whose right answer is ``answer``."""
    from scgrpo_verl.teacher.templates import sc_grpo_teacher_messages, sdpg_teacher_messages, sdpo_teacher_messages

    from .reward import grade_digit

    user = [{"role": "user", "content": question}]
    wrong = str((int(answer) + rng.randint(1, 9)) % 10)
    feedback = grade_digit(wrong, answer)["feedback"]
    return [
        sdpo_teacher_messages(user, answer, None, templates),
        sdpo_teacher_messages(user, None, feedback, templates),
        sdpo_teacher_messages(user, answer, feedback, templates),
        sdpg_teacher_messages(user, answer, templates),
        sc_grpo_teacher_messages(user, answer, templates),
    ]


def warm_start_examples(n: int, seed: int = 0, correct: float = WARM_CORRECT, teacher_fraction: float = 0.3
                        ) -> list[tuple[list[dict], str]]:
    """``n`` (chat messages, target digit) pairs: student prompts whose label is right with probability ``correct``
    (else a uniformly random digit), and teacher prompts (``teacher_fraction`` of them), always right."""
    from scgrpo_verl.settings import TemplateConfig

    rng = random.Random(f"warm-{seed}")
    templates = TemplateConfig()
    out = []
    for _ in range(n):
        digit = rng.randint(0, 9)
        answer = str(digit)
        question = digit_question(_letters(rng), digit)
        if rng.random() < teacher_fraction:
            out.append((rng.choice(_teacher_prompts(question, answer, templates, rng)), answer))
        else:
            label = answer if rng.random() < correct else str(rng.randint(0, 9))
            out.append(([{"role": "user", "content": question}], label))
    return out


def _encode(tokenizer, messages, target: str) -> tuple[list[int], int]:
    from scgrpo_verl.teacher.templates import chat_prompt_ids

    prompt = chat_prompt_ids(tokenizer, messages)
    response = tokenizer.encode(target, add_special_tokens=False) + [tokenizer.eos_token_id]
    return prompt + response, len(prompt)


def warm_start(model, tokenizer, steps: int = 150, correct: float = WARM_CORRECT, teacher_fraction: float = 0.3,
               batch_size: int = 32, lr: float = 3e-3, seed: int = 0, log_every: int = 0) -> list[float]:
    """Supervised training in place on :func:`warm_start_examples` (AdamW, cross-entropy on the response tokens
    only, linear warm-up and decay); returns the losses."""
    import torch

    torch.manual_seed(seed)
    examples = [_encode(tokenizer, m, t)
                for m, t in warm_start_examples(steps * batch_size, seed, correct, teacher_fraction)]
    pad = tokenizer.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20) * (1 - s / steps))
    model.train()
    losses = []
    for step in range(steps):
        chunk = examples[step * batch_size:(step + 1) * batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (ids, start) in enumerate(chunk):  # right padding
            input_ids[row, :len(ids)] = torch.tensor(ids)
            labels[row, start:len(ids)] = torch.tensor(ids[start:])
            attention[row, :len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"[warm-start] step {step + 1}/{steps}: loss {sum(losses[-log_every:]) / log_every:.3f}",
                  file=sys.stderr, flush=True)
    model.eval()
    return losses


def answer_probabilities(model, tokenizer, messages_list, answers) -> list[float]:
    """Probability the model gives the right digit as its first response token, per (messages, answer)."""
    import torch

    from scgrpo_verl.teacher.templates import chat_prompt_ids

    out = []
    with torch.no_grad():
        for messages, answer in zip(messages_list, answers):
            ids = torch.tensor([chat_prompt_ids(tokenizer, messages)])
            probs = model(input_ids=ids).logits[0, -1].float().softmax(-1)
            out.append(float(probs[tokenizer.encode(str(answer), add_special_tokens=False)[0]]))
    return out


def prepare_learning_assets(folder: str | os.PathLike, n_train: int = 32, n_val: int = 32, seed: int = 0,
                            warm_steps: tuple[int, int] = WARM_STEPS, log_every: int = 0) -> AssetPaths:
    """Build (or reuse, if already built with the same options) the warm-started model and the task's parquets."""
    import torch

    root = Path(folder)
    model_dir = root / "tiny_qwen2"
    paths = AssetPaths(root=str(root), model=str(model_dir), train_file=str(root / "train.parquet"),
                       val_file=str(root / "val.parquet"))
    stamp = root / "assets.json"
    want = {"version": LEARNING_VERSION, "task": "find_digit", "n_train": n_train, "n_val": n_val, "seed": seed,
            "warm_steps": list(warm_steps), "warm_correct": WARM_CORRECT}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return paths
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(model_dir, model_max_length=512)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model = build_model(model_dir, vocab_size=len(tokenizer), eos_token_id=eos, pad_token_id=pad, seed=seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model gains nothing from more, and the host is shared
    try:
        # phase 1: copy the digit everywhere (student and teacher prompts); phase 2: student prompts relabelled
        # with mostly random digits, teacher prompts still right
        warm_start(model, tokenizer, steps=warm_steps[0], correct=1.0, seed=seed, log_every=log_every)
        warm_start(model, tokenizer, steps=warm_steps[1], correct=WARM_CORRECT, seed=seed + 1, log_every=log_every)
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(str(model_dir), safe_serialization=True)
    train, val = digit_rows(n_train, n_val, seed)
    write_parquet(train, paths.train_file)
    write_parquet(val, paths.val_file)
    stamp.write_text(json.dumps(want))
    return paths


def run_overrides(assets: AssetPaths, method: str, seed: int, lr: float = 1e-3, test_freq: int = 2,
                  val_samples: int = 4) -> list[str]:
    """Hydra overrides of a learning run (``scgrpo-verl cpu-run``, after its CPU overrides): the assets, 8 prompts x 8
    rollouts per step in one update, short responses, ``seed`` for the data order, the rollouts' sampling and
    SC-GRPO's draws, and validation before training and every ``test_freq`` steps (``val_samples`` samples per
    held-out prompt at temperature 1). SDPG's beta is beta_base throughout (no warm-up / decay over a short run)."""
    overrides = [
        f"actor_rollout_ref.model.path={assets.model}",
        f"data.train_files={assets.train_file}",
        f"data.val_files={assets.val_file}",
        "data.train_batch_size=8",
        "actor_rollout_ref.rollout.n=8",
        "data.max_response_length=8",
        "actor_rollout_ref.actor.ppo_mini_batch_size=8",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=16",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16",
        f"actor_rollout_ref.actor.optim.lr={lr}",
        f"data.seed={seed}",
        f"actor_rollout_ref.rollout.seed={seed}",
        f"trainer.test_freq={test_freq}",
        "trainer.val_before_train=True",
        f"actor_rollout_ref.rollout.val_kwargs.n={val_samples}",
        "actor_rollout_ref.rollout.val_kwargs.do_sample=True",
        "actor_rollout_ref.rollout.val_kwargs.temperature=1.0",
    ]
    from scgrpo_verl.methods import is_method

    if is_method(method):  # the plugin's methods (grpo / dapo configs have no self_teacher)
        overrides.append(f"self_teacher.sc_grpo.seed={seed}")
    return overrides + list(TASK_OVERRIDES.get(method, ()))


#: per-config overrides of the 20-step task: SDPG's beta(k) at its peak from step 1 (its paper warms up over 50)
TASK_OVERRIDES = {"sdpg": ("self_teacher.sdpg.warmup_steps=0", "self_teacher.sdpg.decay_steps=0")}


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m scgrpo_verl.cpu_backend.learning",
                                     description="Build the warm-started tiny model and the find-the-digit task's "
                                                 "parquets (examples/cpu_learning.sh).")
    parser.add_argument("--out", required=True, help="folder (reused when already built with the same options)")
    parser.add_argument("--n-train", type=int, default=32)
    parser.add_argument("--n-val", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warm-steps", type=int, nargs=2, default=list(WARM_STEPS), metavar=("COPY", "MIX"))
    parser.add_argument("--print-overrides", nargs=2, metavar=("METHOD", "SEED"),
                        help="after building, print a learning run's Hydra overrides (one a line) instead of the paths")
    parser.add_argument("--lr", type=float, default=1e-3, help="with --print-overrides (default: %(default)s)")
    parser.add_argument("--test-freq", type=int, default=2, help="with --print-overrides (default: %(default)s)")
    args = parser.parse_args(argv)
    paths = prepare_learning_assets(args.out, n_train=args.n_train, n_val=args.n_val, seed=args.seed,
                                    warm_steps=tuple(args.warm_steps), log_every=50)
    if args.print_overrides:
        method, seed = args.print_overrides
        print("\n".join(run_overrides(paths, method, int(seed), args.lr, args.test_freq)))
    else:
        print(json.dumps(paths.__dict__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
