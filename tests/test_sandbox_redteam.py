"""Red-team suite: hostile programs must be contained and answered with a feedback string.

Every attack runs in every kernel-enforced isolation mode this host can run (``root``, ``userns``, ``landlock``,
``seccomp``; each forced with ``mode=``, unavailable ones skipped with the probe's reason), so a host where root
works exercises all four. Small limits keep the whole file well under a minute on 2 cores.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import textwrap

import pytest

from scgrpo_verl.rewards import sandbox as sb

pytestmark = pytest.mark.timeout(60)

FAST = sb.SandboxLimits(wall_time_s=1.5, cpu_time_s=2, memory_mb=512, max_processes=16, max_open_files=64,
                        max_output_bytes=64 * 1024)
FIXTURES = os.path.dirname(os.path.abspath(__file__))  # a host directory outside the sandbox
# what a refused operation looks like, per mode: read-only mount / DAC / Landlock (EACCES), seccomp (EACCES/EPERM),
# the audit hook
REFUSED = ("Read-only file system", "Permission denied", "Operation not permitted", "not allowed")


def available(mode: str) -> str:
    reason = sb.probe_mode(mode)
    if reason is not None:
        pytest.skip(f"sandbox mode {mode!r} is not available on this host: {reason}")
    return mode


@pytest.fixture(params=sb.KERNEL_MODES)
def mode(request) -> str:
    return available(request.param)


def run(src: str, mode: str, stdin: str = "", limits: sb.SandboxLimits = FAST) -> sb.SandboxResult:
    res = sb.run_program(textwrap.dedent(src), stdin, limits, mode=mode)
    assert res.isolation == mode
    return res


def refused(res: sb.SandboxResult, mode: str, path: str) -> bool:
    """The program's error says the operation on ``path`` was refused, or, in the namespace modes, that ``path``
    does not exist: a host path below /tmp (CI's clone of this repo) is hidden by the private tmpfs."""
    messages = REFUSED
    if mode in ("root", "userns") and sb._under_private_tmpfs(os.path.realpath(path)):
        messages += ("No such file or directory",)
    return any(m in res.stderr for m in messages)


def assert_contained(res: sb.SandboxResult) -> None:
    """Not ok, a non-empty feedback string, and no process of the sandbox uid left alive."""
    assert res.status in sb.STATUSES
    assert res.status != "ok", res
    assert res.feedback().strip(), res
    if res.uid is not None:
        assert sb._live_pids_of_uid(res.uid) == []


def test_auto_mode_is_kernel_enforced():
    """On Linux the auto-selected mode is the first that works, and never ``audit`` while a kernel mode works --
    in particular not on a CI container without CAP_SYS_ADMIN where Landlock or seccomp still work."""
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux only")
    working = [m for m in sb.KERNEL_MODES if sb.probe_mode(m) is None]
    selected = sb.isolation_mode()
    assert selected == (working[0] if working else "audit")
    if any(m in working for m in ("landlock", "seccomp")):
        assert selected != "audit"
    if os.geteuid() == 0 and "root" in working:
        assert selected == "root"


def test_fork_bomb_contained(mode):
    res = run("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """, mode)
    assert res.status == "timeout"
    assert_contained(res)
    assert "Time limit exceeded" in res.feedback()


def test_setsid_escapee_is_killed(mode):
    # A child tries to leave the process group with setsid() (refused by the landlock/seccomp filter); the
    # process-group kill and the per-uid sweep must leave nothing behind either way.
    res = run("""
        import os, time
        if os.fork() == 0:
            try:
                os.setsid()
            except OSError as e:
                os.write(2, f"setsid refused: {e}\\n".encode())
            time.sleep(100)
        time.sleep(0.2)
        print("parent exits")
    """, mode)
    assert res.status == "ok" and "parent exits" in res.stdout
    if res.uid is not None:
        assert sb._live_pids_of_uid(res.uid) == []
    if mode in ("landlock", "seccomp"):
        assert "setsid refused: [Errno 1] Operation not permitted" in res.stderr


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
        """, mode)
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
    """, mode)
    assert "CONNECTED" not in res.stdout
    assert_contained(res)
    assert "Network is unreachable" in res.stderr or any(r in res.stderr for r in REFUSED)


@pytest.mark.parametrize("any_mode", sb.MODES)
def test_udp_sendto_blocked(any_mode):
    """UDP is not covered by Landlock's TCP rules: the seccomp socket filter (or the netns / audit hook) stops it."""
    mode = available(any_mode)
    res = run("""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"exfiltrated", ("1.1.1.1", 53))
        print("SENT")
    """, mode)
    assert "SENT" not in res.stdout
    assert_contained(res)
    assert res.status == "runtime_error"
    assert "Network is unreachable" in res.stderr or any(r in res.stderr for r in REFUSED)


def test_write_outside_workdir(mode):
    token = secrets.token_hex(6)
    victim_tmp = f"/tmp/scgrpo_redteam_{token}"
    victim_repo = os.path.join(FIXTURES, f"pwned_{token}")
    res = run(f"""
        try:
            open({victim_tmp!r}, "w").write("x")    # lands in a private tmpfs (root mode) or is refused ...
        except OSError as e:
            print("tmp refused:", e)
        open({victim_repo!r}, "w").write("x")       # ... and the host tree is read-only
    """, mode)
    assert_contained(res)
    assert not os.path.exists(victim_tmp)
    assert not os.path.exists(victim_repo)
    assert refused(res, mode, victim_repo), res.stderr
    if mode in ("landlock", "seccomp"):
        assert "tmp refused" in res.stdout


