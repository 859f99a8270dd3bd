"""Process sandbox for model-written Python programs.

Each program runs in its own process (own session / process group) with:

* **resource limits** set with :func:`resource.setrlimit` in ``preexec_fn``: CPU seconds
  (``RLIMIT_CPU``), address space (``RLIMIT_AS``), processes (``RLIMIT_NPROC``), file size
  (``RLIMIT_FSIZE``), open files (``RLIMIT_NOFILE``), no core dumps (``RLIMIT_CORE``);
* a **wall-clock timeout**, after which the whole process group *and* every other process of the
  sandbox uid are SIGKILLed (so children that called ``setsid()`` do not escape);
* an **unprivileged, per-run uid** (root mode). ``RLIMIT_NPROC`` is not enforced for uid 0, so when
  the host runs as root the child drops to a random uid in ``[UID_BASE, UID_BASE + UID_SPAN)``;
  the per-uid process count then contains fork bombs, the child cannot signal host processes or
  read ``/proc/<host pid>/environ``, and it cannot write root-owned files;
* **no network**: a fresh network namespace (``unshare(CLONE_NEWNET)``) that only has a downed
  loopback, so neither ``127.0.0.1`` listeners of the host nor external addresses are reachable;
* a **private mount namespace**: ``/`` is re-mounted read-only, fresh small tmpfs are mounted on
  the world-writable directories (``/tmp``, ``/var/tmp``, ``/dev/shm``, ``/run/lock``) and on
  non-traversable ancestors of the interpreter (e.g. ``/root`` for a pyenv Python under
  ``/root/.pyenv``, which re-exposes only the interpreter and hides the rest of ``/root``);
* a **private working directory** (the only writable place, deleted afterwards);
* a **stripped environment** (``PATH``, ``LANG``/``LC_ALL``, ``HOME`` and thread-count caps only)
  and ``python -I -B`` (isolated mode: no ``PYTHON*`` variables, no user site, no cwd on
  ``sys.path``; no bytecode written).

Isolation modes (see :func:`isolation_mode`):

``"root"``
    euid 0 and ``unshare(CLONE_NEWNS | CLONE_NEWNET)`` works: everything above.
``"userns"``
    not root, but unprivileged user namespaces work: network + mount namespaces as above, same uid
    as the host (so ``RLIMIT_NPROC`` is set relative to the user's current process count and the
    child *can* signal same-uid host processes -- weaker; run the trainer as root or in a container).
``"audit"``
    no namespaces at all: a fallback that installs a :func:`sys.addaudithook` hook in the child
    refusing ``socket.*`` connect/bind/sendto, ``ctypes`` loading and subprocess creation. This is a
    best-effort in-interpreter guard, *not* a security boundary (documented, tested, and logged
    with a warning). Pass ``require_namespaces=True`` to :func:`run_program` to refuse it.

Tested on Linux only; other platforms are not supported.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import logging
import math
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Mapping, Sequence

logger = logging.getLogger(__name__)

__all__ = [
    "SandboxError",
    "SandboxLimits",
    "SandboxResult",
    "STATUSES",
    "isolation_mode",
    "run_program",
    "run_batch",
]

STATUSES = ("ok", "runtime_error", "compile_error", "timeout", "memory", "output_limit")

UID_BASE = 2_000_000
UID_SPAN = 1 << 20
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
PRIVATE_TMPFS_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
TMPFS_SIZE = "16m"

# Linux constants (<sched.h>, <sys/mount.h>)
CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program): bad configuration or missing kernel support."""


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits.

    Attributes:
        wall_time_s: wall-clock seconds before the process group is killed (status ``timeout``).
        cpu_time_s: CPU seconds (``RLIMIT_CPU``); ``None`` -> ``ceil(wall_time_s)``.
        memory_mb: address-space limit per process in MiB (``RLIMIT_AS``).
        max_processes: processes/threads the sandbox uid may own (``RLIMIT_NPROC``).
        max_file_size_mb: largest file the program may write, in MiB (``RLIMIT_FSIZE``).
        max_open_files: ``RLIMIT_NOFILE``.
        max_output_bytes: captured stdout cap; more output -> status ``output_limit``.
        stderr_tail_bytes: how many trailing bytes of stderr are kept.
    """

    wall_time_s: float = 5.0
    cpu_time_s: int | None = None
    memory_mb: int = 1024
    max_processes: int = 16
    max_file_size_mb: int = 16
    max_open_files: int = 64
    max_output_bytes: int = 1 << 20
    stderr_tail_bytes: int = 4096

    def __post_init__(self) -> None:
        for name in ("wall_time_s", "memory_mb", "max_processes", "max_file_size_mb", "max_open_files",
                     "max_output_bytes", "stderr_tail_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {getattr(self, name)!r}")
        if self.cpu_time_s is not None and self.cpu_time_s <= 0:
            raise ValueError(f"SandboxLimits.cpu_time_s must be > 0 or None, got {self.cpu_time_s!r}")

    @property
    def cpu_seconds(self) -> int:
        return int(self.cpu_time_s if self.cpu_time_s is not None else max(1, math.ceil(self.wall_time_s)))


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program.

    Attributes:
        status: one of :data:`STATUSES`.
        stdout: captured stdout (at most ``max_output_bytes``, UTF-8 decoded with replacement).
        stderr: the last ``stderr_tail_bytes`` of stderr.
        returncode: exit status (negative = killed by that signal; ``None`` if killed on timeout).
        wall_time_s: seconds from spawn to exit/kill.
        isolation: the isolation mode used (``root`` / ``userns`` / ``audit``).
        uid: the unprivileged uid the program ran as (``root`` mode), else ``None``.
    """

    status: str
    stdout: str
    stderr: str
    returncode: int | None
    wall_time_s: float
    isolation: str
    uid: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def feedback(self, max_lines: int = 6) -> str:
        """A short judge-style message for non-ok results ('' when ok)."""
        return describe_failure(self, max_lines=max_lines)


