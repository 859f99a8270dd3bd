"""Red-team suite: hostile programs must be contained and answered with a feedback string.

Every attack runs with small limits so the whole file stays well under a minute on 2 cores.
"""

from __future__ import annotations

import os
import secrets
import socket
import textwrap
import threading

import pytest

from scgrpo_verl.rewards import sandbox as sb

pytestmark = pytest.mark.timeout(60)

FAST = sb.SandboxLimits(wall_time_s=1.5, cpu_time_s=2, memory_mb=512, max_processes=16, max_open_files=64,
                        max_output_bytes=64 * 1024)
FIXTURES = os.path.dirname(os.path.abspath(__file__))  # a host directory outside the sandbox


def run(src: str, stdin: str = "", limits: sb.SandboxLimits = FAST) -> sb.SandboxResult:
    return sb.run_program(textwrap.dedent(src), stdin, limits)


def assert_contained(res: sb.SandboxResult) -> None:
    """Not ok, a non-empty feedback string, and no process of the sandbox uid left alive."""
    assert res.status in sb.STATUSES
    assert res.status != "ok", res
    assert res.feedback().strip(), res
    if res.uid is not None:
        assert sb._live_pids_of_uid(res.uid) == []


@pytest.fixture(scope="module")
def mode() -> str:
    return sb.isolation_mode()


def test_isolation_mode_is_namespaced_here(mode):
    # This repo's CI/dev machine runs as root with namespace support; the strong mode must be selected.
    if os.geteuid() != 0:
        pytest.skip("strong mode needs root")
    assert mode == "root"


def test_fork_bomb_contained(mode):
    res = run("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """)
    assert res.status == "timeout"
    assert_contained(res)
    assert "Time limit exceeded" in res.feedback()


def test_setsid_escapee_is_killed(mode):
    # A child leaves the process group with setsid(); the per-uid sweep must still kill it.
    res = run("""
        import os, time
        if os.fork() == 0:
            os.setsid()
            time.sleep(100)
        print("parent exits")
    """)
    assert res.status == "ok" and "parent exits" in res.stdout
    if res.uid is not None:
        assert sb._live_pids_of_uid(res.uid) == []


def _listener():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.5)
    return srv


def test_network_loopback_listener_unreachable(mode):
    srv = _listener()
    port = srv.getsockname()[1]
    try:
        res = run(f"""
            import socket
            s = socket.create_connection(("127.0.0.1", {port}), timeout=1)
            s.sendall(b"exfiltrated")
            print("CONNECTED")
        """)
        assert "CONNECTED" not in res.stdout
        assert_contained(res)
        assert res.status == "runtime_error"
        with pytest.raises(socket.timeout):
            srv.accept()  # nobody connected
    finally:
        srv.close()


def test_network_external_ip_unreachable(mode):
    res = run("""
        import socket
        s = socket.create_connection(("1.1.1.1", 53), timeout=1)
        print("CONNECTED")
    """)
    assert "CONNECTED" not in res.stdout
    assert_contained(res)
    assert "Network is unreachable" in res.stderr or "not allowed" in res.stderr


def test_write_outside_workdir(mode):
    token = secrets.token_hex(6)
    victim_tmp = f"/tmp/scgrpo_redteam_{token}"
    victim_repo = os.path.join(FIXTURES, f"pwned_{token}")
    res = run(f"""
        open({victim_tmp!r}, "w").write("x")    # lands in a private tmpfs (root mode) ...
        open({victim_repo!r}, "w").write("x")   # ... and the host tree is read-only
    """)
    assert_contained(res)
    assert not os.path.exists(victim_tmp)
    assert not os.path.exists(victim_repo)
    assert "Read-only file system" in res.stderr or "Permission denied" in res.stderr or "not allowed" in res.stderr


