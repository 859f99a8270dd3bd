"""Full-vocabulary divergence kernels against plain autograd: peak memory, time and gradients, side by side.

Usage: python bench/divergence.py [--anchors 2048x32768x256,1024x151936x256] [--kinds forward_kl,reverse_kl,jsd]
                                  [--repeats 3] [--chunk-mib 64]
       python bench/divergence.py --device cuda [--table-anchors 4096x151936x4096,16384x151936x4096]

``--device cuda`` prints the GPU table instead (bf16 lm_head and hidden states, forward + backward of
sum_t w_t D_t, median of ``--repeats``, peak memory above the inputs): the matmul floor (the four lm_head products
a fused linear loss needs: both sides' logits, the hidden and the weight gradients), plain autograd on
``(h @ W.T).float()``, ours with the device's chunk budget, and Liger-Kernel's fused linear JSD (Triton) and chunked
JSD (``torch.compile``) when ``liger_kernel`` imports (JSD rows only). ``--device cpu --table-anchors 64x512x32``
runs the same table on the CPU at a small shape (a dry run of the script).

For each anchor T x V x H and divergence kind it runs, forward + backward of sum_t w_t D_t:
- ``naive``: hidden states -> both sides' [T, V] logits -> log_softmax -> divergence, plain autograd (fp32);
- ``fused``: :func:`scgrpo_verl.algos.fused_divergence.fused_linear_divergence` (chunks sized in bytes, gradient
  formed in the forward);
- ``logits``: :func:`~scgrpo_verl.algos.fused_divergence.full_vocab_divergence` on given [T, V] logits (the kernel the
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
    from scgrpo_verl.algos.fused_divergence import Projection, fused_linear_divergence, full_vocab_divergence

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
        loss, _ = fused_linear_divergence(Projection(student, weight), Projection(teacher, weight), token_weights,
                                          kind, alpha, chunk_bytes=chunk_bytes)
        loss.backward()
        grads = (student.grad, weight.grad)
    elif variant == "fused_topk":  # SDPO's top-k (+ tail) on the student's 100 ids, same kernel
        loss, _ = fused_linear_divergence(Projection(student, weight), Projection(teacher, weight), token_weights,
                                          kind, alpha, topk=100, chunk_bytes=chunk_bytes)
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


def _device_time(fn, device, repeats: int) -> dict:
    """Median seconds of ``fn`` over ``repeats`` after a warm-up, and the peak memory above what existed before."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else 0
    return {"s": sorted(times)[len(times) // 2], "gib": peak / 2**30}


def device_table(args) -> None:
    """The GPU table (module docstring): floor, plain autograd, ours, Liger, per anchor and kind."""
    from scgrpo_verl.algos.fused_divergence import Projection, fused_linear_divergence

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
        from liger_kernel.transformers import LigerFusedLinearJSD
    except ImportError:
        LigerFusedLinearJSDLoss = LigerFusedLinearJSD = None
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, {dtype}, "
          f"forward + backward, median of {args.repeats}; Liger: {'yes' if LigerFusedLinearJSD else 'not installed'}")
    print(f"{'T x V x H':>20} {'kind':>10} | {'floor':>8} | {'autograd':>17} | {'ours':>17} {'/floor':>6} "
          f"{'/autograd':>9} | {'Liger Triton':>17} | {'Liger chunked':>17}")
    for anchor in args.table_anchors.split(","):
        tokens, vocab, hidden = (int(x) for x in anchor.split("x"))
        g = torch.Generator(device=device).manual_seed(0)
        weight = (torch.randn(vocab, hidden, generator=g, device=device) / hidden**0.5).to(dtype).requires_grad_(True)
        student = torch.randn(tokens, hidden, generator=g, device=device).to(dtype).requires_grad_(True)
        teacher = (student.detach().float() + 0.5 * torch.randn(tokens, hidden, generator=g, device=device)).to(dtype)
        weights = torch.rand(tokens, generator=g, device=device)

        def floor():
            with torch.no_grad():
                logits = torch.cat([student, teacher]) @ weight.T  # both sides' logits in one product
                grad = logits[:tokens]
                _ = grad @ weight  # hidden gradient
                _ = grad.T @ student  # weight gradient

        floor_time = _device_time(floor, device, args.repeats)["s"]
        for kind in args.kinds.split(","):
            alpha = 0.5 if kind == "jsd" else None

            def autograd():
                weight.grad = student.grad = None
                values = _naive_values(student @ weight.T, (teacher @ weight.T).detach(), kind, alpha)
                (values * weights).sum().backward()

            def ours():
                weight.grad = student.grad = None
                loss, _ = fused_linear_divergence(Projection(student, weight), Projection(teacher, weight), weights,
                                                  kind, alpha)
                loss.backward()

            rows = {"autograd": _device_time(autograd, device, args.repeats),
                    "ours": _device_time(ours, device, args.repeats)}
            if kind == "jsd" and LigerFusedLinearJSD is not None:
                triton_jsd, chunked_jsd = LigerFusedLinearJSD(jsd_beta=0.5), LigerFusedLinearJSDLoss(beta=0.5)

                def liger_triton():
                    weight.grad = student.grad = None
                    triton_jsd(student, weight, teacher, weight.detach()).backward()

                def liger_chunked():
                    weight.grad = student.grad = None
                    chunked_jsd(student, weight, teacher, weight.detach()).backward()

                for name, fn in (("liger_triton", liger_triton), ("liger_chunked", liger_chunked)):
                    try:
                        rows[name] = _device_time(fn, device, args.repeats)
                    except Exception as error:  # a Liger version with another signature: say so, keep the table
                        print(f"  {name}: {type(error).__name__}: {error}")

            def cell(name):
                row = rows.get(name)
                return f"{row['s'] * 1e3:8.1f} ms {row['gib']:5.2f} GiB" if row else f"{'-':>17}"

            print(f"{anchor:>20} {kind:>10} | {floor_time * 1e3:5.1f} ms | {cell('autograd')} | {cell('ours')} "
                  f"{rows['ours']['s'] / floor_time:6.2f} {rows['ours']['s'] / rows['autograd']['s']:9.2f} | "
                  f"{cell('liger_triton')} | {cell('liger_chunked')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda: the GPU table (module docstring)")
    parser.add_argument("--table-anchors", default="4096x151936x4096,16384x151936x4096",
                        help="T x V x H of the --device table")
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
    if args.device:
        device_table(args)
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
    topk_met = True
    for anchor in args.anchors.split(","):  # issue 14: SDPO's top-k(+tail) no slower than the exact kernel
        tokens, vocab, hidden = (int(x) for x in anchor.split("x"))
        full = measure("fused", "jsd", tokens, vocab, hidden, args)
        topk = measure("fused_topk", "jsd", tokens, vocab, hidden, args)
        ratio = topk["seconds"] / full["seconds"]
        topk_met &= ratio <= 1.0
        print(f"{anchor:>18} top-k 100 + tail / full JSD (fused): time {ratio:.3f}, memory "
              f"{topk['peak_bytes'] / full['peak_bytes']:.3f}")
    print("goal (top-k time <= full-vocabulary time):", "met" if topk_met else "NOT met")


if __name__ == "__main__":
    main()
