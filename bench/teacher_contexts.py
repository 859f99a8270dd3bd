"""Teacher-context building: rollouts/second before (commit 7087683) and now, side by side in one run.

Usage: python bench/teacher_contexts.py [--prompts 256] [--n 8] [--tokens 2500] [--repeats 2] [--think 0.0]

The "before" builder is the landed one at commit 7087683, loaded from git at run time (``git show``) into a
temporary module; it is given each rollout's decoded text, as the trainer did (that decode is timed
separately). The new builder gets ``response_text=None`` and decodes what it needs itself. Rates are given
per wall-clock second and per CPU second of this process (the latter is less sensitive to other load on a
shared machine; the tokenizer's batch encode may use several threads). Both build
the same batch (256 prompts x 8 rollouts, ~2.5k-token multi-line responses ending in the eos token, a
mix of all / some / one / no verified rollouts per group) with a byte-level BPE + ChatML tokenizer built
locally with ``tokenizers`` (2,000 merges). Every teacher input is checked to be identical in both. Goal (issue 7):
>= 5,000 rollouts/s for every method; the last line says whether it was met.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEFORE_COMMIT = "7087683"
GOAL_PER_S = 5000  # issue 7: teacher contexts at >= 5,000 rollouts/s at 256 x 8, ~2.5k-token responses
WORDS = ("the answer is step add numbers carefully equation solve first then divide by two we get so "
         "multiply both sides subtract check value total sum product remainder because therefore").split()


def load_before():
    """The landed context module at BEFORE_COMMIT, as a temporary module."""
    source = subprocess.run(
        ["git", "-C", REPO, "show", f"{BEFORE_COMMIT}:scgrpo_verl/teacher/context.py"],
        check=True, capture_output=True, text=True,
    ).stdout
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "context_before.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("context_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def response_text(rng: random.Random, tokens: int, think: bool) -> str:
    lines, total = [], 0
    while total < tokens:
        n = rng.randint(6, 18)
        line = " ".join(rng.choice(WORDS) for _ in range(n))
        line = f"Step {len(lines) + 1}: {line}, {rng.randint(0, 999)} + {rng.randint(0, 99)} = {rng.randint(0, 9999)}."
        lines.append(line)
        total += n + 14
    text = "\n".join(lines) + f"\nThe answer is {rng.randint(0, 99)}."
    return f"<think>\nLet me think about {rng.choice(WORDS)}.\n</think>\n\n{text}" if think else text


def make_batch(tok, prompts: int, n: int, tokens: int, think: float, seed: int = 0):
    rng = random.Random(seed)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    rows = []
    for g in range(prompts):
        question = f"Problem {g}: " + " ".join(rng.choice(WORDS) for _ in range(40)) + "?"
        p = rng.choice((0.0, 0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0))
        for i in range(n):
            text = response_text(rng, tokens, rng.random() < think)
            ids = tok.encode(text, add_special_tokens=False) + [eos]
            rows.append(dict(uid=f"uid-{g:04d}", prompt=[{"role": "user", "content": question}], response_ids=ids,
                             score=float(rng.random() < p), privileged=f"The answer is {g}.", index=i))
    return rows


def tokenizer(folder: str, seed: int = 0):
    from scgrpo_verl.cpu_backend.assets import build_tokenizer

    rng = random.Random(seed)
    corpus = [response_text(rng, 400, False) for _ in range(40)]
    return build_tokenizer(folder, corpus, num_merges=2000, model_max_length=1 << 20)


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=2500)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--think", type=float, default=0.0, help="fraction of responses with a <think> block")
    args = parser.parse_args(argv)

    from scgrpo_verl.config import TeacherConfig
    from scgrpo_verl.teacher import context as after

    before = load_before()
    tok = tokenizer(tempfile.mkdtemp())
    rows = make_batch(tok, args.prompts, args.n, args.tokens, args.think)
    count = len(rows)
    mean_len = sum(len(r["response_ids"]) for r in rows) / count
    print(f"{count} rollouts ({args.prompts} prompts x {args.n}), mean response {mean_len:.0f} tokens, "
          f"tokenizer vocab {len(tok)}, torch threads {torch.get_num_threads()}")
    decode_s, texts = timed(lambda: [tok.decode(r["response_ids"], skip_special_tokens=True) for r in rows], 1)
    print(f"trainer-side decode of every response (needed before, not now): {decode_s:.2f} s "
          f"({count / decode_s:,.0f} rollouts/s)")
    after._byte_level_tables(tok)  # one-time per tokenizer (cached); timed apart
    print(f"load average (1 min) {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; wall-clock and CPU-time rates:")
    print(f"{'method':8s} {'before/s':>10s} {'after/s':>10s} {'speed-up':>9s}  {'before/cpu-s':>12s} "
          f"{'after/cpu-s':>12s} {'speed-up':>9s}  identical  fast demos / re-tokenised")
    slowest = float("inf")
    staged = []
    for method in ("sc_grpo", "sdpo", "sdpg"):
        config = TeacherConfig(use_privileged_context=method == "sdpg")

        def run(module, with_text):
            rollouts = []
            for r, text in zip(rows, texts):
                kwargs = dict(r)
                if module is before:
                    kwargs.pop("index")
                rollouts.append(module.Rollout(response_text=text if with_text else None, **kwargs))
            start, cpu = time.perf_counter(), time.process_time()
            ctx = module.build_teacher_contexts(rollouts, tok, method, config,
                                                generator=torch.Generator().manual_seed(0))
            return time.perf_counter() - start, time.process_time() - cpu, ctx

        t_before, c_before, old = min((run(before, True) for _ in range(args.repeats)), key=lambda x: x[0])
        t_after, c_after, new = min((run(after, False) for _ in range(args.repeats)), key=lambda x: x[0])
        same = old.teacher_input_ids == new.teacher_input_ids and old.sibling_index == new.sibling_index
        print(f"{method:8s} {count / t_before:10,.0f} {count / t_after:10,.0f} {t_before / t_after:8.1f}x  "
              f"{count / c_before:12,.0f} {count / c_after:12,.0f} {c_before / c_after:8.1f}x  "
              f"{str(same):9s}  {new.extra['fast_demonstrations']} / {new.extra['retokenized_demonstrations']}")
        if not same:
            sys.exit(f"{method}: the new builder's teacher inputs differ from the landed builder's")
        slowest = min(slowest, count / t_after)
        staged.append((method, new))
    print(f"goal (>= {GOAL_PER_S:,} rollouts/s wall-clock, every method): slowest {slowest:,.0f}/s,",
          "met" if slowest >= GOAL_PER_S else "NOT met")
    staging(rows, staged, args.repeats)


def staging(rows, staged, repeats: int) -> None:
    """The trainer's next step: the contexts as the nested ``teacher_input_ids`` tensor for TransferQueue.
    Before (landed at 4b23397): the builder's list inputs (prompt + response lists, materialised here as the
    landed builder did) through ``torch.as_tensor`` per row and ``torch.nested.as_nested_tensor``; now
    :func:`scgrpo_verl.trainer.teacher_input_tensor` (prompt ids + the response tensor, one concatenation)."""
    from scgrpo_verl.teacher.engine_forward import jagged
    from scgrpo_verl.trainer import teacher_input_tensor

    responses = jagged([torch.tensor(r["response_ids"]) for r in rows])
    students = jagged([torch.tensor([1, 2, 3]) for _ in rows])
    print("trainer staging of teacher_input_ids (nested tensor for TransferQueue):")
    print(f"{'method':8s} {'before s':>9s} {'now s':>7s} {'speed-up':>9s}  identical")
    for method, ctx in staged:
        def before():
            inputs = [torch.as_tensor(ids) if ids is not None else student
                      for ids, student in zip(ctx.teacher_input_ids, students.unbind())]
            return torch.nested.as_nested_tensor(inputs, layout=torch.jagged)

        t_before, old = timed(before, repeats)
        t_now, new = timed(lambda: teacher_input_tensor(ctx.teacher_prompt_ids, responses, students), repeats)
        same = all(torch.equal(a, b) for a, b in zip(old.unbind(), new.unbind()))
        print(f"{method:8s} {t_before:9.2f} {t_now:7.2f} {t_before / t_now:8.1f}x  {same}")
        if not same:
            sys.exit(f"{method}: staged teacher inputs differ")


if __name__ == "__main__":
    main()
