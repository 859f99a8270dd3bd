"""Sandbox throughput, before and after: programs/s of the sandbox as it was at ``--before`` (a git revision; the
hand-written namespace sandbox) and of the current one (bwrap), serial and with a pool sized to the cores, in one
run; plus bwrap's start-up cost per program.

Usage: python bench/sandbox_throughput.py [--n 100] [--workers N] [--before 7087683] [--rounds 2]

The old implementation is read with ``git show <rev>:scgrpo_verl/rewards/sandbox.py`` into a temporary folder and
imported from there (nothing is committed). Runs alternate old/new for ``--rounds`` rounds so that load from other
processes on a shared machine hits both alike; the best round of each is printed. The programs are small
stdin/stdout solutions (sums, sorting, a short loop); every result is checked, so a broken sandbox cannot look
fast. The start-up cost is the mean time of an empty program in the sandbox minus that of the same interpreter
started bare (``python -I -B -c pass``), both serial.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

from scgrpo_verl.rewards import sandbox

PROGRAMS = [
    ("a, b = map(int, input().split())\nprint(a + b)\n", "{i} {j}\n", lambda i, j: str(i + j)),
    ("xs = sorted(map(int, input().split()))\nprint(*xs)\n", "{j} {i} 0\n",
     lambda i, j: " ".join(map(str, sorted([j, i, 0])))),
    ("n = int(input())\nprint(sum(k * k for k in range(n)))\n", "{i}\n", lambda i, j: str(sum(k * k for k in range(i)))),
]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_jobs(n: int) -> list[tuple[str, str, str]]:
    """``n`` (source, stdin, expected stdout) triples."""
    jobs = []
    for k in range(n):
        src, stdin, expect = PROGRAMS[k % len(PROGRAMS)]
        i, j = k, 2 * k + 1
        jobs.append((src, stdin.format(i=i, j=j), expect(i, j)))
    return jobs


def load_old(rev: str):
    """The sandbox module at git revision ``rev`` (imported from a temporary file), or ``None`` with a reason."""
    try:
        text = subprocess.run(["git", "-C", REPO, "show", f"{rev}:scgrpo_verl/rewards/sandbox.py"], check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        return None, f"git show {rev} failed: {exc}"
    with tempfile.TemporaryDirectory(prefix="scgrpo-bench-") as tmp:
        path = os.path.join(tmp, "sandbox_before.py")
        with open(path, "w") as f:
            f.write(text)
        spec = importlib.util.spec_from_file_location("sandbox_before", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["sandbox_before"] = module
        spec.loader.exec_module(module)
    return module, None


def timed(module, jobs, workers: int, **kwargs) -> float:
    """Seconds to run ``jobs`` with ``workers`` threads; raises if any program fails or answers wrong."""
    t0 = time.perf_counter()
    results = module.run_batch([(s, i) for s, i, _ in jobs], module.SandboxLimits(wall_time_s=10),
                               max_workers=workers, **kwargs)
    dt = time.perf_counter() - t0
    for (_, _, expect), res in zip(jobs, results):
        if res.status != "ok" or res.stdout.strip() != expect:
            raise RuntimeError(f"benchmark program failed: {res}")
    return dt


def startup_cost(n: int) -> tuple[float, float]:
    """(mean seconds of an empty program in bwrap, mean seconds of the bare interpreter), serial."""
    exe = os.path.realpath(sys.executable)
    t0 = time.perf_counter()
    for _ in range(n):
        res = sandbox.run_program("pass", mode="bwrap")
        assert res.ok, res
    boxed = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run([exe, "-I", "-B", "-c", "pass"], check=True)
    return boxed, (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--workers", type=int, default=sandbox.default_workers())
    ap.add_argument("--before", default="7087683", help="git revision of the 'before' sandbox")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    mode = sandbox.select_mode()
    old, why = load_old(args.before)
    jobs = make_jobs(args.n)
    sides = {"after": (sandbox, {})}
    if old is not None:
        sides["before"] = (old, {})
    for module, kw in sides.values():
        timed(module, jobs[:4], 1, **kw)  # warm-up (page cache, probe)
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):
        for name, (module, kw) in sides.items():
            for label, workers in (("serial", 1), ("parallel", args.workers)):
                dt = timed(module, jobs, workers, **kw)
                best[name, label] = min(best.get((name, label), float("inf")), dt)
    print(f"programs: {args.n}; workers: {args.workers}; cores: {os.cpu_count()}; load average: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    old_mode = old.isolation_mode() if old is not None else None
    print(f"before: {args.before} ({old_mode} mode)" if old is not None else f"before: not measured ({why})")
    print(f"after:  working tree ({mode} mode)")
    print(f"{'':10}{'before':>12}{'after':>12}{'after/before':>14}  (programs/s, best of {args.rounds})")
    for label in ("serial", "parallel"):
        after = args.n / best["after", label]
        before = args.n / best["before", label] if old is not None else float("nan")
        print(f"{label:10}{before:12.1f}{after:12.1f}{after / before:14.2f}")
    boxed, bare = startup_cost(20)
    print(f"bwrap start-up per program: {1e3 * (boxed - bare):.1f} ms (empty program {1e3 * boxed:.1f} ms in bwrap, "
          f"{1e3 * bare:.1f} ms bare interpreter)")


if __name__ == "__main__":
    main()
