"""Sandbox basics: statuses, stdin/stdout, extra files, caps, validation, cleanup, probing and diagnostics.

Behaviour tests run in every isolation mode this host can run (each forced with ``mode=``); modes that do not
work here are skipped with the probe's reason.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile

import pytest

from scgrpo_verl.rewards import sandbox as sb
from scgrpo_verl.rewards.sandbox import boot, modes, process, seccomp
from scgrpo_verl.rewards.sandbox import view as sandbox_view

pytestmark = pytest.mark.timeout(60)
FAST = sb.SandboxLimits(wall_time_s=1.5, cpu_time_s=2, memory_mb=512, max_output_bytes=4096, stderr_tail_bytes=512)


@pytest.fixture(params=sb.MODES)
def mode(request) -> str:
    reason = sb.probe_mode(request.param)
    if reason is not None:
        pytest.skip(f"sandbox mode {request.param!r} is not available on this host: {reason}")
    return request.param


def test_ok_with_stdin(mode):
    res = sb.run_program("print(sum(map(int, input().split())))", "1 2 3\n", FAST, mode=mode)
    assert res.status == "ok" and res.stdout == "6\n" and res.returncode == 0 and res.feedback() == ""
    assert res.wall_time_s > 0 and res.isolation == mode


def test_isolated_flags_env_and_cwd(mode):
    src = "import os, sys\nprint(sys.flags.isolated, sys.flags.dont_write_bytecode)\nprint(sorted(os.environ))\n" \
          "print(os.listdir('.'))\n"
    res = sb.run_program(src, limits=FAST, files={"helper.txt": "hi"}, mode=mode)
    lines = res.stdout.splitlines()
    assert lines[0] == "1 1"
    assert set(eval(lines[1])) <= set(boot._ENV) | {"PWD"}  # bwrap sets PWD for its --chdir
    assert sorted(eval(lines[2])) == ["helper.txt", "main.py"]  # no _boot.py next to the program


def test_allowed_program_works(mode):
    """What a normal solution needs: stdin, print, stdlib imports, and (but in seccomp mode) files in its cwd."""
    src = ("import json, math, collections, fractions, heapq, itertools, re\n"
           "n = int(input())\n"
           "c = collections.Counter('abracadabra')\n"
           "print(json.dumps({'n': n, 'sqrt': math.isqrt(n), 'a': c['a'], 'f': str(fractions.Fraction(n, 6))}))\n"
           "try:\n"
           "    with open('scratch.txt', 'w') as f:\n"
           "        f.write('scratch')\n"
           "    print('wrote', open('scratch.txt').read())\n"
           "except PermissionError as e:\n"
           "    print('refused', e.errno)\n")
    res = sb.run_program(src, "49\n", FAST, mode=mode)
    assert res.status == "ok", res
    lines = res.stdout.splitlines()
    assert json.loads(lines[0]) == {"n": 49, "sqrt": 7, "a": 5, "f": "49/6"}
    # seccomp cannot tell paths apart, so that mode refuses every file write (documented)
    assert lines[1] == ("refused 13" if mode == "seccomp" else "wrote scratch")


def test_compile_error_vs_runtime_syntax_error(mode):
    res = sb.run_program("def f(:\n  pass\n", limits=FAST, mode=mode)
    assert res.status == "compile_error" and "SyntaxError" in res.feedback()
    res = sb.run_program("exec('x = (')\n", limits=FAST, mode=mode)
    assert res.status == "runtime_error"


def test_runtime_error_feedback_tail(mode):
    res = sb.run_program("def f():\n    raise KeyError('boom')\nf()\n", limits=FAST, mode=mode)
    assert res.status == "runtime_error"
    assert res.feedback().startswith("Runtime error (exit code 1):") and "KeyError: 'boom'" in res.feedback()
    assert res.stderr.startswith("Traceback (most recent call last):\n  File ") and "_boot.py" not in res.stderr


def test_killed_by_signal_feedback(mode):
    res = sb.run_program("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", limits=FAST, mode=mode)
    assert res.status == "runtime_error" and res.returncode == -signal.SIGSEGV
    assert "SIGSEGV" in res.feedback()


def test_output_and_stderr_caps(mode):
    res = sb.run_program("import sys\nsys.stderr.write('e' * 10000)\nprint('o' * 10000)\n", limits=FAST, mode=mode)
    assert res.status == "output_limit"
    assert len(res.stdout) == FAST.max_output_bytes and len(res.stderr) == FAST.stderr_tail_bytes


def test_workdir_deleted(mode):
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "scgrpo_sbx_*")))
    sb.run_program("open('big', 'w').write('x' * 1000)", limits=FAST, mode=mode)
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "scgrpo_sbx_*"))) <= before


def test_file_size_limit(mode):
    if mode == "seccomp":
        pytest.skip("seccomp mode refuses every file write (RLIMIT_FSIZE on stdout is covered by the output caps)")
    limits = sb.SandboxLimits(wall_time_s=2, max_file_size_mb=1, max_output_bytes=1024)
    res = sb.run_program("open('big', 'wb').write(b'x' * (3 << 20))", limits=limits, mode=mode)
    assert res.status == "output_limit" and "File too large" in res.stderr


def test_child_privileges(mode):
    """Every kernel mode: (host root) an unprivileged per-run uid with no capabilities; no-new-privs and a
    seccomp filter."""
    if mode == "audit":
        pytest.skip("audit mode has no kernel set-up")
    res = sb.run_program("print(open('/proc/self/status').read())", limits=FAST, mode=mode)
    if mode == "landlock":  # /proc is outside what Landlock lets a program read
        assert res.status == "runtime_error" and "Permission denied" in res.stderr
        return
    assert res.status == "ok", res
    status = {k: v.strip() for k, v in (line.split(":", 1) for line in res.stdout.splitlines() if ":" in line)}
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert int(status["CapInh"], 16) == 0 and int(status["CapAmb"], 16) == 0
    if os.geteuid() == 0:
        assert res.uid is not None and res.uid >= sb.UID_BASE
        assert status["Uid"].split() == [str(res.uid)] * 4 and status["Gid"].split() == [str(res.uid)] * 4
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0 and status["Groups"] == ""


CAPGET = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
data = (ctypes.c_uint32 * 6)()
assert libc.capget((ctypes.c_uint32 * 2)(0x20080522, 0), data) == 0, ctypes.get_errno()
print([hex(data[i] | data[i + 3] << 32) for i in range(3)])  # effective, permitted, inheritable
"""


