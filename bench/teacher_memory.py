"""Extra peak memory of the self-teacher in one actor-update micro-batch: today's hidden-state path against the
landed logits path, measured side by side in fresh child processes.

Usage: python bench/teacher_memory.py [--tokens 8192] [--vocab 151936] [--hidden 256] [--before-tokens 1024]

Both variants start from what verl's forward already holds (the student's last hidden states (N_t, H) and, for the
landed path, its logits) and end after the backward of sum_t w_t KL(p_t || q_t) (SDPG's term):
- ``after`` (this code): the teacher's last hidden states (N_t, H) and the fused linear kernel on both sides'
  hidden states (one chunk of fp32 (rows, V) work, the (N_t, H) and (V, H) gradients);
- ``before`` (landed 89b652a): the teacher's fp32 logits (N_t, V) (``.float()`` of the teacher forward's logits),
  the ``logits[rows]`` copy of the student's, and the logits-form kernel's (N_t, V) gradient buffer.
Peak = the child's peak resident-set growth above its inputs (large allocations mmapped, peak reset after the inputs
exist). The landed path is measured at ``--before-tokens`` (its buffers scale with N_t: at 8k x 152k each fp32 one
is 4.6 GiB) and scaled linearly to ``--tokens``; the line says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from divergence import _peak_bytes, _reset_peak, _rss_bytes  # noqa: E402  (the same peak-RSS method)


def child(variant: str, tokens: int, vocab: int, hidden: int) -> None:
    from scgrpo_verl.algos.fused_divergence import Projection, full_vocab_divergence, fused_linear_divergence

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    weight = (torch.randn(vocab, hidden, generator=g) / hidden**0.5).requires_grad_(True)
    student_hidden = torch.randn(tokens, hidden, generator=g).requires_grad_(True)
    teacher_hidden = student_hidden.detach() + 0.5 * torch.randn(tokens, hidden, generator=g)
    weights = torch.rand(tokens, generator=g)
    if variant == "before":
        student_logits = (student_hidden @ weight.T).detach().requires_grad_(True)  # the engine's, already there
    base = _rss_bytes()
    _reset_peak()
    if variant == "after":
        loss, _ = fused_linear_divergence(Projection(student_hidden, weight), Projection(teacher_hidden, weight),
                                          weights, "reverse_kl")
        loss.backward()
    else:
        with torch.no_grad():
            teacher = (teacher_hidden @ weight.T).float()  # the landed teacher forward's fp32 logits
        rows = torch.arange(tokens)
        student = student_logits[rows]  # the landed logits[rows] copy
        values = full_vocab_divergence(student, teacher, "reverse_kl")  # its (N_t, V) gradient buffer
        (values * weights).sum().backward()
    print(json.dumps({"peak_bytes": _peak_bytes() - base}))


def measure(variant: str, tokens: int, vocab: int, hidden: int) -> int:
    command = [sys.executable, __file__, "--child", variant, "--tokens", str(tokens), "--vocab", str(vocab),
               "--hidden", str(hidden)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8192, help="N_t, teacher tokens in the micro-batch")
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--before-tokens", type=int, default=1024, help="N_t for the landed path (scaled up)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.tokens, args.vocab, args.hidden)
        return
    gib = 2.0**30
    one_buffer = args.tokens * args.vocab * 4
    after = measure("after", args.tokens, args.vocab, args.hidden)
    before_small = measure("before", args.before_tokens, args.vocab, args.hidden)
    before = before_small * args.tokens / args.before_tokens
    print(f"N_t={args.tokens} V={args.vocab} H={args.hidden}: one fp32 (N_t, V) buffer = {one_buffer / gib:.2f} GiB")
    print(f"after  (hidden states, fused kernel): extra peak {after / gib:.2f} GiB = {after / one_buffer:.2f} (N_t, V) "
          f"buffers")
    print(f"before (landed logits path): extra peak {before_small / gib:.2f} GiB at N_t={args.before_tokens}, "
          f"scaled to N_t={args.tokens}: {before / gib:.2f} GiB = {before / one_buffer:.2f} (N_t, V) buffers")
    print(f"after / before: {after / before:.3f}; no (N_t, V) teacher buffer: "
          f"{'yes' if after < 0.5 * one_buffer else 'NO'}")


if __name__ == "__main__":
    main()
