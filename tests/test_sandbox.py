"""Sandbox basics: statuses, stdin/stdout, extra files, caps, validation and cleanup."""

from __future__ import annotations

import glob
import os
import signal
import tempfile

import pytest

from scgrpo_verl.rewards import sandbox as sb

pytestmark = pytest.mark.timeout(60)
FAST = sb.SandboxLimits(wall_time_s=1.5, cpu_time_s=2, memory_mb=512, max_output_bytes=4096, stderr_tail_bytes=512)


def test_ok_with_stdin():
    res = sb.run_program("print(sum(map(int, input().split())))", "1 2 3\n", FAST)
    assert res.status == "ok" and res.stdout == "6\n" and res.returncode == 0 and res.feedback() == ""
    assert res.wall_time_s > 0


def test_isolated_flags_env_and_cwd():
    src = "import os, sys\nprint(sys.flags.isolated, sys.flags.dont_write_bytecode)\nprint(sorted(os.environ))\n" \
          "print(os.listdir('.'))\n"
    res = sb.run_program(src, limits=FAST, files={"helper.txt": "hi"})
    lines = res.stdout.splitlines()
    assert lines[0] == "1 1"
    assert set(eval(lines[1])) <= set(sb._ENV)
    assert sorted(eval(lines[2])) == ["helper.txt", "main.py"]


def test_compile_error_vs_runtime_syntax_error():
    res = sb.run_program("def f(:\n  pass\n", limits=FAST)
    assert res.status == "compile_error" and "SyntaxError" in res.feedback()
    res = sb.run_program("exec('x = (')\n", limits=FAST)
    assert res.status == "runtime_error"


def test_runtime_error_feedback_tail():
    res = sb.run_program("def f():\n    raise KeyError('boom')\nf()\n", limits=FAST)
    assert res.status == "runtime_error"
    assert res.feedback().startswith("Runtime error (exit code 1):") and "KeyError: 'boom'" in res.feedback()


def test_killed_by_signal_feedback():
    res = sb.run_program("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", limits=FAST)
    assert res.status == "runtime_error" and res.returncode == -signal.SIGSEGV
    assert "SIGSEGV" in res.feedback()


def test_output_and_stderr_caps():
    res = sb.run_program("import sys\nsys.stderr.write('e' * 10000)\nprint('o' * 10000)\n", limits=FAST)
    assert res.status == "output_limit"
    assert len(res.stdout) == FAST.max_output_bytes and len(res.stderr) == FAST.stderr_tail_bytes


def test_workdir_deleted():
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "scgrpo_sbx_*")))
    sb.run_program("open('big', 'w').write('x' * 1000)", limits=FAST)
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "scgrpo_sbx_*"))) <= before


def test_file_size_limit():
    limits = sb.SandboxLimits(wall_time_s=2, max_file_size_mb=1, max_output_bytes=1024)
    res = sb.run_program("open('big', 'wb').write(b'x' * (3 << 20))", limits=limits)
    assert res.status == "output_limit" and "File too large" in res.stderr


@pytest.mark.parametrize("kwargs", [{"wall_time_s": 0}, {"memory_mb": -1}, {"cpu_time_s": 0}])
def test_limits_validation(kwargs):
    with pytest.raises(ValueError):
        sb.SandboxLimits(**kwargs)


def test_bad_arguments():
    with pytest.raises(TypeError):
        sb.run_program(b"print(1)")
    with pytest.raises(ValueError):
        sb.run_program("print(1)", files={"../x": ""})
    with pytest.raises(ValueError):
        sb.run_program("print(1)", mode="docker")


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
