"""Process control of one run: spawning it under bwrap (:func:`_run_bwrap`) or as a confined child of this process
(:func:`_run_unshared`: ``landlock``/``seccomp``/``audit``, with the kernel layers its ``preexec_fn`` installs,
:class:`_KernelLayers`), its stdin/stdout/stderr as memory files, the wall-clock wait, killing its process group or
per-run uid, waiting for bwrap's PID namespace to be torn down, cleaning up its folder, and turning the exit into a
:class:`SandboxResult`. :func:`_run` runs one program under a given mode; choosing the mode is :mod:`.modes`'."""

from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import json
import logging
import os
import resource
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Mapping

from .base import (UID_BASE, UID_SPAN, SANDBOX_PATH, SandboxError, SandboxLimits, SandboxResult, _check, _libc,
                   _rlimits, classify)
from .boot import _ENV, _boot_source
from .landlock import landlock_abi, _landlock_ruleset
from .seccomp import (PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER, _SockFprog, _bwrap_filter,
                      _seccomp_program)
from .view import _bwrap_argv, _expose_dirs

logger = logging.getLogger(__package__)  # the package's logger, as before the split into modules

_KERNEL_MODES_DROP_UID = True  # tests turn this off to check the Landlock/seccomp layers without the uid drop


@dataclasses.dataclass
class _KernelLayers:
    """What the child of a ``landlock``/``seccomp`` run installs on itself (prepared in the parent): the seccomp
    hardening filter (before exec) and a Landlock ruleset (by the boot code): the full one in ``landlock`` mode,
    a signal/abstract-socket scope in ``seccomp`` mode where Landlock ABI >= 6 has one."""

    ruleset_fd: int | None
    filter_buf: ctypes.Array
    fprog: _SockFprog
    pid_offsets: tuple[int, ...]
    neg_pid_offsets: tuple[int, ...]

    @classmethod
    def build(cls, mode: str, workdir: str, uid: int | None) -> "_KernelLayers":
        scope = landlock_abi() >= 6  # Landlock can keep signals inside the program's own process tree
        ruleset_fd = _landlock_ruleset(workdir) if mode == "landlock" else \
            _landlock_ruleset(None) if scope else None
        # No socket() at all without a network namespace: Landlock does not confine connecting to host Unix
        # sockets by path (socketpair() stays available). Signals to any pid (e.g. a program's own child) are
        # allowed where the Landlock scope or the per-run uid confines them; else only the own process group.
        prog, pid_offs, neg_offs = _seccomp_program(deny_writes=mode == "seccomp", allow_unix_sockets=False,
                                                    confine_kill=not (scope or uid is not None))
        buf = ctypes.create_string_buffer(prog, len(prog))
        fprog = _SockFprog(len(prog) // 8, ctypes.addressof(buf))
        return cls(ruleset_fd, buf, fprog, pid_offs, neg_offs)

    def close(self) -> None:
        if self.ruleset_fd is not None:
            os.close(self.ruleset_fd)
            self.ruleset_fd = None


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


def _kill_uid(uid: int, attempts: int = 200) -> None:
    """SIGKILL every process of ``uid`` (from a helper that runs as ``uid``, so ``kill(-1)`` is scoped)."""
    for i in range(attempts):
        if not _live_pids_of_uid(uid):
            return
        if i % 10 == 0:
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


def _memfd(name: str, data: bytes = b"") -> int:
    """An anonymous memory file (close-on-exec) holding ``data``, positioned at 0."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _stdin_fd(text: str) -> int:
    """A read-only descriptor of a sealed anonymous memory file holding ``text``: the program can neither write,
    grow (``fallocate``), shrink nor unseal it, even if it reopens ``/proc/self/fd/0`` for writing."""
    fd = os.memfd_create("stdin", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(text.encode("utf-8", errors="surrogateescape"))
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(fd)


def _read_fd(fd: int, n: int, tail: bool = False) -> tuple[bytes, int]:
    """The first (or last) ``n`` bytes of the file ``fd`` and its total size."""
    size = os.fstat(fd).st_size
    start = max(0, size - n) if tail else 0
    return os.pread(fd, min(n, size), start), size


def _remove_tree(path: str) -> None:
    """Delete ``path`` whatever a program left in it (deep trees, odd modes); never raises."""
    try:
        shutil.rmtree(path)
    except (OSError, RecursionError):
        pass
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--one-file-system", "--", path], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
    if os.path.lexists(path):
        logger.warning("sandbox: could not delete %s", path)


def _wait(proc: subprocess.Popen, limits: SandboxLimits) -> tuple[bool, float]:
    """Wait for ``proc`` up to the wall-clock limit, then kill its process group; (timed out, seconds)."""
    t0 = time.monotonic()
    timed_out = False
    try:
        proc.wait(timeout=limits.wall_time_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    _killpg(proc.pid)  # the session leader's pid is the process-group id
    proc.wait()
    return timed_out, time.monotonic() - t0


def _wait_for_teardown(info_fd: int, timeout_s: float = 10.0) -> None:
    """Wait until bwrap's PID 1 (pid from ``--info-fd``) has exited: the kernel lets the init of a PID namespace
    finish exiting only after every other process of the namespace is gone. bwrap's outer process may report the
    program's exit status before that, so its exit alone does not mean the run is over."""
    try:
        info = json.loads(os.read(info_fd, 4096) or b"{}")
        pid = int(info["child-pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # bwrap did not get as far as starting the sandbox
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already exited and reaped
    try:
        if not select.select([pidfd], [], [], timeout_s)[0]:
            logger.warning("sandbox: bwrap's init (pid %d) still runs %.0f s after the program ended", pid, timeout_s)
    finally:
        os.close(pidfd)


def _result(mode: str, uid: int | None, rc: int | None, timed_out: bool, wall: float, out_fd: int, err_fd: int,
            limits: SandboxLimits) -> SandboxResult:
    stdout_b, stdout_size = _read_fd(out_fd, limits.max_output_bytes)
    stderr_b, _ = _read_fd(err_fd, limits.stderr_tail_bytes, tail=True)
    stderr_s = stderr_b.decode("utf-8", errors="replace")
    if mode == "bwrap" and rc is not None and rc > 128 and rc - 128 in signal.valid_signals():
        rc = -(rc - 128)  # bwrap reports a child killed by signal N as exit status 128 + N
    status = classify(None if timed_out else rc, timed_out, stdout_size, stderr_s, limits)
    return SandboxResult(status=status, stdout=stdout_b.decode("utf-8", errors="replace"), stderr=stderr_s,
                         returncode=None if timed_out else rc, wall_time_s=wall, isolation=mode, uid=uid)


def _run_bwrap(source: str, stdin: str, limits: SandboxLimits, files: Mapping[str, str]) -> SandboxResult:
    uid = UID_BASE + secrets.randbelow(UID_SPAN) if os.geteuid() == 0 else None
    fds: list[int] = []
    try:
        file_fds = []
        for name, text in {**files, "main.py": source}.items():
            fds.append(_memfd(name, text.encode("utf-8", errors="surrogateescape")))
            file_fds.append((fds[-1], name))
        seccomp_fd = _memfd("seccomp", _bwrap_filter())
        info_r, info_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        fds += [seccomp_fd, info_r, info_w]
        argv = _bwrap_argv(limits, uid, file_fds, seccomp_fd, info_w)
        in_fd, out_fd, err_fd = _stdin_fd(stdin), _memfd("stdout"), _memfd("stderr")
        fds += [in_fd, out_fd, err_fd]
        try:
            proc = subprocess.Popen(argv, stdin=in_fd, stdout=out_fd, stderr=err_fd, cwd="/", env={},
                                    start_new_session=True, close_fds=True,
                                    pass_fds=[fd for fd, _ in file_fds] + [seccomp_fd, info_w])
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxError(f"could not start bwrap: {exc!r}") from exc
        fds.remove(info_w)
        os.close(info_w)
        timed_out, wall = _wait(proc, limits)
        _wait_for_teardown(info_r)
        if uid is not None and timed_out:
            _kill_uid(uid)
        return _result("bwrap", uid, proc.returncode, timed_out, wall, out_fd, err_fd, limits)
    finally:
        for fd in fds:
            os.close(fd)


def _run_unshared(source: str, stdin: str, limits: SandboxLimits, mode: str,
                  files: Mapping[str, str]) -> SandboxResult:
    """``landlock`` / ``seccomp`` / ``audit``: a private host folder, kernel layers, the uid drop as root."""
    base = tempfile.mkdtemp(prefix="scgrpo_sbx_")
    uid = None
    layers: _KernelLayers | None = None
    fds: list[int] = []
    try:
        workdir = os.path.join(base, "w")
        os.mkdir(workdir, 0o700)
        if os.geteuid() == 0 and mode != "audit" and _KERNEL_MODES_DROP_UID:
            uid = UID_BASE + secrets.randbelow(UID_SPAN)
        for name, text in {**files, "main.py": source}.items():
            with open(os.path.join(workdir, name), "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(text)
        if uid is not None:
            for name in [".", "main.py", *files]:
                os.chown(os.path.join(workdir, name), uid, uid)
            os.chmod(base, 0o711)
        nproc = limits.max_processes if uid is not None else _user_process_count(os.getuid()) + limits.max_processes
        rl = _rlimits(limits, nproc)
        if mode != "audit":
            layers = _KernelLayers.build(mode, workdir, uid)
        ruleset_fd = layers.ruleset_fd if layers is not None else None
        boot = _boot_source(mode == "audit", uid, _expose_dirs() if uid is not None else [], landlock_fd=ruleset_fd)
        args = [os.path.realpath(sys.executable) if mode != "audit" else sys.executable, "-I", "-B", "-S", "-c", boot]
        in_fd, out_fd, err_fd = _stdin_fd(stdin), _memfd("stdout"), _memfd("stderr")
        fds += [in_fd, out_fd, err_fd]
        byteorder = sys.byteorder

        def preexec() -> None:
            if layers is not None:  # before RLIMIT_AS: installing the layers allocates a little
                _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
                pid = os.getpid()  # unchanged by exec; the child leads its own session and process group
                buf = layers.filter_buf
                for off in layers.pid_offsets:
                    buf[off:off + 4] = pid.to_bytes(4, byteorder)
                for off in layers.neg_pid_offsets:
                    buf[off:off + 4] = ((-pid) & 0xFFFFFFFF).to_bytes(4, byteorder)
                _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(layers.fprog), 0, 0),
                       "prctl(PR_SET_SECCOMP)")
            for res, value in rl:
                resource.setrlimit(res, value)

        try:
            proc = subprocess.Popen(args, stdin=in_fd, stdout=out_fd, stderr=err_fd, cwd=workdir, env=dict(_ENV),
                                    start_new_session=True, preexec_fn=preexec, close_fds=True,
                                    pass_fds=[ruleset_fd] if ruleset_fd is not None else [])
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxError(f"could not start a sandboxed process (mode={mode}): {exc!r}") from exc
        finally:
            if layers is not None:
                layers.close()
        timed_out, wall = _wait(proc, limits)
        if uid is not None:
            _kill_uid(uid)
        return _result(mode, uid, proc.returncode, timed_out, wall, out_fd, err_fd, limits)
    finally:
        for fd in fds:
            os.close(fd)
        if layers is not None:
            layers.close()
        _remove_tree(base)


def _run(source: str, stdin: str, limits: SandboxLimits, mode: str,
         files: Mapping[str, str] | None = None) -> SandboxResult:
    """Run ``source`` once under ``mode`` (no selection)."""
    if mode == "bwrap":
        return _run_bwrap(source, stdin, limits, files or {})
    return _run_unshared(source, stdin, limits, mode, files or {})
