"""Full-vocabulary divergence kernels against plain autograd: peak memory, time and gradients, side by side.

Usage: python bench/divergence.py [--anchors 2048x32768x256,1024x151936x256] [--kinds forward_kl,reverse_kl,jsd]
                                  [--repeats 3] [--chunk-mib 64]

For each anchor T x V x H and divergence kind it runs, forward + backward of sum_t w_t D_t:
- ``naive``: hidden states -> both sides' [T, V] logits -> log_softmax -> divergence, plain autograd (fp32);
- ``fused``: :func:`scgrpo_verl.algos.divergence.fused_linear_divergence` (chunks sized in bytes, gradient
  formed in the forward);
- ``logits``: :func:`~scgrpo_verl.algos.divergence.full_vocab_divergence` on given [T, V] logits (the kernel the
  actor update runs on the engine's student logits) against the same plain autograd on logits.

Peak memory is each variant's peak resident-set growth above its inputs, measured in a fresh child process
(peak reset after the inputs exist; CPU: torch's allocator is invisible to tracemalloc) whose large allocations are all mmapped
(``MALLOC_MMAP_THRESHOLD_``), so that freed buffers leave the resident set; time is the best of ``--repeats``
runs in that child, in CPU seconds of the process (``--clock cpu``, robust to a loaded machine) or wall seconds.
The gradients of the kernels are compared with the plain-autograd ones on the same inputs. Goal (issue 7):
fused <= 0.16x naive peak memory and <= 1.0x naive time at both anchors.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> None:
    """Reset the kernel's peak resident set (VmHWM) to the current one (Linux: /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _peak_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _naive_values(student_logits, teacher_logits, kind, alpha):
    log_p = torch.log_softmax(student_logits.float(), -1)
    log_q = torch.log_softmax(teacher_logits.float(), -1)
    if kind == "forward_kl":
        return (log_q.exp() * (log_q - log_p)).sum(-1)
    if kind == "reverse_kl":
        return (log_p.exp() * (log_p - log_q)).sum(-1)
    log_m = torch.logaddexp(log_p + torch.log1p(torch.tensor(-alpha)), log_q + torch.log(torch.tensor(alpha)))
    return (1 - alpha) * (log_p.exp() * (log_p - log_m)).sum(-1) + alpha * (log_q.exp() * (log_q - log_m)).sum(-1)


def _inputs(tokens: int, vocab: int, hidden: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(vocab, hidden, generator=g) / hidden**0.5).requires_grad_(True)
    student = torch.randn(tokens, hidden, generator=g).requires_grad_(True)
    teacher = student.detach() + 0.5 * torch.randn(tokens, hidden, generator=g)
    token_weights = torch.rand(tokens, generator=g)
    return weight, student, teacher, token_weights


def run_variant(variant: str, kind: str, tokens: int, vocab: int, hidden: int, chunk_bytes: int):
    """One forward + backward; returns the grads (for the check)."""
    from scgrpo_verl.algos.divergence import fused_linear_divergence, full_vocab_divergence

    alpha = 0.5 if kind == "jsd" else None
    weight, student, teacher, token_weights = _inputs(tokens, vocab, hidden)
    if variant in ("logits", "naive_logits"):
        with torch.no_grad():
            student_logits = (student @ weight.T).requires_grad_(True)
            teacher_logits = teacher @ weight.T
    base = _rss_bytes()
    _reset_peak()  # the inputs' own creation is not this variant's peak
    torch.manual_seed(0)
    clock = time.process_time if os.environ.get("BENCH_CLOCK", "cpu") == "cpu" else time.perf_counter
    start = clock()
    if variant == "naive":
        values = _naive_values(student @ weight.T, (teacher @ weight.T).detach(), kind, alpha)
        (values * token_weights).sum().backward()
        grads = (student.grad, weight.grad)
    elif variant == "fused":
        loss, _ = fused_linear_divergence(student, teacher, weight, token_weights, kind, alpha, chunk_bytes=chunk_bytes)
        loss.backward()
        grads = (student.grad, weight.grad)
    elif variant == "naive_logits":
        values = _naive_values(student_logits, teacher_logits, kind, alpha)
        (values * token_weights).sum().backward()
        grads = (student_logits.grad,)
    elif variant == "logits":
        values = full_vocab_divergence(student_logits, teacher_logits, kind, alpha, chunk_bytes=chunk_bytes)
        (values * token_weights).sum().backward()
        grads = (student_logits.grad,)
    else:
        raise ValueError(variant)
    elapsed = clock() - start
    return grads, elapsed, base


