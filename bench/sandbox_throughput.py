"""Sandbox throughput: 100 small test programs, serial vs a pool sized to the machine's cores.

Usage: python bench/sandbox_throughput.py [--n 100] [--workers N]

Prints programs/second for both runs, measured side by side in one process, and their ratio. The programs are
small stdin/stdout solutions (a mix of sums, sorting and a short loop); every result is checked, so a broken
sandbox cannot look fast.
"""

from __future__ import annotations

import argparse
import time

from scgrpo_verl.rewards import sandbox

PROGRAMS = [
    ("a, b = map(int, input().split())\nprint(a + b)\n", "{i} {j}\n", lambda i, j: str(i + j)),
    ("xs = sorted(map(int, input().split()))\nprint(*xs)\n", "{j} {i} 0\n", lambda i, j: " ".join(map(str, sorted([j, i, 0])))),
    ("n = int(input())\nprint(sum(k * k for k in range(n)))\n", "{i}\n", lambda i, j: str(sum(k * k for k in range(i)))),
]


def make_jobs(n: int) -> list[tuple[str, str, str]]:
    """``n`` (source, stdin, expected stdout) triples."""
    jobs = []
    for k in range(n):
        src, stdin, expect = PROGRAMS[k % len(PROGRAMS)]
        i, j = k, 2 * k + 1
        jobs.append((src, stdin.format(i=i, j=j), expect(i, j)))
    return jobs


def timed(jobs, workers: int) -> float:
    """Seconds to run ``jobs`` with ``workers`` threads; raises if any program fails or answers wrong."""
    t0 = time.perf_counter()
    results = sandbox.run_batch([(s, i) for s, i, _ in jobs], sandbox.SandboxLimits(wall_time_s=10), max_workers=workers)
    dt = time.perf_counter() - t0
    for (_, _, expect), res in zip(jobs, results):
        if res.status != "ok" or res.stdout.strip() != expect:
            raise RuntimeError(f"benchmark program failed: {res}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--workers", type=int, default=sandbox.default_workers())
    args = ap.parse_args()
    mode = sandbox.isolation_mode()
    jobs = make_jobs(args.n)
    timed(jobs[:4], 1)  # warm-up (page cache, probe)
    serial = timed(jobs, 1)
    parallel = timed(jobs, args.workers)
    print(f"isolation mode: {mode}; programs: {args.n}; workers: {args.workers}")
    print(f"serial:   {args.n / serial:7.1f} programs/s ({serial:.2f} s)")
    print(f"parallel: {args.n / parallel:7.1f} programs/s ({parallel:.2f} s)")
    print(f"parallel/serial throughput ratio: {serial / parallel:.2f}x")


if __name__ == "__main__":
    main()