def test_delete_files_outside_workdir(mode):
    victim = os.path.join(FIXTURES, f"victim_{secrets.token_hex(6)}.txt")
    with open(victim, "w") as f:
        f.write("keep me")
    try:
        res = run(f"""
            import os
            os.remove({victim!r})
        """)
        assert_contained(res)
        assert os.path.exists(victim)
    finally:
        os.remove(victim)


def test_environment_secret_invisible(mode, monkeypatch):
    secret = "sk-" + secrets.token_hex(12)
    monkeypatch.setenv("SCGRPO_TEST_SECRET", secret)
    res = run("""
        import os
        print("env:", os.environ.get("SCGRPO_TEST_SECRET"))
        print(sorted(os.environ))
        print(open(f"/proc/{os.getppid()}/environ", "rb").read())
    """)
    assert secret not in res.stdout and secret not in res.stderr
    assert "env: None" in res.stdout
    assert "SCGRPO_TEST_SECRET" not in res.stdout
    assert_contained(res)  # reading the host's /proc/<pid>/environ fails


def test_allocate_10_gb(mode):
    res = run("x = bytearray(10 * 1024 ** 3)\nprint(len(x))")
    assert res.status == "memory"
    assert_contained(res)
    assert res.feedback() == "Memory limit exceeded."


def test_infinite_loop(mode):
    res = run("while True:\n    pass\n", limits=sb.SandboxLimits(wall_time_s=0.5, cpu_time_s=1))
    assert res.status == "timeout"
    assert_contained(res)
    assert res.wall_time_s < 5


def test_kill_parent(mode):
    res = run("""
        import os, signal
        os.kill(os.getppid(), signal.SIGKILL)
        print("KILLED PARENT")
    """)
    # We are still here; the program got an error.
    assert "KILLED PARENT" not in res.stdout
    assert_contained(res)
    assert "PermissionError" in res.stderr or "not allowed" in res.stderr


def test_exhaust_file_descriptors(mode):
    res = run("""
        fds = [open("main.py") for _ in range(100000)]
    """)
    assert_contained(res)
    assert "Too many open files" in res.stderr


def test_output_flood(mode):
    res = run("while True:\n    print('x' * 1000)\n")
    assert res.status == "output_limit"
    assert_contained(res)
    assert len(res.stdout.encode()) <= FAST.max_output_bytes


def test_batch_hostile_beside_benign(mode):
    hostile = [
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        "x = bytearray(10 * 1024 ** 3)\n",
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
        "while True:\n    pass\n",
        "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\n",
        "fds = [open('main.py') for _ in range(100000)]\n",
    ]
    benign = "a, b = map(int, input().split())\nprint(a + b)\n"
    jobs = [(h, "") for h in hostile[:3]] + [(benign, "2 40\n")] + [(h, "") for h in hostile[3:]]
    results = sb.run_batch(jobs, FAST, max_workers=2)
    assert len(results) == len(jobs)
    assert results[3].status == "ok" and results[3].stdout.strip() == "42"
    for i, res in enumerate(results):
        if i != 3:
            assert_contained(res)


def test_audit_fallback_blocks_sockets_and_kill():
    """The documented fallback (no namespaces): an audit hook refuses socket connects and signals."""
    srv = _listener()
    port = srv.getsockname()[1]
    try:
        for target in (("127.0.0.1", port), ("1.1.1.1", 53)):
            src = f"import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect({target!r})\nprint('CONNECTED')\n"
            res = sb.run_program(src, limits=FAST, mode="audit")
            assert res.status == "runtime_error" and "socket.connect is not allowed" in res.stderr, res
        with pytest.raises(socket.timeout):
            srv.accept()
    finally:
        srv.close()
    res = sb.run_program("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", limits=FAST, mode="audit")
    assert res.status == "runtime_error" and "os.kill is not allowed" in res.stderr


def test_require_namespaces_refuses_audit():
    with pytest.raises(sb.SandboxError):
        sb.run_program("print(1)", mode="audit", require_namespaces=True)