def child(args) -> None:
    torch.set_num_threads(args.threads)
    best = float("inf")
    peak = 0
    for _ in range(args.repeats):
        _, elapsed, base = run_variant(args.child, args.kind, args.tokens, args.vocab, args.hidden, args.chunk_bytes)
        best = min(best, elapsed)
        peak = max(peak, _peak_bytes() - base)
    print(json.dumps({"seconds": best, "peak_bytes": peak}))


def measure(variant, kind, tokens, vocab, hidden, args) -> dict:
    command = [sys.executable, __file__, "--child", variant, "--kind", kind, "--tokens", str(tokens), "--vocab",
               str(vocab), "--hidden", str(hidden), "--repeats", str(args.repeats), "--chunk-bytes",
               str(args.chunk_bytes), "--threads", str(args.threads)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", BENCH_CLOCK=args.clock)
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def gradient_error(kind, tokens, vocab, hidden, chunk_bytes) -> float:
    """Max relative difference of the kernels' gradients against plain autograd (same inputs)."""
    worst = 0.0
    for kernel, reference in (("fused", "naive"), ("logits", "naive_logits")):
        got, _, _ = run_variant(kernel, kind, tokens, vocab, hidden, chunk_bytes)
        expected, _, _ = run_variant(reference, kind, tokens, vocab, hidden, chunk_bytes)
        for a, b in zip(got, expected):
            worst = max(worst, float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--anchors", default="2048x32768x256,1024x151936x256", help="T x V x H, comma separated")
    parser.add_argument("--kinds", default="forward_kl,reverse_kl,jsd")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-mib", type=float, default=160)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child (1: robust to load)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="reverse_kl", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--hidden", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--chunk-bytes", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.chunk_bytes is None:
        args.chunk_bytes = int(args.chunk_mib * (1 << 20))
    if args.child:
        child(args)
        return
    print(f"{'T x V x H':>18} {'kind':>10} | {'fused/naive mem':>15} {'fused/naive time':>16} | "
          f"{'logits/naive mem':>16} {'logits/naive time':>17} | {'grad rel err':>12} | goal")
    all_met = True
    for anchor in args.anchors.split(","):
        tokens, vocab, hidden = (int(x) for x in anchor.split("x"))
        for kind in args.kinds.split(","):
            naive = measure("naive", kind, tokens, vocab, hidden, args)
            fused = measure("fused", kind, tokens, vocab, hidden, args)
            naive_logits = measure("naive_logits", kind, tokens, vocab, hidden, args)
            logits = measure("logits", kind, tokens, vocab, hidden, args)
            mem = fused["peak_bytes"] / naive["peak_bytes"]
            speed = fused["seconds"] / naive["seconds"]
            met = mem <= 0.16 and speed <= 1.0
            all_met &= met
            error = gradient_error(kind, min(tokens, 256), vocab, hidden, args.chunk_bytes)
            print(f"{anchor:>18} {kind:>10} | {mem:15.3f} {speed:16.3f} | "
                  f"{logits['peak_bytes'] / naive_logits['peak_bytes']:16.3f} "
                  f"{logits['seconds'] / naive_logits['seconds']:17.3f} | {error:12.2e} | "
                  f"{'met' if met else 'NOT met'} (naive {naive['peak_bytes'] / 2**20:.0f} MiB, {naive['seconds']:.2f} s)")
    print("goal (fused <= 0.16x memory and <= 1.0x time at every anchor):", "met" if all_met else "NOT met")


if __name__ == "__main__":
    main()