def last_lines(text: str, n: int) -> str:
    """The last ``n`` non-empty lines of ``text`` joined by newlines."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


def describe_failure(result: SandboxResult, max_lines: int = 6) -> str:
    """Judge-style message for a :class:`SandboxResult` ('' when ok)."""
    s = result.status
    if s == "ok":
        return ""
    if s == "timeout":
        return "Time limit exceeded."
    if s == "memory":
        return "Memory limit exceeded."
    if s == "output_limit":
        return "Output limit exceeded."
    tail = last_lines(result.stderr, max_lines)
    if s == "compile_error":
        return "Compilation error:\n" + tail
    if result.returncode is not None and result.returncode < 0:
        try:
            sig = signal.Signals(-result.returncode).name
        except ValueError:
            sig = str(-result.returncode)
        return f"Runtime error (killed by {sig})." + ("\n" + tail if tail else "")
    return f"Runtime error (exit code {result.returncode}):\n" + tail if tail else \
        f"Runtime error (exit code {result.returncode})."


# --------------------------------------------------------------------------- isolation probing


def _hidden_ancestors(path: str) -> list[tuple[str, str]]:
    """For each ancestor of ``path`` that 'others' cannot traverse, (ancestor, child component).

    E.g. ``/root/.pyenv/versions/3.11.7`` with ``/root`` mode 0700 -> ``[("/root", ".pyenv")]``.
    """
    out = []
    parts = os.path.realpath(path).strip("/").split("/")
    for i in range(1, len(parts)):
        anc = "/" + "/".join(parts[:i])
        if not os.stat(anc).st_mode & 0o001:
            out.append((anc, parts[i]))
    return out


def _interpreter_roots() -> list[str]:
    """Directories the child interpreter must be able to reach (executable, stdlib, venv)."""
    roots = {os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}
    return sorted(roots)


def _reexpose_plan() -> list[tuple[str, str]]:
    """Unique (non-traversable ancestor, child component) pairs to re-expose in the mount namespace."""
    plan: list[tuple[str, str]] = []
    for root in _interpreter_roots():
        for item in _hidden_ancestors(root):
            if item not in plan:
                plan.append(item)
    ancestors = [a for a, _ in plan]
    for a in ancestors:
        if any(b != a and a.startswith(b + "/") for b in ancestors):
            raise SandboxError(f"interpreter path has nested non-traversable directories {ancestors}; unsupported")
    return plan


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _make_preexec(mode: str, uid: int | None, limits: SandboxLimits, workdir: str, stage_dir: str,
                  plan: Sequence[tuple[str, str]], nproc_base: int) -> Callable[[], None]:
    """Build the ``preexec_fn`` run in the forked child before ``exec`` (no imports inside)."""
    workdir_b = workdir.encode()
    work_stage_b = os.path.join(stage_dir, "work").encode()
    mem = limits.memory_mb << 20
    fsize = max(limits.max_file_size_mb << 20, limits.max_output_bytes + 1)
    cpu = limits.cpu_seconds
    nproc = nproc_base + limits.max_processes
    nofile = limits.max_open_files
    plan_b = [(a.encode(), c.encode(), os.path.join(stage_dir, str(i)).encode()) for i, (a, c) in enumerate(plan)]
    tmpfs_dirs = [d.encode() for d in PRIVATE_TMPFS_DIRS if os.path.isdir(d)]
    tmpfs_opts = f"size={TMPFS_SIZE},mode=1777".encode()
    host_uid, host_gid = os.getuid(), os.getgid()

    def preexec() -> None:
        try:
            _setup()
        except BaseException as exc:  # report on the (already redirected) stderr, then fail the spawn
            os.write(2, f"sandbox preexec failed: {exc!r}\n".encode())
            raise

    def _setup() -> None:
        if mode in ("root", "userns"):
            flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC
            if mode == "userns":
                flags |= CLONE_NEWUSER
            _check(_libc.unshare(flags), "unshare")
            if mode == "userns":
                with open("/proc/self/setgroups", "w") as f:
                    f.write("deny")
                with open("/proc/self/uid_map", "w") as f:
                    f.write(f"{host_uid} {host_uid} 1")
                with open("/proc/self/gid_map", "w") as f:
                    f.write(f"{host_gid} {host_gid} 1")
            _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount rprivate /")
            # Stage the working directory and the interpreter directories hidden below non-traversable
            # ancestors, so they survive the read-only remount and the tmpfs mounts below.
            _check(_libc.mount(workdir_b, work_stage_b, None, MS_BIND, None), "stage workdir")
            work_fd = os.open(work_stage_b, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            for anc, child, stage in plan_b:
                _check(_libc.mount(anc + b"/" + child, stage, None, MS_BIND | MS_REC, None), "stage bind")
            _check(_libc.mount(None, b"/", None, MS_REMOUNT | MS_BIND | MS_RDONLY, None), "remount / ro")
            for anc, child, stage in plan_b:
                _check(_libc.mount(b"tmpfs", anc, b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=755"),
                       "tmpfs over hidden dir")
                os.mkdir(anc + b"/" + child, 0o755)
                _check(_libc.mount(stage, anc + b"/" + child, None, MS_BIND | MS_REC, None), "re-expose")
                _check(_libc.umount2(stage, MNT_DETACH), "unstage")
            for d in tmpfs_dirs:
                _check(_libc.mount(b"tmpfs", d, b"tmpfs", MS_NOSUID | MS_NODEV, tmpfs_opts), "private tmpfs")
            # Re-create the working directory at its original path (it may now lie inside a fresh tmpfs)
            # as the only writable mount.
            os.makedirs(workdir_b, 0o755, exist_ok=True)
            _check(_libc.mount(f"/proc/self/fd/{work_fd}".encode(), workdir_b, None, MS_BIND, None), "mount workdir")
            os.close(work_fd)
            os.chdir(workdir_b)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)

    return preexec


def _probe(mode: str) -> bool:
    """True if a trivial program runs under ``mode``."""
    try:
        res = _run(f"print({mode!r})", "", SandboxLimits(wall_time_s=20), mode)
    except (OSError, subprocess.SubprocessError, SandboxError) as exc:
        logger.debug("sandbox mode %s unavailable: %r", mode, exc)
        return False
    if res.status != "ok" or res.stdout.strip() != mode:
        logger.debug("sandbox mode %s probe failed: %s", mode, res)
        return False
    return True


@functools.lru_cache(maxsize=1)
def isolation_mode() -> str:
    """Strongest isolation mode that works on this host: ``root`` > ``userns`` > ``audit`` (cached)."""
    if not sys.platform.startswith("linux"):
        raise SandboxError(f"the sandbox supports Linux only, not {sys.platform}")
    candidates = ["root", "userns"] if os.geteuid() == 0 else ["userns"]
    for mode in candidates:
        if _probe(mode):
            return mode
    logger.warning(
        "scgrpo_verl sandbox: no namespace isolation available (euid=%d); falling back to the in-process "
        "audit-hook guard, which is NOT a security boundary", os.geteuid())
    return "audit"


# --------------------------------------------------------------------------- running

_AUDIT_BOOT = r'''
import sys
def _guard(event, args):
    if event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
                 "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "subprocess.Popen", "os.system", "os.exec",
                 "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg", "pty.spawn"):
        raise PermissionError(f"sandbox: {event} is not allowed")
sys.addaudithook(_guard)
del _guard
_src = open("main.py", encoding="utf-8").read()
try:
    _code = compile(_src, "main.py", "exec")
except (SyntaxError, ValueError) as _e:
    import traceback
    sys.stderr.write("".join(traceback.format_exception_only(_e)))
    sys.exit(1)
del _src
exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
'''

_ENV = {
    "PATH": SANDBOX_PATH,
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "HOME": "/tmp",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONIOENCODING": "utf-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def _user_process_count(uid: int) -> int:
    """Processes/threads currently owned by real uid ``uid`` (what ``RLIMIT_NPROC`` counts)."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                n += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
    return n