def test_delete_files_outside_workdir(mode):
    victim = os.path.join(FIXTURES, f"victim_{secrets.token_hex(6)}.txt")
    with open(victim, "w") as f:
        f.write("keep me")
    try:
        res = run(f"""
            import os
            os.remove({victim!r})
        """, mode)
        assert_contained(res)
        assert os.path.exists(victim)
        assert refused(res, mode, victim), res.stderr
    finally:
        os.remove(victim)


def test_environment_secret_invisible(mode, monkeypatch):
    secret = "sk-" + secrets.token_hex(12)
    monkeypatch.setenv("SCGRPO_TEST_SECRET", secret)
    res = run(f"""
        import os
        print("env:", os.environ.get("SCGRPO_TEST_SECRET"))
        print(sorted(os.environ))
        assert os.getppid() == {os.getpid()}
        print(open(f"/proc/{{os.getppid()}}/environ", "rb").read())
    """, mode)
    assert secret not in res.stdout and secret not in res.stderr
    assert "env: None" in res.stdout
    assert "SCGRPO_TEST_SECRET" not in res.stdout
    assert_contained(res)  # reading the host's /proc/<pid>/environ fails
    assert "Permission denied" in res.stderr or "No such file" in res.stderr


def test_allocate_10_gb(mode):
    res = run("x = bytearray(10 * 1024 ** 3)\nprint(len(x))", mode)
    assert res.status == "memory"
    assert_contained(res)
    assert res.feedback() == "Memory limit exceeded."


def test_infinite_loop(mode):
    res = run("while True:\n    pass\n", mode, limits=sb.SandboxLimits(wall_time_s=0.5, cpu_time_s=1))
    assert res.status == "timeout"
    assert_contained(res)
    assert res.wall_time_s < 5


def test_kill_parent(mode):
    res = run("""
        import os, signal
        os.kill(os.getppid(), signal.SIGKILL)
        print("KILLED PARENT")
    """, mode)
    # We are still here; the program got an error.
    assert "KILLED PARENT" not in res.stdout
    assert_contained(res)
    assert "PermissionError" in res.stderr or "not allowed" in res.stderr


def test_exhaust_file_descriptors(mode):
    res = run("""
        fds = [open("main.py") for _ in range(100000)]
    """, mode)
    assert_contained(res)
    assert "Too many open files" in res.stderr


def test_output_flood(mode):
    res = run("while True:\n    print('x' * 1000)\n", mode)
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
    results = sb.run_batch(jobs, FAST, max_workers=2, mode=mode)
    assert len(results) == len(jobs)
    assert results[3].status == "ok" and results[3].stdout.strip() == "42"
    for i, res in enumerate(results):
        assert res.isolation == mode
        if i != 3:
            assert_contained(res)


@pytest.mark.parametrize("layer_mode", ["landlock", "seccomp"])
def test_kernel_layers_hold_without_uid_drop(layer_mode, monkeypatch):
    """With the random-uid drop switched off (the child stays root with all capabilities, so DAC stops nothing),
    Landlock / the seccomp filter alone still refuse signals to host processes, writes and deletions outside the
    working directory and network sockets; Landlock mode also hides other processes' environ files."""
    if os.geteuid() != 0:
        pytest.skip("the uid drop only happens as root")
    available(layer_mode)
    monkeypatch.setattr(sb, "_KERNEL_MODES_DROP_UID", False)
    secret = "sk-" + secrets.token_hex(12)
    monkeypatch.setenv("SCGRPO_TEST_SECRET", secret)
    victim_proc = subprocess.Popen(["sleep", "30"])
    victim_file = os.path.join(FIXTURES, f"victim_{secrets.token_hex(6)}.txt")
    with open(victim_file, "w") as f:
        f.write("keep me")
    pwned = os.path.join(FIXTURES, f"pwned_{secrets.token_hex(6)}")
    attacks = {
        "kill": f"import os, signal\nos.kill({victim_proc.pid}, signal.SIGKILL)\n",
        "write": f"open({pwned!r}, 'w').write('x')\n",
        "delete": f"import os\nos.remove({victim_file!r})\n",
        "tcp": "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\n",
        "udp": "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('1.1.1.1', 53))\n",
    }
    if layer_mode == "landlock":
        attacks["environ"] = f"print(open('/proc/{os.getpid()}/environ', 'rb').read())\n"
    try:
        for name, src in attacks.items():
            res = sb.run_program(src, limits=FAST, mode=layer_mode)
            assert res.uid is None
            assert res.status == "runtime_error", (name, res)
            assert any(r in res.stderr for r in REFUSED), (name, res)
            assert secret not in res.stdout + res.stderr
        assert victim_proc.poll() is None
        assert os.path.exists(victim_file) and not os.path.exists(pwned)
        # the child really was root with capabilities: only the kernel layers refused
        res = sb.run_program("import os\nprint(os.geteuid())\n", limits=FAST, mode=layer_mode)
        assert res.stdout.strip() == "0"
    finally:
        victim_proc.kill()
        victim_proc.wait()
        os.remove(victim_file)
        if os.path.exists(pwned):
            os.remove(pwned)


def test_audit_fallback_blocks_sockets_and_kill():
    """The documented fallback (no kernel isolation): an audit hook refuses socket connects and signals."""
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