def test_no_capabilities_left(mode):
    """capget() inside (also where /proc is unreadable): no effective, permitted or inheritable capability --
    bwrap as root keeps CAP_SETUID/CAP_SETGID for the uid drop, and used to leave them inheritable."""
    if mode == "audit":
        pytest.skip("audit mode has no kernel set-up (the program runs with this process's capabilities)")
    res = sb.run_program(CAPGET, limits=FAST, mode=mode)
    assert res.status == "ok", res
    assert json.loads(res.stdout.replace("'", '"')) == ["0x0", "0x0", "0x0"]


def _host_package_dirs() -> list[str]:
    """Package folders of this host, found independently of the sandbox's own scan: the base interpreter's
    ``site.getsitepackages()``, this virtualenv's, and the Debian-style system ones."""
    exe = os.path.realpath(sys.executable)
    out = subprocess.run([exe, "-I", "-c", "import json, site; print(json.dumps(site.getsitepackages()))"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    found = set(json.loads(out)) | {sysconfig.get_paths()["purelib"]}
    for pattern in ("/usr/lib*/python3*/*-packages", "/usr/local/lib*/python3*/*-packages"):
        found.update(glob.glob(pattern))
    return sorted(p for p in found if os.path.isdir(p) and os.listdir(p))


VIEW_LISTING = """
import json, os, sys
walk, unreadable = [], []
for root, dirs, files in os.walk("/", onerror=lambda e: unreadable.append(e.filename)):
    if root in ("/proc", "/sys", "/dev"):
        dirs[:] = []
        continue
    dirs.sort()
    walk += [os.path.join(root, n) for n in dirs + files]
probe = {}
# the host's package folders by path, and those next to every import path (as root in landlock/seccomp mode the
# standard library is reached through /proc/self/fd handles opened before the uid drop)
near = [os.path.join(d, n) for e in sys.path for d in (e, os.path.dirname(e))
        for n in ("site-packages", "dist-packages")]
for p in json.loads(sys.stdin.read()) + near:
    try:
        probe[p] = sorted(os.listdir(p))
    except OSError as e:
        probe[p] = e.strerror
import json, decimal, sqlite3, ctypes, ssl, lzma, bz2, zlib, collections, fractions, email.mime.text
third_party = []
for name in ("pip", "setuptools", "numpy", "yaml", "torch", "scgrpo_verl"):
    try:
        __import__(name)
        third_party.append(name)
    except ImportError:
        pass
print(json.dumps({"walk": walk, "unreadable": unreadable, "probe": probe, "third_party": third_party}))
"""


@pytest.mark.parametrize("drop_uid", [True, False], ids=["uid_drop", "no_uid_drop"])
def test_view_has_no_installed_packages(mode, drop_uid, monkeypatch):
    """The view from inside (issue 17): a program walks every folder it can list and lists each package folder of
    the host by path and next to its import paths; stdlib imports (lib-dynload and system libraries included)
    work, no installed package imports, and no entry of a site-packages/dist-packages folder is visible. As root
    the kernel modes are checked without the per-run uid too (Landlock alone must hide them)."""
    if not sb.INVARIANTS[mode]["only_mapped_host_paths"]:
        pytest.skip(f"{mode} mode does not claim only_mapped_host_paths: it reads what its uid can")
    if not drop_uid and (mode == "bwrap" or os.geteuid() != 0):
        pytest.skip("the uid drop happens only as root, and bwrap's view does not depend on it")
    monkeypatch.setattr(process, "_KERNEL_MODES_DROP_UID", drop_uid)
    host_dirs = _host_package_dirs()
    res = sb.run_program(VIEW_LISTING, json.dumps(host_dirs), dataclasses.replace(FAST, wall_time_s=20,
                                                                                   cpu_time_s=20,
                                                                                   max_output_bytes=16 << 20),
                         mode=mode)
    assert res.status == "ok", res
    view = json.loads(res.stdout)
    assert view["third_party"] == []
    inside = [p for p in view["walk"] if any(part in sb.PACKAGE_DIRS for part in p.split("/")[:-1])]
    assert inside == [], inside[:20]
    assert host_dirs and all(not isinstance(v, list) or v == [] for v in view["probe"].values()), view["probe"]
    if mode == "bwrap":  # the whole view is listable: the standard library is in it, the project is not
        stdlib = sysconfig.get_paths(vars={"base": sys.base_prefix, "installed_base": sys.base_prefix})["stdlib"]
        assert os.path.join(os.path.realpath(stdlib), "json", "__init__.py") in view["walk"]
        assert not any(p.startswith(os.path.dirname(os.path.abspath(__file__))) for p in view["walk"])


STDIO_GROWTH = """
import errno, os
attempts = {
    "write": lambda: os.write(0, b"x"),
    "fallocate": lambda: os.posix_fallocate(0, 0, 16 << 20),
    "reopen": lambda: os.write(os.open("/proc/self/fd/0", os.O_RDWR), b"x"),
    "grow_out": lambda: os.posix_fallocate(1, 0, 64 << 20),
    "grow_err": lambda: os.posix_fallocate(2, 0, 64 << 20),
}
out = []
for name, attempt in attempts.items():
    try:
        attempt()
        out.append(name + " ok")
    except OSError as e:
        out.append(name + " " + errno.errorcode[e.errno])
print(input(), *out)
"""


def test_stdin_read_only_and_outputs_capped(mode):
    """stdin cannot be written, grown or reopened for writing; stdout/stderr cannot grow past RLIMIT_FSIZE
    (fallocate included): what the documented memory bound counts."""
    res = sb.run_program(STDIO_GROWTH, "kept\n", FAST, mode=mode)
    assert res.status == "ok", res
    words = res.stdout.split()
    got = dict(zip(words[1::2], words[2::2]))
    assert words[0] == "kept"
    assert got["write"] == "EBADF" and got["fallocate"] == "EBADF"
    assert got["reopen"] in ("EPERM", "EACCES")  # sealed against writes (Landlock: /proc is unreadable)
    assert got["grow_out"] == got["grow_err"] == "EFBIG"


def test_signal_own_child(mode, monkeypatch):
    """A program may signal its own children (kill, then wait): a PID namespace (bwrap), a Landlock signal scope
    or the per-run uid keeps signals inside its own tree, so the filter need not refuse other pids."""
    if mode == "audit":
        pytest.skip("audit mode's hook refuses os.kill to anything but the program itself")
    src = ("import os, signal, time\npid = os.fork()\nif pid == 0:\n    time.sleep(30)\n    os._exit(0)\n"
           "os.kill(pid, signal.SIGTERM)\n_, status = os.waitpid(pid, 0)\nprint(os.WTERMSIG(status))\n")
    ran = 0
    for drop_uid in (True, False):  # without the uid drop only the Landlock scope confines signals
        if mode != "bwrap" and not (drop_uid and os.geteuid() == 0) and sb.landlock_abi() < 6:
            continue  # no per-run uid and no Landlock scope: the filter allows the own process group only
        monkeypatch.setattr(process, "_KERNEL_MODES_DROP_UID", drop_uid)
        res = sb.run_program(src, limits=FAST, mode=mode)
        assert res.status == "ok" and res.stdout.strip() == str(int(signal.SIGTERM)), (drop_uid, res)
        ran += 1
    if not ran:
        pytest.skip(f"{mode} mode here has neither a per-run uid nor a Landlock signal scope (ABI >= 6)")


@pytest.mark.parametrize("kwargs", [{"wall_time_s": 0}, {"memory_mb": -1}, {"cpu_time_s": 0}])
def test_limits_validation(kwargs):
    with pytest.raises(ValueError):
        sb.SandboxLimits(**kwargs)


def test_bad_arguments():
    with pytest.raises(TypeError):
        sb.run_program(b"print(1)")
    with pytest.raises(ValueError):
        sb.run_program("print(1)", files={"../x": ""})
    with pytest.raises(sb.SandboxError, match="not one of"):
        sb.run_program("print(1)", mode="docker")
    with pytest.raises(ValueError):
        sb.probe_mode("docker")


@pytest.mark.parametrize("rc, timed_out, size, err, expected", [
    (0, False, 0, "", "ok"),
    (None, True, 0, "", "timeout"),
    (-signal.SIGXCPU, False, 0, "", "timeout"),
    (-signal.SIGKILL, False, 0, "", "timeout"),
    (1, False, 10 ** 9, "", "output_limit"),
    (1, False, 0, "Traceback (most recent call last):\nMemoryError\n", "memory"),
    (1, False, 0, '  File "main.py", line 1\nSyntaxError: bad\n', "compile_error"),
    (1, False, 0, "Traceback (most recent call last):\nValueError\n", "runtime_error"),
])
def test_classify(rc, timed_out, size, err, expected):
    assert sb.classify(rc, timed_out, size, err, sb.SandboxLimits()) == expected


def test_batch_preserves_order():
    jobs = [(f"print({i})", "") for i in range(6)]
    res = sb.run_batch(jobs, FAST, max_workers=3)
    assert [r.stdout.strip() for r in res] == [str(i) for i in range(6)]


def test_memory_bound_counts_every_enforced_part():
    """The documented bound, term by term, computed here independently."""
    lim = sb.SandboxLimits(memory_mb=100, max_processes=3, disk_mb=10, shm_mb=5, max_file_size_mb=2,
                           max_output_bytes=1 << 20, max_open_files=8)
    # 3 x 100 MiB address spaces + 15 MiB tmpfs + stdout/stderr 2 x 2 MiB + (3 + 1) x 8 fds x 1 MiB per socket
    assert sb.memory_bound_mb(lim, socket_buffer_bytes=1 << 20) == 300 + 15 + 4 + 32
    # the output cap wins over a smaller file-size cap; a pipe (64 KiB) over smaller socket buffers
    lim = dataclasses.replace(lim, max_file_size_mb=1, max_output_bytes=3 << 20)
    assert sb.memory_bound_mb(lim, socket_buffer_bytes=1024) == -(-((315 << 20) + 2 * ((3 << 20) + 1)
                                                                    + 32 * (64 << 10)) // (1 << 20))
    assert sb.memory_bound_mb(sb.SandboxLimits(), socket_buffer_bytes=2 * 212992) > 16 * 1024


@pytest.mark.parametrize("bound, available, cores, requested, expected", [
    (16938, 22 * 1024, 2, None, 1),  # the defaults on a 24 GiB host: one run at a time, not one per core
    (1000, 10_000, 4, None, 4),  # 8 fit, 4 cores
    (1000, 10_000, 16, None, 8),  # 16 cores, 8 fit into 80 % of 10 GB
    (1000, 10_000, 16, 3, 3),  # an explicit cap
    (1000, 10_000, 2, 6, 6),  # ... may exceed the cores (threads only wait), never the memory
    (1000, 10_000, 2, 20, 8),
    (50_000, 1_000, 8, None, 1),  # nothing fits: still one at a time
])
def test_batch_workers(bound, available, cores, requested, expected):
    assert sb.batch_workers(bound, available, cores, requested) == expected


def test_batch_workers_rejects_nonsense():
    with pytest.raises(ValueError):
        sb.batch_workers(0, 1000, 2)


def _fail_like_broken_bwrap(*args, **kwargs):
    return ["sh", "-c", "echo 'bwrap: No permissions to create new namespace, likely because the kernel does not "
                        "allow non-privileged user namespaces.' >&2; exit 1"]


@pytest.mark.parametrize("how", ["bwrap_namespace", "boot"])
def test_sandbox_breaking_after_startup_stops_training(mode, how, monkeypatch):
    """The probe passed and is cached; later the sandbox itself fails (bwrap cannot create namespaces any more, or
    the boot code cannot set up): run_program and compute_score raise a one-line SandboxError instead of scoring
    every program 0."""
    if how == "bwrap_namespace" and mode != "bwrap":
        pytest.skip("bwrap's own failure")
    if how == "boot" and mode == "audit":
        pytest.skip("audit mode has no set-up to fail")
    from scgrpo_verl.rewards import compute_score

    assert sb.run_program("print(1)", limits=FAST, mode=mode).ok  # the probe is cached now
    if how == "bwrap_namespace":
        monkeypatch.setattr(process, "_bwrap_argv", _fail_like_broken_bwrap)
    else:
        for module in (sandbox_view, process):  # the bwrap command line and the other modes' spawn
            monkeypatch.setattr(module, "_boot_source",
                                lambda *a, **k: "raise SystemExit('sandbox: could not drop privileges')")
    try:
        with pytest.raises(sb.SandboxError) as err:
            sb.run_program("print(1)", limits=FAST, mode=mode)
        msg = str(err.value)
        assert "\n" not in msg and "stopped working after start-up" in msg
        assert ("No permissions to create new namespace" if how == "bwrap_namespace" else "could not drop") in msg
        # the probe failed, so the mode is not selected again: compute_score refuses in one line too
        with pytest.raises(sb.SandboxError, match="code rewards need the bubblewrap sandbox|does not work here") as err:
            compute_score("codeforces", "```python\nprint(3)\n```", [{"input": "", "output": "3"}],
                          sandbox_mode=mode)
        assert "\n" not in str(err.value)
    finally:
        monkeypatch.undo()
        sb.probe_mode.cache_clear()
        modes._select.cache_clear()
    assert sb.run_program("print(2)", limits=FAST, mode=mode).stdout == "2\n"  # healthy again: probes pass


def test_program_imitating_a_broken_sandbox_keeps_its_result(mode):
    """A program printing bwrap's error itself costs one re-probe; the sandbox works, so it gets its own verdict."""
    src = ("import sys\nsys.stderr.write('bwrap: No permissions to create new namespace\\n')\n"
           "sys.stderr.write('Fatal Python error: none\\n')\nraise SystemExit(1)\n")
    res = sb.run_program(src, limits=FAST, mode=mode)
    assert res.status == "runtime_error" and "bwrap: No permissions" in res.stderr


def test_seccomp_filter_shape():
    """The hand-built BPF program: 8-byte instructions, arch check first, allow last, pid slots inside (none in
    the bwrap variant, which has a PID namespace instead)."""
    if seccomp._seccomp_arch() is None:
        pytest.skip("no seccomp syscall table for this machine")
    for deny_writes, confine in ((False, True), (True, True), (False, False)):
        prog, pid_offs, neg_offs = seccomp._seccomp_program(deny_writes=deny_writes,
                                                            allow_unix_sockets=not deny_writes,
                                                            confine_signals=confine)
        assert len(prog) % 8 == 0 and 0 < len(prog) // 8 <= 4096
        first = [int.from_bytes(prog[i:i + 8][4:], sys.byteorder) for i in range(0, 16, 8)]
        assert first == [4, seccomp._seccomp_arch()[0]]  # load seccomp_data.arch, compare with this ABI
        assert prog[-8:] == struct.pack("=HBBI", seccomp.BPF_RET_K, 0, 0, seccomp.SECCOMP_RET_ALLOW)
        if confine:
            assert pid_offs and neg_offs and all(4 <= o < len(prog) and o % 8 == 4 for o in pid_offs + neg_offs)
        else:
            assert not pid_offs and not neg_offs
        # SysV IPC and memfd_create are refused in every variant (the documented memory bound)
        table = seccomp._seccomp_arch()[1]
        for name in ("shmget", "msgget", "semget", "memfd_create"):
            k = struct.pack("=I", table[name])
            assert any(prog[i + 4:i + 8] == k and prog[i:i + 2] == struct.pack("=H", seccomp.BPF_JEQ_K)
                       for i in range(0, len(prog), 8)), name


def test_diagnose_reports_every_mode(monkeypatch):
    monkeypatch.delenv(sb.ENV_MODE, raising=False)
    info = sb.diagnose()
    json.dumps(info)  # serialisable for CI logs
    assert set(info["modes"]) == set(sb.MODES) and info["modes"]["audit"] == "ok"
    # fail closed: bwrap or nothing, unless a weaker mode is opted into
    if info["modes"]["bwrap"] == "ok":
        assert info["selected"] == "bwrap" and all(info["invariants"].values()) and info["not_held"] == []
        assert "why_not_stronger" not in info
    else:
        assert info["selected"] is None and info["refusal"].startswith("code rewards need the bubblewrap sandbox")
        assert info["why_not_stronger"]["bwrap"] == info["modes"]["bwrap"]
    assert set(info["invariants"]) == set(sb.INVARIANT_DOCS)
    if sys.platform.startswith("linux"):
        assert info["euid"] == os.geteuid() and info["kernel"] == os.uname().release
        assert info["landlock_abi"] is not None or info["landlock_error"]
        assert info["limits_via"].startswith("rlimits") or info["limits_via"].startswith("cgroup")


def test_module_main_prints_diagnose_json():
    proc = subprocess.run([sys.executable, "-m", "scgrpo_verl.rewards.sandbox"], capture_output=True, text=True,
                          timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["selected"] in sb.MODES + (None,) and set(info["modes"]) == set(sb.MODES)


def _fake_probes(monkeypatch, fake: dict) -> None:
    real = sb.probe_mode
    monkeypatch.setattr(modes, "probe_mode", lambda m: fake.get(m) or real(m))
    modes._select.cache_clear()


def test_fail_closed_without_bwrap(monkeypatch):
    """No bwrap and no opt-in: code rewards refuse with one line naming the fix; nothing runs in a weaker mode."""
    monkeypatch.delenv(sb.ENV_MODE, raising=False)
    _fake_probes(monkeypatch, {"bwrap": "bwrap is not installed (no `bwrap` on PATH)"})
    try:
        with pytest.raises(sb.SandboxError) as err:
            sb.run_program("print(1)")
        msg = str(err.value)
        assert "\n" not in msg and "apt-get install -y bubblewrap" in msg and sb.ENV_MODE in msg
        assert msg == sb.REFUSAL.format(reason="bwrap is not installed (no `bwrap` on PATH)")
        from scgrpo_verl.rewards import compute_score
        with pytest.raises(sb.SandboxError):
            compute_score("codeforces", "```python\nprint(3)\n```", [{"input": "", "output": "3"}])
        # math rewards do not need the sandbox
        assert compute_score("gsm8k", "\\boxed{3}", "3")["score"] == 1.0
    finally:
        modes._select.cache_clear()


@pytest.mark.parametrize("weak", ["landlock", "seccomp", "audit"])
def test_opt_in_weaker_mode_warns_on_every_start(weak, monkeypatch, caplog):
    if sb.probe_mode(weak) is not None:
        pytest.skip(f"{weak} does not work here: {sb.probe_mode(weak)}")
    monkeypatch.setenv(sb.ENV_MODE, weak)
    for _start in range(2):  # a fresh process = an empty selection cache
        modes._select.cache_clear()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=sb.__name__):
            res = sb.run_program("print(6 * 7)", limits=FAST)
        assert res.isolation == weak and res.stdout.strip() == "42"
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and f"weaker {weak!r} mode you opted into" in warnings[0]
    modes._select.cache_clear()
    monkeypatch.setenv(sb.ENV_MODE, "docker")
    with pytest.raises(sb.SandboxError, match="not one of"):
        sb.run_program("print(1)")
    modes._select.cache_clear()


def test_cli_prints_the_isolation_diagnostics(capsys):
    from scgrpo_verl.cli import main

    assert main(["sandbox"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    assert set(report["modes"]) == set(sb.MODES)
    assert report["selected"] in sb.MODES + (None,)