def _live_pids_of_uid(uid: int) -> list[int]:
    """Non-zombie pids whose real uid is ``uid``."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                status = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("Uid", "").split()[:1] == [str(uid)] and not fields.get("State", "").strip().startswith("Z"):
            pids.append(int(pid))
    return pids


def _kill_uid(uid: int, attempts: int = 50) -> None:
    """SIGKILL every process of ``uid`` (from a helper that runs as ``uid``, so ``kill(-1)`` is scoped)."""
    for _ in range(attempts):
        if not _live_pids_of_uid(uid):
            return
        subprocess.run(["kill", "-KILL", "-1"], preexec_fn=lambda: (os.setgroups([]), os.setresgid(uid, uid, uid),
                                                                    os.setresuid(uid, uid, uid)),
                       env={"PATH": SANDBOX_PATH}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False)
        time.sleep(0.005)
    raise SandboxError(f"could not kill the processes of sandbox uid {uid}")


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_head(path: str, n: int) -> tuple[bytes, int]:
    """First ``n`` bytes of ``path`` and the file's total size."""
    with open(path, "rb") as f:
        return f.read(n), os.fstat(f.fileno()).st_size


def _read_tail(path: str, n: int) -> bytes:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - n))
        return f.read()


_COMPILE_ERRORS = ("SyntaxError", "IndentationError", "TabError")
_MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "out of memory", "std::bad_alloc")


