"""Sandbox throughput, before and after: programs/s of the sandbox as it was at ``--before`` (a git revision; the
hand-written namespace sandbox) and of the current one (bwrap), serial and with a pool sized to the cores, in one
run; plus bwrap's start-up cost per program.

Usage: python bench/sandbox_throughput.py [--n 100] [--workers N] [--before 7087683] [--rounds 2]

The old implementation is read with ``git show`` into a temporary folder and imported from there (nothing is
committed): ``scgrpo_verl/rewards/sandbox.py`` at revisions before the sandbox became a package, else every module of
``scgrpo_verl/rewards/sandbox/``. Runs alternate old/new for ``--rounds`` rounds so that load from other
processes on a shared machine hits both alike; the best round of each is printed. The programs are small
stdin/stdout solutions (sums, sorting, a short loop); every result is checked, so a broken sandbox cannot look
fast. The start-up cost is the mean time of an empty program in the sandbox minus that of the same interpreter
started bare (``python -I -B -S -c pass``), both serial.

Wall-clock programs/s depend on what else runs on the machine. Where this process can move itself into a fresh
cgroup (v2 ``cpu.stat`` or v1 ``cpuacct``), the bench also prints the CPU time per program of the whole process
tree (sandbox processes, bwrap and this process), which other load does not change, and the programs/s it
implies on idle cores (``cores / CPU per program``).
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
    """The sandbox at git revision ``rev`` (imported from a temporary folder), or ``None`` with a reason: the module
    ``sandbox.py`` of the revisions before the split, else the package ``sandbox/`` (its modules import each other
    when ``__init__`` runs, so nothing is read from the folder after that)."""
    def show(path: str) -> str:
        return subprocess.run(["git", "-C", REPO, "show", f"{rev}:{path}"], check=True, capture_output=True,
                              text=True).stdout

    folder = "scgrpo_verl/rewards/sandbox"
    try:
        try:
            files = {"sandbox_before.py": show(folder + ".py")}
        except subprocess.CalledProcessError:
            names = subprocess.run(["git", "-C", REPO, "ls-tree", "--name-only", f"{rev}:{folder}"], check=True,
                                   capture_output=True, text=True).stdout.split()
            files = {f"sandbox_before/{n}": show(f"{folder}/{n}") for n in names if n.endswith(".py")}
    except (OSError, subprocess.CalledProcessError) as exc:
        return None, f"git show {rev} failed: {exc}"
    with tempfile.TemporaryDirectory(prefix="scgrpo-bench-") as tmp:
        for name, text in files.items():
            os.makedirs(os.path.dirname(os.path.join(tmp, name)), exist_ok=True)
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
        package = os.path.join(tmp, "sandbox_before")
        if os.path.isdir(package):
            spec = importlib.util.spec_from_file_location("sandbox_before", os.path.join(package, "__init__.py"),
                                                          submodule_search_locations=[package])
        else:
            spec = importlib.util.spec_from_file_location("sandbox_before", package + ".py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["sandbox_before"] = module
        spec.loader.exec_module(module)
    return module, None


class CpuMeter:
    """CPU seconds used by this process and every descendant, read from a cgroup this process moves into."""

    def __init__(self) -> None:
        self.dir = self.home = self.file = None
        try:
            with open("/proc/self/cgroup") as f:
                own = dict(line.rstrip("\n").split(":", 2)[1:] for line in f)
            with open("/proc/mounts") as f:
                mounts = [line.split()[1:4] for line in f]
        except OSError:
            return
        for mnt, fstype, opts in mounts:
            if fstype == "cgroup2" and "" in own:
                rel, stat = own[""], "cpu.stat"
            elif fstype == "cgroup" and "cpuacct" in opts.split(","):
                rel = next((v for k, v in own.items() if "cpuacct" in k.split(",")), None)
                stat = "cpuacct.usage"
            else:
                continue
            if rel is None:
                continue
            home = mnt + rel.rstrip("/")
            new = f"{home}/scgrpo-bench-{os.getpid()}"
            try:
                os.mkdir(new)
                with open(f"{new}/cgroup.procs", "w") as f:
                    f.write(str(os.getpid()))
                self.dir, self.home, self.file = new, home, f"{new}/{stat}"
                self.read()
                return
            except OSError:
                self.close()
                try:
                    os.rmdir(new)
                except OSError:
                    pass

    def read(self) -> float:
        with open(self.file) as f:
            text = f.read()
        if self.file.endswith("cpu.stat"):
            return int(dict(line.split() for line in text.splitlines())["usage_usec"]) / 1e6
        return int(text) / 1e9

    def close(self) -> None:
        if self.dir is None:
            return
        try:
            with open(f"{self.home}/cgroup.procs", "w") as f:
                f.write(str(os.getpid()))
            os.rmdir(self.dir)
        except OSError:
            pass
        self.dir = None


LIMITS = dict(wall_time_s=10, memory_mb=256, max_processes=4)
"""Limits of the bench's small programs: the current ``run_batch`` runs as many at once as fit their worst-case
memory (``sandbox.memory_bound_mb``) into the available memory, and the default limits (16 x 1 GiB address
spaces) would fit one at a time on a small host."""


def timed(module, jobs, workers: int, **kwargs) -> float:
    """Seconds to run ``jobs`` with ``workers`` threads; raises if any program fails or answers wrong."""
    t0 = time.perf_counter()
    results = module.run_batch([(s, i) for s, i, _ in jobs], module.SandboxLimits(**LIMITS),
                               max_workers=workers, **kwargs)
    dt = time.perf_counter() - t0
    for (_, _, expect), res in zip(jobs, results):
        if res.status != "ok" or res.stdout.strip() != expect:
            raise RuntimeError(f"benchmark program failed: {res}")
    return dt


def startup_cost(n: int, meter: CpuMeter) -> dict:
    """Serial means over ``n`` runs of an empty program in bwrap and of the bare interpreter: wall seconds, and
    CPU seconds where ``meter`` works."""
    exe = os.path.realpath(sys.executable)
    out = {}
    for name, run in (("bwrap", lambda: sandbox.run_program("pass", mode="bwrap")),
                      ("bare", lambda: subprocess.run([exe, "-I", "-B", "-S", "-c", "pass"], check=True))):
        run()
        cpu0 = meter.read() if meter.dir else 0.0
        t0 = time.perf_counter()
        for _ in range(n):
            run()
        out[name] = ((time.perf_counter() - t0) / n, (meter.read() - cpu0) / n if meter.dir else None)
    return out


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
    meter = CpuMeter()
    best: dict[tuple[str, str], float] = {}
    cpu: dict[str, float] = {}
    try:
        for _ in range(args.rounds):
            for name, (module, kw) in sides.items():
                for label, workers in (("serial", 1), ("parallel", args.workers)):
                    c0 = meter.read() if meter.dir else 0.0
                    dt = timed(module, jobs, workers, **kw)
                    if meter.dir:
                        cpu[name] = min(cpu.get(name, float("inf")), (meter.read() - c0) / args.n)
                    best[name, label] = min(best.get((name, label), float("inf")), dt)
        startup = startup_cost(20, meter)
    finally:
        meter.close()
    import psutil

    bound = sandbox.memory_bound_mb(sandbox.SandboxLimits(**LIMITS))
    fitted = sandbox.batch_workers(bound, psutil.virtual_memory().available >> 20, sandbox.default_workers(),
                                   args.workers)
    print(f"programs: {args.n}; workers: {args.workers} asked, {fitted} run at once after the memory fit "
          f"({bound} MiB bound per run); cores: {os.cpu_count()}; load average: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    old_mode = old.isolation_mode() if old is not None else None
    print(f"before: {args.before} ({old_mode} mode)" if old is not None else f"before: not measured ({why})")
    print(f"after:  working tree ({mode} mode)")
    print(f"{'':28}{'before':>10}{'after':>10}{'after/before':>14}")
    for label in ("serial", "parallel"):
        after = args.n / best["after", label]
        before = args.n / best["before", label] if old is not None else float("nan")
        print(f"{label + ' programs/s':28}{before:10.1f}{after:10.1f}{after / before:14.2f}   (wall clock, best of "
              f"{args.rounds})")
    if cpu:
        b, a = cpu.get("before", float("nan")), cpu["after"]
        print(f"{'CPU ms per program':28}{1e3 * b:10.1f}{1e3 * a:10.1f}{b / a:14.2f}   (whole process tree)")
        cores = args.workers
        print(f"{'=> programs/s on ' + str(cores) + ' idle cores':28}{cores / b:10.1f}{cores / a:10.1f}")
    else:
        print("CPU per program: not measured (this process cannot move into a cgroup of its own)")
    (bw_wall, bw_cpu), (bare_wall, bare_cpu) = startup["bwrap"], startup["bare"]
    line = (f"bwrap start-up per program: {1e3 * (bw_wall - bare_wall):.1f} ms wall (empty program "
            f"{1e3 * bw_wall:.1f} ms in bwrap, {1e3 * bare_wall:.1f} ms bare interpreter)")
    if bw_cpu is not None:
        line += f"; {1e3 * (bw_cpu - bare_cpu):.1f} ms CPU ({1e3 * bw_cpu:.1f} vs {1e3 * bare_cpu:.1f})"
    print(line)


if __name__ == "__main__":
    main()
