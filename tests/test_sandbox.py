"""Sandbox basics: statuses, stdin/stdout, extra files, caps, validation, cleanup, probing and diagnostics.

Behaviour tests run in every isolation mode this host can run (each forced with ``mode=``); modes that do not
work here are skipped with the probe's reason.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import tempfile

import pytest

from scgrpo_verl.rewards import sandbox as sb

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
    assert set(eval(lines[1])) <= set(sb._ENV) | {"PWD"}  # bwrap sets PWD for its --chdir
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
    if os.geteuid() == 0:
        assert res.uid is not None and res.uid >= sb.UID_BASE
        assert status["Uid"].split() == [str(res.uid)] * 4 and status["Gid"].split() == [str(res.uid)] * 4
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0 and status["Groups"] == ""


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


def test_seccomp_filter_shape():
    """The hand-built BPF program: 8-byte instructions, arch check first, allow last, pid slots inside (none in
    the bwrap variant, which has a PID namespace instead)."""
    if sb._seccomp_arch() is None:
        pytest.skip("no seccomp syscall table for this machine")
    for deny_writes, confine in ((False, True), (True, True), (False, False)):
        prog, pid_offs, neg_offs = sb._seccomp_program(deny_writes=deny_writes, allow_unix_sockets=not deny_writes,
                                                       confine_signals=confine)
        assert len(prog) % 8 == 0 and 0 < len(prog) // 8 <= 4096
        first = [int.from_bytes(prog[i:i + 8][4:], sys.byteorder) for i in range(0, 16, 8)]
        assert first == [4, sb._seccomp_arch()[0]]  # load seccomp_data.arch, compare with this ABI
        assert prog[-8:] == struct.pack("=HBBI", sb.BPF_RET_K, 0, 0, sb.SECCOMP_RET_ALLOW)
        if confine:
            assert pid_offs and neg_offs and all(4 <= o < len(prog) and o % 8 == 4 for o in pid_offs + neg_offs)
        else:
            assert not pid_offs and not neg_offs
        # SysV IPC and memfd_create are refused in every variant (the documented memory bound)
        table = sb._seccomp_arch()[1]
        for name in ("shmget", "msgget", "semget", "memfd_create"):
            k = struct.pack("=I", table[name])
            assert any(prog[i + 4:i + 8] == k and prog[i:i + 2] == struct.pack("=H", sb.BPF_JEQ_K)
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
                          timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["selected"] in sb.MODES + (None,) and set(info["modes"]) == set(sb.MODES)


def _fake_probes(monkeypatch, fake: dict) -> None:
    real = sb.probe_mode
    monkeypatch.setattr(sb, "probe_mode", lambda m: fake.get(m) or real(m))
    sb._select.cache_clear()


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
        sb._select.cache_clear()


@pytest.mark.parametrize("weak", ["landlock", "seccomp", "audit"])
def test_opt_in_weaker_mode_warns_on_every_start(weak, monkeypatch, caplog):
    if sb.probe_mode(weak) is not None:
        pytest.skip(f"{weak} does not work here: {sb.probe_mode(weak)}")
    monkeypatch.setenv(sb.ENV_MODE, weak)
    for _start in range(2):  # a fresh process = an empty selection cache
        sb._select.cache_clear()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=sb.__name__):
            res = sb.run_program("print(6 * 7)", limits=FAST)
        assert res.isolation == weak and res.stdout.strip() == "42"
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and f"weaker {weak!r} mode you opted into" in warnings[0]
    sb._select.cache_clear()
    monkeypatch.setenv(sb.ENV_MODE, "docker")
    with pytest.raises(sb.SandboxError, match="not one of"):
        sb.run_program("print(1)")
    sb._select.cache_clear()


def test_cli_prints_the_isolation_diagnostics(capsys):
    from scgrpo_verl.cli import main

    assert main(["sandbox"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    assert set(report["modes"]) == set(sb.MODES)
    assert report["selected"] in sb.MODES + (None,)