def classify(returncode: int | None, timed_out: bool, stdout_size: int, stderr: str, limits: SandboxLimits) -> str:
    """Map an exit to a status in :data:`STATUSES` (pure function)."""
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout"
    if returncode == -signal.SIGKILL and not stderr.strip():  # RLIMIT_CPU hard limit
        return "timeout"
    if stdout_size > limits.max_output_bytes or returncode == -signal.SIGXFSZ or "File too large" in stderr:
        return "output_limit"
    if returncode == 0:
        return "ok"
    tail = last_lines(stderr, 3)
    if any(m in tail for m in _MEMORY_MARKERS):
        return "memory"
    last = tail.splitlines()[-1] if tail else ""
    if "Traceback (most recent call last)" not in stderr and last.startswith(_COMPILE_ERRORS):
        return "compile_error"
    return "runtime_error"


def _run(source: str, stdin: str, limits: SandboxLimits, mode: str,
         files: Mapping[str, str] | None = None) -> SandboxResult:
    """Run ``source`` once under ``mode`` (no probing)."""
    base = tempfile.mkdtemp(prefix="scgrpo_sbx_")
    uid = None
    try:
        os.chmod(base, 0o711)
        workdir = os.path.join(base, "work")
        stage = os.path.join(base, "stage")
        os.mkdir(workdir, 0o700)
        os.mkdir(stage, 0o700)
        plan = _reexpose_plan() if mode == "root" else []
        for name in ["work"] + [str(i) for i in range(len(plan))]:
            os.mkdir(os.path.join(stage, name), 0o700)
        for name, text in {**(files or {}), "main.py": source}.items():
            with open(os.path.join(workdir, name), "w", encoding="utf-8") as f:
                f.write(text)
        args = [sys.executable, "-I", "-B", "main.py"]
        if mode == "audit":
            with open(os.path.join(workdir, "_boot.py"), "w", encoding="utf-8") as f:
                f.write(_AUDIT_BOOT)
            args = [sys.executable, "-I", "-B", "_boot.py"]
        nproc_base = 0
        if mode == "root":
            uid = UID_BASE + secrets.randbelow(UID_SPAN)
            for name in [".", "main.py", *(files or {})]:
                os.chown(os.path.join(workdir, name), uid, uid)
        else:
            nproc_base = _user_process_count(os.getuid())
        preexec = _make_preexec(mode, uid, limits, workdir, stage, plan, nproc_base)
        in_path, out_path, err_path = (os.path.join(base, n) for n in ("stdin", "stdout", "stderr"))
        with open(in_path, "w", encoding="utf-8") as f:
            f.write(stdin)
        with open(in_path, "rb") as fin, open(out_path, "wb") as fout, open(err_path, "wb") as ferr:
            t0 = time.monotonic()
            try:
                proc = subprocess.Popen(args, stdin=fin, stdout=fout, stderr=ferr, cwd=workdir, env=dict(_ENV),
                                        start_new_session=True, preexec_fn=preexec, close_fds=True)
            except (OSError, subprocess.SubprocessError) as exc:
                detail = _read_tail(err_path, 2000).decode("utf-8", errors="replace").strip()
                raise SandboxError(f"could not start a sandboxed process (mode={mode}): {exc!r} {detail}") from exc
            timed_out = False
            try:
                proc.wait(timeout=limits.wall_time_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            _killpg(proc.pid)  # the session leader's pid is the process-group id
            if timed_out:
                proc.wait()
            wall = time.monotonic() - t0
        if uid is not None:
            _kill_uid(uid)
        stdout_b, stdout_size = _read_head(out_path, limits.max_output_bytes)
        stderr_s = _read_tail(err_path, limits.stderr_tail_bytes).decode("utf-8", errors="replace")
        rc = None if timed_out else proc.returncode
        status = classify(rc, timed_out, stdout_size, stderr_s, limits)
        return SandboxResult(status=status, stdout=stdout_b.decode("utf-8", errors="replace"), stderr=stderr_s,
                             returncode=rc, wall_time_s=wall, isolation=mode, uid=uid)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        if os.path.exists(base):
            logger.warning("sandbox: could not delete %s", base)


def run_program(source: str, stdin: str = "", limits: SandboxLimits | None = None, *,
                files: Mapping[str, str] | None = None, require_namespaces: bool = False,
                mode: str | None = None) -> SandboxResult:
    """Run Python ``source`` with ``stdin`` in the sandbox.

    Args:
        source: the program text (written to ``main.py`` in a private directory).
        stdin: text fed on standard input.
        limits: resource limits (defaults: :class:`SandboxLimits`).
        files: extra ``{basename: text}`` files placed next to ``main.py`` (e.g. a solution a harness imports).
        require_namespaces: raise :class:`SandboxError` instead of using the ``audit`` fallback.
        mode: force an isolation mode (tests); default :func:`isolation_mode`.

    Returns:
        A :class:`SandboxResult`. Program failures are statuses, never exceptions.

    Raises:
        TypeError: ``source``/``stdin`` not ``str``.
        SandboxError: the sandbox cannot run at all.
    """
    if not isinstance(source, str) or not isinstance(stdin, str):
        raise TypeError(f"source and stdin must be str, got {type(source).__name__}, {type(stdin).__name__}")
    for name in files or {}:
        if not isinstance(name, str) or name in ("main.py", "_boot.py", "", ".", "..") or "/" in name or "\0" in name:
            raise ValueError(f"invalid sandbox file name {name!r}")
    limits = limits or SandboxLimits()
    mode = mode or isolation_mode()
    if mode not in ("root", "userns", "audit"):
        raise ValueError(f"unknown sandbox mode {mode!r}")
    if require_namespaces and mode == "audit":
        raise SandboxError("namespace isolation is unavailable on this host and require_namespaces=True")
    return _run(source, stdin, limits, mode, files)


def default_workers() -> int:
    """Pool size for :func:`run_batch`: the CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def run_batch(jobs: Iterable[tuple[str, str]], limits: SandboxLimits | None = None,
              max_workers: int | None = None, **kwargs) -> list[SandboxResult]:
    """Run ``(source, stdin)`` jobs concurrently; results are in job order (length ``len(jobs)``).

    Threads only wait on child processes, so a pool of ``max_workers`` (default: cores) threads keeps that
    many sandboxed programs running at once.
    """
    jobs = list(jobs)
    workers = max_workers or default_workers()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: run_program(job[0], job[1], limits, **kwargs), jobs))
