"""Teacher-context building on realistic text: rollouts/second before (commit 89b652a) and now, per kind of text and
per method, side by side in one run.

Usage: python bench/teacher_contexts.py [--prompts 256] [--n 8] [--min-tokens 1000] [--max-tokens 4000]
                                        [--think 0.2] [--style qwen] [--kinds code,indented,latex,mixed] [--repeats 2]

Responses come from :mod:`scgrpo_verl.cpu_backend.realistic_text`: Python code with indentation, indented markdown,
LaTeX and mixed-language text (CJK, accents, emoji, combining marks), 1-4k tokens each, a fraction opening with a
``<think>`` block, most ending in the eos token and some cut at a random token (a length-capped response). The
tokenizer is a byte-level BPE trained locally on the same kinds of text (Qwen2's NFC normaliser and split pattern by
default; ``--style gpt2`` for GPT-2's), with ChatML. Each kind is one batch of ``--prompts`` groups x ``--n``
rollouts with a mix of all / some / one / no verified rollouts per group, SDPO with feedback on failures and SDPG
with a hint per prompt. The "before" builder is the one landed at commit 89b652a, loaded from git at run time into a
temporary module; both get ``response_text=None`` (the trainer's input). Every teacher input is checked to be the
same in both. Rates are per wall-clock second and per CPU second of this process (less sensitive to other load on a
shared machine). Goal (issue 14): >= 5,000 rollouts/s for every method on every kind; the last two lines say
whether the slowest met it per wall-clock second and per CPU second.
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
BEFORE_COMMIT = "89b652a"
GOAL_PER_S = 5000  # issue 14: teacher contexts at >= 5,000 rollouts/s on realistic text, every method
METHODS = ("sc_grpo", "sdpo", "sdpg")


def load_before():
    """The landed context module at BEFORE_COMMIT, as a temporary module."""
    source = subprocess.run(
        ["git", "-C", REPO, "show", f"{BEFORE_COMMIT}:scgrpo_verl/teacher/context.py"],
        check=True, capture_output=True, text=True,
    ).stdout
    path = os.path.join(tempfile.mkdtemp(), "context_before.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("context_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def make_batch(tok, kind: str, prompts: int, n: int, lo: int, hi: int, think: float, seed: int = 0):
    from scgrpo_verl.cpu_backend.realistic_text import response_text

    rng = random.Random(f"{kind}-{seed}")
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    texts, meta = [], []
    for g in range(prompts):
        question = f"Problem {g}: " + response_text(rng, kind, 60).strip()
        p = rng.choice((0.0, 0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0))
        for i in range(n):
            length = rng.randint(lo, hi)
            texts.append(response_text(rng, kind, length, think=rng.random() < think))
            meta.append((g, i, question, float(rng.random() < p), length))
    encoded = tok(texts, add_special_tokens=False)["input_ids"]
    rows = []
    for ids, (g, i, question, score, length) in zip(encoded, meta):
        ids = list(ids[:length]) if rng.random() < 0.15 else list(ids) + [eos]  # length-capped: no eos
        rows.append(dict(uid=f"uid-{g:04d}", prompt=[{"role": "user", "content": question}], response_ids=ids,
                         score=score, index=i, privileged=f"The answer is {g}; see {kind} above.",
                         feedback="" if score else f"Wrong answer on test {i}:\n  expected {g}, got {i}"))
    return rows


def run(module, rows, tok, method: str, repeats: int):
    from scgrpo_verl.methods import get_method
    from scgrpo_verl.settings import TeacherConfig

    config = TeacherConfig(use_privileged_context=method == "sdpg", use_feedback=method == "sdpo")
    best = None
    for _ in range(repeats):
        rollouts = [module.Rollout(response_text=None, **r) for r in rows]
        start, cpu = time.perf_counter(), time.process_time()
        # the landed module at BEFORE_COMMIT takes the method's name, today's the registered method
        chosen = method if hasattr(module, "METHODS") else get_method(method)
        ctx = module.build_teacher_contexts(rollouts, tok, chosen, config, generator=torch.Generator().manual_seed(0))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        if best is None or wall < best[0]:
            best = (wall, cpu, ctx)
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--min-tokens", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=4000)
    parser.add_argument("--think", type=float, default=0.2, help="fraction of responses opening with a <think> block")
    parser.add_argument("--style", choices=("qwen", "gpt2"), default="qwen")
    parser.add_argument("--kinds", default="code,indented,latex,mixed")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-before", action="store_true", help="time the current builder only")
    args = parser.parse_args(argv)

    from scgrpo_verl.cpu_backend.realistic_text import KINDS, build_realistic_tokenizer
    import scgrpo_verl.teacher as after
    from scgrpo_verl.teacher.splice import byte_level_tables

    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        sys.exit(f"--kinds: unknown kind {unknown[0]!r}; allowed: {','.join(KINDS)}")
    before = None if args.no_before else load_before()
    tok = build_realistic_tokenizer(tempfile.mkdtemp(), args.style)
    byte_level_tables(tok)  # one-time per tokenizer (cached); timed apart
    if before is not None:
        before._byte_level_tables(tok)
    print(f"tokenizer: byte-level BPE ({args.style} pre-tokeniser), vocab {len(tok)}; torch threads "
          f"{torch.get_num_threads()}; load average (1 min) {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'kind':9s} {'method':8s} {'before/s':>9s} {'after/s':>9s} {'speed-up':>8s}  {'before/cpu-s':>12s} "
          f"{'after/cpu-s':>11s}  identical  fast / re-tokenised demos")
    slowest = slowest_cpu = (float("inf"), None)
    for kind in kinds:
        rows = make_batch(tok, kind, args.prompts, args.n, args.min_tokens, args.max_tokens, args.think)
        count = len(rows)
        mean = sum(len(r["response_ids"]) for r in rows) / count
        print(f"-- {kind}: {count} rollouts ({args.prompts} x {args.n}), mean response {mean:.0f} tokens")
        for method in METHODS:
            t_after, c_after, new = run(after, rows, tok, method, args.repeats)
            if before is not None:
                t_before, c_before, old = run(before, rows, tok, method, args.repeats)
                same = list(old.teacher_input_ids) == list(new.teacher_input_ids) and old.sibling_index == new.sibling_index
                cells = (f"{count / t_before:9,.0f} {count / t_after:9,.0f} {t_before / t_after:7.1f}x  "
                         f"{count / c_before:12,.0f} {count / c_after:11,.0f}  {str(same):9s}")
            else:
                same = True
                cells = f"{'-':>9s} {count / t_after:9,.0f} {'-':>8s}  {'-':>12s} {count / c_after:11,.0f}  {'-':9s}"
            print(f"{kind:9s} {method:8s} {cells}  {new.extra['fast_demonstrations']} / "
                  f"{new.extra['retokenized_demonstrations']}")
            if not same:
                sys.exit(f"{kind} / {method}: the new builder's teacher inputs differ from the landed builder's")
            slowest = min(slowest, (count / t_after, f"{kind} / {method}"))
            slowest_cpu = min(slowest_cpu, (count / c_after, f"{kind} / {method}"))
    print(f"goal (>= {GOAL_PER_S:,} rollouts/s wall-clock, every kind and method): slowest {slowest[0]:,.0f}/s "
          f"({slowest[1]}),", "met" if slowest[0] >= GOAL_PER_S else "NOT met")
    print(f"per CPU second of this process (load-insensitive): slowest {slowest_cpu[0]:,.0f}/s ({slowest_cpu[1]}),",
          "met" if slowest_cpu[0] >= GOAL_PER_S else "NOT met")


if __name__ == "__main__":
    main()
