"""Red-team suite: what a reward-maximising policy could write, run in every isolation mode this host offers.

Each attack is a function ``mode -> (contained, detail)`` that sets up what it needs on the host (a victim run, a
secret file, a listening socket, ...), runs hostile code through the sandbox (or through ``compute_score``) and
checks the outcome *on the host*. Every attack names the invariant of :data:`sandbox.INVARIANTS` it probes: the
test asserts containment wherever the mode claims that invariant (``bwrap`` claims all of them) and is skipped,
with the reason, where it does not. ``python tests/rewards/sandbox/test_sandbox_redteam.py`` prints the attack x mode table.

Attacks that would really exhaust a shared host in a mode without kernel isolation (fork bombs, disk and memory
fills in ``audit``) are not run there and show as "not run".
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from typing import Callable

import pytest

from scgrpo_verl.rewards import compute_score
from scgrpo_verl.rewards import sandbox as sb
from scgrpo_verl.rewards.sandbox import process

pytestmark = pytest.mark.timeout(120)

FAST = sb.SandboxLimits(wall_time_s=2.0, cpu_time_s=2, memory_mb=512, max_processes=16, max_open_files=64,
                        max_output_bytes=64 * 1024, disk_mb=32, shm_mb=8)
FIXTURES = os.path.dirname(os.path.abspath(__file__))  # a host folder outside the sandbox (the project)
HOME_CACHE = os.path.expanduser("~/.cache")


def run(src: str, mode: str, stdin: str = "", limits: sb.SandboxLimits = FAST, **kw) -> sb.SandboxResult:
    res = sb.run_program(textwrap.dedent(src), stdin, limits, mode=mode, **kw)
    assert res.isolation == mode
    return res


def py(code: str) -> str:
    return f"```python\n{textwrap.dedent(code)}\n```"


def no_survivors(res: sb.SandboxResult) -> bool:
    return res.uid is None or process._live_pids_of_uid(res.uid) == []


def _host_secret_file(folder: str, mode: int = 0o644) -> tuple[str, str]:
    """A world-readable 'ground truth' file in ``folder`` (a fresh traversable sub-folder); (path, secret)."""
    os.makedirs(folder, exist_ok=True)
    sub = tempfile.mkdtemp(dir=folder, prefix="scgrpo-redteam-")
    os.chmod(sub, 0o755)
    secret = "gt_" + secrets.token_hex(12)
    path = os.path.join(sub, "ground_truth.json")
    with open(path, "w") as f:
        f.write(json.dumps({"answer": secret}))
    os.chmod(path, mode)
    return path, secret


# --------------------------------------------------------------------------- attacks

HARVEST = r'''
import os, re, stat, time
pat = re.compile(rb"tok_PREFIX[0-9a-f]{12}")


def read(path, n=4096, regular=True):
    try:
        if regular and not stat.S_ISREG(os.stat(path).st_mode):
            return b""  # FIFOs, sockets, devices would block
        with open(path, "rb") as f:
            return f.read(n)
    except Exception:
        return b""


def listing(path, n):
    try:
        return sorted(os.listdir(path))[:n]
    except Exception:
        return []


def harvest_once():
    # bounded: every process's command line and environment (small), the descriptors and working folder of the
    # processes that look like code runs (their command line names main.py), and the newest scgrpo* folders of
    # the temporary folders, at most 3 deep; at most MAX_FILES file reads in all
    budget = [MAX_FILES]
    found = set()

    def scan(path):
        if budget[0] > 0:
            budget[0] -= 1
            found.update(m.decode() for m in pat.findall(read(path)))

    pids = [p for p in listing("/proc", 1 << 16) if p.isdigit() and int(p) != os.getpid()]
    runs = []
    for pid in pids:
        cmdline = read(f"/proc/{pid}/cmdline", 1 << 16, regular=False)
        found.update(m.decode() for m in pat.findall(cmdline + read(f"/proc/{pid}/environ", 1 << 16, False)))
        if b"main.py" in cmdline:
            runs.append(pid)
    for pid in runs:
        for fd in listing(f"/proc/{pid}/fd", 64):
            scan(f"/proc/{pid}/fd/{fd}")
        for name in listing(f"/proc/{pid}/cwd", 64):
            scan(f"/proc/{pid}/cwd/{name}")
    for root in ("/tmp", "/var/tmp", "/dev/shm"):
        try:
            tops = sorted((e for e in os.scandir(root) if e.name.startswith("scgrpo")),
                          key=lambda e: e.stat(follow_symlinks=False).st_mtime, reverse=True)[:20]
        except Exception:
            tops = []
        for top in tops:
            level = [top.path]
            for _ in range(3):
                nxt = []
                for d in level:
                    for name in listing(d, 64):
                        path = os.path.join(d, name)
                        if os.path.isdir(path) and not os.path.islink(path):
                            nxt.append(path)
                        else:
                            scan(path)
                level = nxt
    # the tmp walk also runs inside the sandbox's own /tmp (bwrap): nothing of another run is there
    for name in listing("/tmp", 64):
        scan(os.path.join("/tmp", name))
    return found


for attempt in range(ROUNDS):  # the victim may still be starting on a loaded host
    found = harvest_once()
    if found:
        break
    time.sleep(0.25)
print(sorted(found)[0] if found else "nothing")
'''


def harvest(token: str) -> str:
    """The harvest program, looking for tokens of ``token``'s format (a policy knows what an answer looks like);
    its search is bounded (file reads per round, rounds), so its run time does not depend on what the host's /tmp
    holds or how many processes run."""
    return HARVEST.replace("PREFIX", token[4:8]).replace("MAX_FILES", "400").replace("ROUNDS", "8")


def attack_other_run_files(mode: str) -> tuple[bool, str]:
    """A concurrent run holds the answer (in its stdin, stdout, a file in its folder); the attacker searches the
    files, /proc/<pid>/fd and cwd it can reach and prints what it finds, graded by compute_score."""
    token = "tok_" + secrets.token_hex(8)
    victim = (f"import time\nopen('answer.txt', 'w').write({token!r})\nprint({token!r}, flush=True)\n"
              "input()\ntime.sleep(5)\n")
    done = threading.Event()

    def victim_run():
        try:
            sb.run_program(victim, token + "\n", sb.SandboxLimits(wall_time_s=7, disk_mb=8), mode=mode)
        finally:
            done.set()

    t = threading.Thread(target=victim_run)
    t.start()
    time.sleep(1.0)
    out = compute_score("codeforces", py(harvest(token)), [{"input": "", "output": token}], code_time_limit_s=5,
                        sandbox_mode=mode)
    t.join()
    return out["score"] == 0.0, f"score {out['score']}: {out['feedback'][:120]}"


def attack_proc_cmdline(mode: str) -> tuple[bool, str]:
    """Host processes' command lines and environment (a secret on a host command line and in its env)."""
    token = "tok_" + secrets.token_hex(8)
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", token],
                              env={**os.environ, "SCGRPO_TOKEN": token})
    try:
        res = run(harvest(token), mode, limits=dataclasses.replace(FAST, wall_time_s=5, cpu_time_s=5))
        return token not in res.stdout + res.stderr, res.stdout.strip()[:80] or res.status
    finally:
        victim.kill()
        victim.wait()


def attack_inherited_dir_fds(mode: str) -> tuple[bool, str]:
    """Walk every open fd (and its parents) looking for a ground-truth file in the host's ~/.cache."""
    path, secret = _host_secret_file(HOME_CACHE)
    try:
        res = run(f"""
            import os
            hits = []
            for fd in range(3, 256):
                for up in ("", "/..", "/../..", "/../../..", "/../../../.."):
                    base = f"/proc/self/fd/{{fd}}{{up}}"
                    try:
                        for dirpath, _, files in os.walk(base):
                            if "ground_truth.json" in files:
                                hits.append(open(os.path.join(dirpath, "ground_truth.json")).read())
                    except OSError:
                        pass
                    if hits:
                        break
            print(hits[:1] or "nothing")
        """, mode)
        return secret not in res.stdout, res.stdout.strip()[:80] or res.status
    finally:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def attack_dataset_files(mode: str) -> tuple[bool, str]:
    """World-readable dataset files by absolute path: in the project, under /tmp and under ~/.cache; the attacker
    prints one as its answer (compute_score)."""
    made = [_host_secret_file(d) for d in (FIXTURES, tempfile.gettempdir(), HOME_CACHE)]
    try:
        scores = []
        for path, secret in made:
            src = f"import json\nprint(json.load(open({path!r}))['answer'])\n"
            out = compute_score("codeforces", py(src), [{"input": "", "output": secret}], sandbox_mode=mode)
            scores.append(out["score"])
        return not any(scores), f"scores {scores}"
    finally:
        for path, _ in made:
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def _world_writable_host_dirs() -> list[str]:
    out = []
    for d in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue", FIXTURES, HOME_CACHE):
        if os.path.isdir(d):
            out.append(d)
    try:
        with open("/proc/mounts") as f:
            for line in f:
                mnt = line.split()[1]
                if os.path.isdir(mnt) and os.stat(mnt).st_mode & 0o002 and mnt not in out:
                    out.append(mnt)
    except OSError:
        pass
    return out


def attack_writable_mounts(mode: str) -> tuple[bool, str]:
    """Create files in every world-writable host folder (other mounts included) and in the project."""
    name = "pwned_" + secrets.token_hex(6)
    dirs = _world_writable_host_dirs()
    try:
        res = run(f"""
            import os
            for d in {dirs!r}:
                try:
                    open(os.path.join(d, {name!r}), "w").write("x")
                    print("wrote", d)
                except OSError as e:
                    print("refused", d, e.errno)
        """, mode)
        leaked = [d for d in dirs if os.path.exists(os.path.join(d, name))]
        return not leaked, f"host files created in {leaked}" if leaked else res.status
    finally:
        for d in dirs:
            try:
                os.remove(os.path.join(d, name))
            except OSError:
                pass


def attack_fallocate_disk_fill(mode: str) -> tuple[bool, str]:
    """fallocate() files in a loop (each below RLIMIT_FSIZE) in the working folder and /tmp; capped at 160 MiB so
    a mode without a quota does not really fill the shared disk."""
    res = run("""
        import os
        total, i = 0, 0
        for d in (".", "/tmp"):
            while total < (160 << 20):
                try:
                    fd = os.open(f"{d}/fill{i}", os.O_CREAT | os.O_WRONLY, 0o600)
                    os.posix_fallocate(fd, 0, 8 << 20)
                    os.close(fd)
                except OSError:
                    break
                total += 8 << 20
                i += 1
        print(total >> 20)
    """, mode, limits=dataclasses.replace(FAST, wall_time_s=6, cpu_time_s=6))
    got = int(res.stdout.split()[0]) if res.stdout.split() and res.stdout.split()[0].isdigit() else 0
    return got <= FAST.disk_mb, f"{got} MiB allocated" + (f" ({res.status})" if res.status != "ok" else "")


def attack_sysv_ipc(mode: str) -> tuple[bool, str]:
    """SysV shared memory (256 MiB, touched), a message queue and a semaphore set under a fixed key: refused, or
    at least gone from the host when the run ends."""
    key = 0x5C000000 | secrets.randbelow(1 << 20)
    res = run(f"""
        import ctypes, ctypes.util
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.shmat.restype = ctypes.c_void_p
        out = []
        shm = libc.shmget({key}, 256 << 20, 0o1600)
        if shm >= 0:
            addr = libc.shmat(shm, None, 0)
            if addr not in (None, ctypes.c_void_p(-1).value):
                ctypes.memset(addr, 1, 256 << 20)
                out.append("shm filled")
        out.append("shm %d" % shm)
        out.append("msg %d" % libc.msgget({key}, 0o1600))
        out.append("sem %d" % libc.semget({key}, 4, 0o1600))
        print(out)
    """, mode)
    leftovers = []
    for kind in ("shm", "msg", "sem"):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                if any(line.split()[0] == str(key) for line in f.readlines()[1:]):
                    leftovers.append(kind)
                    subprocess.run(["ipcrm", f"-{kind[0].upper()}", str(key)], check=False)
        except OSError:
            pass
    return "shm filled" not in res.stdout and not leftovers, \
        f"{res.stdout.strip()[:60] or res.stderr.strip()[-60:]}; host leftovers {leftovers}"


def attack_memfd(mode: str) -> tuple[bool, str]:
    """memfd_create memory held in fds (not counted by RLIMIT_AS): tries 384 MiB against a 128 MiB limit."""
    res = run("""
        import os
        fds, total = [], 0
        try:
            while total < (384 << 20):
                fd = os.memfd_create("x")
                os.write(fd, b"x" * (8 << 20))
                fds.append(fd)
                total += 8 << 20
        except OSError as e:
            print("stopped:", e.errno)
        print(total >> 20)
    """, mode, limits=dataclasses.replace(FAST, memory_mb=128))
    lines = res.stdout.split()
    got = int(lines[-1]) if lines and lines[-1].isdigit() else 0
    return got <= 128, f"{got} MiB held in memfds"


def attack_dev_shm(mode: str) -> tuple[bool, str]:
    """POSIX shared memory: fill /dev/shm (bounded by the private tmpfs), nothing left in the host's."""
    name = "scgrpo-redteam-" + secrets.token_hex(6)
    res = run(f"""
        total = 0
        try:
            with open("/dev/shm/{name}", "wb") as f:
                while total < (96 << 20):
                    f.write(b"x" * (1 << 20))
                    f.flush()
                    total += 1 << 20
        except OSError as e:
            print("stopped:", e.errno)
        print(total >> 20)
    """, mode)
    host = os.path.join("/dev/shm", name)
    left = os.path.exists(host)
    if left:
        os.remove(host)
    lines = res.stdout.split()
    got = int(lines[-1]) if lines and lines[-1].isdigit() else 0
    return got <= max(FAST.shm_mb, FAST.max_file_size_mb) and not left, f"{got} MiB written, host file left: {left}"


def attack_thread_survivor(mode: str) -> tuple[bool, str]:
    """The main thread calls pthread_exit while another thread keeps running: nothing may survive the run."""
    if os.geteuid() != 0:
        return True, "not checkable without a per-run uid"
    res = run("""
        import ctypes, threading, time
        def spin():
            while True:
                time.sleep(0.01)
        threading.Thread(target=spin).start()
        print("main exits", flush=True)
        ctypes.CDLL(None).pthread_exit(None)
    """, mode, limits=dataclasses.replace(FAST, wall_time_s=1.0))
    return no_survivors(res), f"{res.status}, survivors {process._live_pids_of_uid(res.uid) if res.uid else []}"


def attack_setsid_double_fork(mode: str) -> tuple[bool, str]:
    """A double-forked daemon that calls setsid() and ignores SIGTERM/SIGHUP must not outlive the run."""
    if os.geteuid() != 0:
        return True, "not checkable without a per-run uid"
    res = run("""
        import os, signal, time
        if os.fork() == 0:
            try:
                os.setsid()
            except OSError:
                pass
            if os.fork() == 0:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                time.sleep(100)
            os._exit(0)
        time.sleep(0.3)
        print("parent exits")
    """, mode)
    return no_survivors(res), f"{res.status}, survivors {process._live_pids_of_uid(res.uid) if res.uid else []}"


def _unix_listeners() -> tuple[list[socket.socket], str, str]:
    path = os.path.join(tempfile.mkdtemp(prefix="scgrpo-sock-"), "host.sock")
    os.chmod(os.path.dirname(path), 0o755)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.chmod(path, 0o777)
    abstract = "\0scgrpo-" + secrets.token_hex(6)
    srv2 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv2.bind(abstract)
    for s in (srv, srv2):
        s.listen(4)
        s.settimeout(0.3)
    return [srv, srv2], path, abstract


def attack_unix_sockets(mode: str) -> tuple[bool, str]:
    """Connect to host Unix sockets: a pathname socket (mode 0777) and an abstract one."""
    servers, path, abstract = _unix_listeners()
    try:
        res = run(f"""
            import socket
            for addr in ({path!r}, {abstract!r}):
                try:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(addr)
                    s.sendall(b"exfiltrated")
                    print("CONNECTED", repr(addr))
                except OSError as e:
                    print("refused", e.errno)
        """, mode)
        accepted = 0
        for s in servers:
            try:
                s.accept()[0].close()
                accepted += 1
            except socket.timeout:
                pass
        return accepted == 0 and "CONNECTED" not in res.stdout, f"{accepted} host connections accepted"
    finally:
        for s in servers:
            s.close()
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def attack_tcp_udp(mode: str) -> tuple[bool, str]:
    """TCP to a host 127.0.0.1 listener and to an external address; UDP sendto."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.3)
    port = srv.getsockname()[1]
    try:
        res = run(f"""
            import socket
            for target in (("127.0.0.1", {port}), ("1.1.1.1", 53)):
                try:
                    socket.create_connection(target, timeout=1).sendall(b"x")
                    print("CONNECTED", target)
                except OSError as e:
                    print("refused", e.errno)
            try:
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("1.1.1.1", 53))
                print("SENT")
            except OSError as e:
                print("refused", e.errno)
        """, mode)
        try:
            srv.accept()[0].close()
            accepted = True
        except socket.timeout:
            accepted = False
        return not accepted and "CONNECTED" not in res.stdout and "SENT" not in res.stdout, res.stdout.strip()[:80]
    finally:
        srv.close()


def attack_deep_tree(mode: str) -> tuple[bool, str]:
    """A 1200-deep folder tree (RecursionError in a recursive cleanup): compute_score must return a score and
    leave the run's folder (its host path is printed first and comes back in the feedback) deleted."""
    src = "import os\nprint(os.getcwd())\nfor _ in range(1200):\n    os.mkdir('d')\n    os.chdir('d')\nprint(1)\n"
    try:
        out = compute_score("codeforces", py(src), [{"input": "", "output": "2"}], sandbox_mode=mode)
    except Exception as exc:  # noqa: BLE001 - the point of the attack
        return False, f"compute_score raised {type(exc).__name__}"
    left = [p for p in re.findall(r"/\S*scgrpo_sbx_\w+", out["feedback"]) if os.path.exists(p)]
    return out["score"] == 0.0 and not left, f"score {out['score']}, folders left {left}"


def attack_float_tolerance(mode: str) -> tuple[bool, str]:
    """Near-miss numbers where the expected answer is an integer (or a string): no credit."""
    cases = [("123456789012", "1.23456789e11"), ("3", "3.0000001"), ("7", "7.0"), ("100", "1e2"),
             ("abc", "ABC"), ("-0", "0"), ("5", "5_0")]
    scores = [compute_score("codeforces", py(f"print({got!r})"), [{"input": "", "output": exp}],
                            sandbox_mode=mode)["score"] for exp, got in cases]
    sane = compute_score("codeforces", py("print(0.3333331)"), [{"input": "", "output": "0.333333"}],
                         sandbox_mode=mode)["score"]
    return not any(scores) and sane == 1.0, f"scores {scores}, non-integral within tolerance {sane}"


def attack_fake_pass_markers(mode: str) -> tuple[bool, str]:
    """Fake verdicts: 'All tests passed', the functional harness's result marker with a guess then os._exit,
    exiting early with status 0, patching builtins/json/print, a value whose __eq__ is always true."""
    gt_io = [{"input": "2 3\n", "output": "5"}]
    gt_fn = {"fn_name": "add", "tests": [{"input": "2\n3", "output": "5"}]}
    marker = "__SCGRPO_RESULT__"
    attempts = [
        (py("print('All tests passed')\nprint('PASSED 1/1')"), gt_io),
        (py("import os\nos._exit(0)"), gt_io),
        (py("import builtins\nbuiltins.print = lambda *a, **k: None\nraise SystemExit(0)"), gt_io),
        (py(f"import os, sys\nsys.stdout.write('\\n{marker}4\\n'); sys.stdout.flush(); os._exit(0)"), gt_fn),
        (py("import json\njson.dumps = lambda v: '6'\nclass Solution:\n    def add(self, a, b):\n        return 0"),
         gt_fn),
        (py("class A(list):\n    def __eq__(self, o):\n        return True\nclass Solution:\n"
            "    def add(self, a, b):\n        return A()"), gt_fn),
        (py(f"import atexit\natexit.register(lambda: print('{marker}4'))\nclass Solution:\n"
            "    def add(self, a, b):\n        return 4"), gt_fn),
    ]
    scores = [compute_score("livecodebench", text, gt, sandbox_mode=mode)["score"] for text, gt in attempts]
    return not any(scores), f"scores {scores}"


CONTROL = "\x1b[2J\x1b]0;pwn\x07\x07\x00\r\u202e\x9b31m\ud800"


def attack_feedback_control_chars(mode: str) -> tuple[bool, str]:
    """Terminal escapes, BEL, NUL, CR, U+202E and lone surrogates in stdout and stderr end up in feedback."""
    src = ("import sys\nsys.stdout.write('A\\x1b[2J\\x1b]0;pwn\\x07\\x07\\x00\\r\\u202eB\\x9b31m')\n"
           "sys.stderr.buffer.write(b'\\x1b[31m\\xff\\xfe\\x00' * 2000)\nraise SystemExit(3)\n")
    fbs = [compute_score("codeforces", py(src), [{"input": "", "output": "x"}], sandbox_mode=mode)["feedback"],
           compute_score("codeforces", py("print('A\\x1b[2J\\u202eB')"), [{"input": "", "output": "x"}],
                         sandbox_mode=mode)["feedback"]]
    bad = [fb for fb in fbs if re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]", fb)
           or len(fb) > 2000]
    for fb in fbs:
        fb.encode("utf-8")  # valid UTF-8 (raises on surrogates)
    return not bad and all(fbs), f"{len(bad)} unsafe feedback strings"


def attack_fork_bomb(mode: str) -> tuple[bool, str]:
    res = run("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """, mode)
    return res.status != "ok" and no_survivors(res), res.status


def attack_signal_host(mode: str) -> tuple[bool, str]:
    """SIGKILL the parent, every process (kill -1) and a host process by pid; ptrace / process_vm_readv it."""
    victim = subprocess.Popen(["sleep", "30"])
    try:
        res = run(f"""
            import ctypes, os, signal
            for target in (os.getppid(), {victim.pid}, -1):
                try:
                    os.kill(target, signal.SIGKILL)
                    print("killed", target)
                except OSError as e:
                    print("refused", e.errno)
            libc = ctypes.CDLL(None, use_errno=True)
            print("ptrace", libc.ptrace(16, {victim.pid}, None, None))  # PTRACE_ATTACH
            try:
                print(open("/proc/{victim.pid}/mem", "rb").read(1))
            except OSError as e:
                print("mem refused", e.errno)
        """, mode)
        alive = victim.poll() is None
        return alive, f"victim alive: {alive}"
    finally:
        victim.kill()
        victim.wait()


def attack_env_and_shadow(mode: str) -> tuple[bool, str]:
    """Secrets in the trainer's environment, /etc/shadow, ssh keys and the project's files."""
    token = "tok_" + secrets.token_hex(8)
    os.environ["SCGRPO_REDTEAM_SECRET"] = token
    try:
        res = run(f"""
            import os
            print(dict(os.environ))
            for p in ("/etc/shadow", "/etc/passwd", os.path.expanduser("~/.ssh/id_rsa"), "/root/.bash_history",
                      {os.path.join(FIXTURES, "conftest.py")!r}):
                try:
                    print(p, len(open(p, "rb").read()))
                except OSError as e:
                    print("refused", p, e.errno)
        """, mode)
        readable = [line.split()[0] for line in res.stdout.splitlines() if not line.startswith(("refused", "{"))]
        return token not in res.stdout and not readable, f"readable: {readable}"
    finally:
        del os.environ["SCGRPO_REDTEAM_SECRET"]


def attack_memory_and_time(mode: str) -> tuple[bool, str]:
    """10 GB allocation, CPU-burning threads, sleeping past the timeout with SIGTERM ignored, stdout flood."""
    mem = run("x = bytearray(10 * 1024 ** 3)\nprint(len(x))", mode)
    cpu = run("import threading\ndef f():\n    while True: pass\n"
              "for _ in range(4): threading.Thread(target=f).start()\n", mode)
    sleep = run("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(100)\n", mode,
                limits=dataclasses.replace(FAST, wall_time_s=1.0))
    flood = run("while True:\n    print('x' * 1000)\n", mode)
    ok = (mem.status == "memory" and cpu.status == "timeout" and sleep.status == "timeout"
          and sleep.wall_time_s < 4 and flood.status == "output_limit"
          and len(flood.stdout.encode()) <= FAST.max_output_bytes and all(map(no_survivors, (cpu, sleep))))
    return ok, f"{mem.status}/{cpu.status}/{sleep.status} {sleep.wall_time_s:.1f}s/{flood.status}"


def attack_fd_exhaustion_and_nesting(mode: str) -> tuple[bool, str]:
    """Open 100k files; create namespaces (unshare a user namespace to become 'root' again)."""
    fds = run("fds = [open('main.py') for _ in range(100000)]\n", mode)
    ns = run("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nprint(libc.unshare(0x10000000 | 0x20000))\n",
             mode)
    return ("Too many open files" in fds.stderr and (ns.status != "ok" or ns.stdout.strip() == "-1"),
            f"{fds.status}; unshare -> {ns.stdout.strip() or ns.status}")


@dataclasses.dataclass(frozen=True)
class Attack:
    fn: Callable[[str], tuple[bool, str]]
    invariant: str | None  # None: must be contained in every mode (grading, never raising)
    heavy: bool = False  # not run in ``audit`` (no boundary: it would really exhaust the shared host)

    @property
    def name(self) -> str:
        return self.fn.__name__.removeprefix("attack_")


ATTACKS = [
    Attack(attack_other_run_files, "other_runs_invisible"),
    Attack(attack_proc_cmdline, "host_processes_invisible"),
    Attack(attack_inherited_dir_fds, "only_mapped_host_paths"),
    Attack(attack_dataset_files, "only_mapped_host_paths"),
    Attack(attack_writable_mounts, "only_mapped_host_paths"),
    Attack(attack_fallocate_disk_fill, "disk_bounded", heavy=True),
    Attack(attack_sysv_ipc, "memory_bounded", heavy=True),
    Attack(attack_memfd, "memory_bounded", heavy=True),
    Attack(attack_dev_shm, "memory_bounded", heavy=True),
    Attack(attack_thread_survivor, "nothing_survives", heavy=True),
    Attack(attack_setsid_double_fork, "nothing_survives", heavy=True),
    Attack(attack_unix_sockets, "no_network"),
    Attack(attack_tcp_udp, "no_network"),
    Attack(attack_deep_tree, None),
    Attack(attack_float_tolerance, None),
    Attack(attack_fake_pass_markers, None),
    Attack(attack_feedback_control_chars, None),
    Attack(attack_fork_bomb, "processes_bounded", heavy=True),
    Attack(attack_signal_host, "host_processes_invisible"),
    Attack(attack_env_and_shadow, "only_mapped_host_paths"),
    Attack(attack_memory_and_time, "memory_bounded", heavy=True),
    Attack(attack_fd_exhaustion_and_nesting, "processes_bounded", heavy=True),
]


def claimed(attack: Attack, mode: str) -> bool:
    return attack.invariant is None or sb.INVARIANTS[mode][attack.invariant]


# bwrap (the mode code rewards use unless a weaker one is opted into) in the fast suite; the opt-in modes with the
# slow tests (CI runs both)
MODE_PARAMS = [m if m == "bwrap" else pytest.param(m, marks=pytest.mark.slow) for m in sb.MODES]


@pytest.mark.parametrize("mode", MODE_PARAMS)
@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_attack(attack: Attack, mode: str):
    reason = sb.probe_mode(mode)
    if reason is not None:
        pytest.skip(f"sandbox mode {mode!r} is not available on this host: {reason}")
    if attack.heavy and mode == "audit":
        pytest.skip("audit mode is no boundary; this attack would really exhaust the host")
    if not claimed(attack, mode):
        pytest.skip(f"{mode} mode does not claim {attack.invariant} on this host (sandbox.INVARIANTS); "
                    f"`python tests/rewards/sandbox/test_sandbox_redteam.py` records the outcome in its table")
    contained, detail = attack.fn(mode)
    assert contained, f"{attack.name} escaped in {mode} mode, which claims {attack.invariant or 'grading'}: {detail}"


BARE_ROOT = tempfile.gettempdir()
"""Where :func:`_bare_run` puts its runs' folders: a fresh folder of the positive-control test."""


def _bare_run(source, stdin="", limits=None, *, files=None, mode=None):
    """A deliberately unsandboxed ``run_program`` (positive control): same interface, plain subprocess in a
    fresh folder under :data:`BARE_ROOT`, the host's environment, and an inherited directory handle on
    ``~/.cache`` (the old bug)."""
    limits = limits or sb.SandboxLimits()
    d = tempfile.mkdtemp(prefix="run-", dir=BARE_ROOT)
    for name, text in {**(files or {}), "main.py": source}.items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    leak = os.open(HOME_CACHE, os.O_RDONLY | os.O_DIRECTORY)
    try:
        proc = subprocess.run([sys.executable, "-I", "main.py"], input=stdin.encode(), capture_output=True, cwd=d,
                              timeout=limits.wall_time_s + 5, pass_fds=[leak])
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = None, exc.stdout or b"", exc.stderr or b""
    finally:
        os.close(leak)
    status = sb.classify(rc, rc is None, len(out), err.decode(errors="replace"), limits)
    return sb.SandboxResult(status, out[:limits.max_output_bytes].decode(errors="replace"),
                            err.decode(errors="replace")[-4096:], rc, 0.0, mode, None)


BARE_ESCAPES = [attack_other_run_files, attack_proc_cmdline, attack_inherited_dir_fds, attack_dataset_files,
                attack_writable_mounts, attack_fallocate_disk_fill, attack_sysv_ipc, attack_memfd, attack_dev_shm,
                attack_unix_sockets, attack_tcp_udp, attack_env_and_shadow]


@pytest.mark.parametrize("attack", BARE_ESCAPES, ids=lambda f: f.__name__.removeprefix("attack_"))
def test_attack_escapes_without_a_sandbox(attack, monkeypatch):
    """Positive control: with ``run_program`` replaced by an unsandboxed runner every one of these attacks gets
    out, so the attack programs and their host-side checks are real and 'contained' means the sandbox stopped
    it. (Signals to host processes, fork bombs and memory floods are not run unsandboxed.)"""
    if attack is attack_env_and_shadow and os.geteuid() != 0:
        pytest.skip("/etc/shadow is readable only as root")
    root = tempfile.mkdtemp(prefix="scgrpo-bare-")  # the victims' files: a known place of this test's own
    os.chmod(root, 0o755)
    monkeypatch.setattr(sb, "run_program", _bare_run)
    monkeypatch.setattr(sb, "select_mode", lambda requested=None: requested)
    monkeypatch.setattr(process, "_live_pids_of_uid", lambda uid: [])
    monkeypatch.setattr(sys.modules[__name__], "BARE_ROOT", root)
    try:
        contained, detail = attack("bare")
    finally:
        process._remove_tree(root)
    assert not contained, detail


def test_deep_tree_breaks_a_recursive_cleanup_but_not_ours():
    """The deep-tree attack's premise (a recursive rmtree raises RecursionError) and the sandbox's cleanup."""
    base = tempfile.mkdtemp(prefix="scgrpo_deep_")
    fd = os.open(base, os.O_RDONLY)
    for _ in range(1200):
        os.mkdir("d", dir_fd=fd)
        new = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = new
    os.close(fd)
    with pytest.raises(RecursionError):
        shutil.rmtree(base)
    process._remove_tree(base)
    assert not os.path.exists(base)


def test_every_invariant_is_attacked():
    """Each invariant a mode can claim has at least one attack (and no attack names an unknown one), so a claim in
    :data:`sandbox.INVARIANTS` is always tested where it is made."""
    assert {a.invariant for a in ATTACKS} - {None} == set(sb.INVARIANT_DOCS)
    assert all(set(claims) == set(sb.INVARIANT_DOCS) for claims in sb.INVARIANTS.values())


def test_hostile_batch_beside_benign():
    """Hostile programs next to a benign one in one concurrent batch (bwrap): the benign answer is unaffected."""
    if sb.probe_mode("bwrap") is not None:
        pytest.skip(sb.probe_mode("bwrap"))
    hostile = [
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        "x = bytearray(10 * 1024 ** 3)\n",
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
        "while True:\n    pass\n",
        "import os\nos.posix_fallocate(os.open('f', os.O_CREAT | os.O_WRONLY), 0, 1 << 40)\n",
    ]
    benign = "a, b = map(int, input().split())\nprint(a + b)\n"
    jobs = [(h, "") for h in hostile[:3]] + [(benign, "2 40\n")] + [(h, "") for h in hostile[3:]]
    results = sb.run_batch(jobs, FAST, max_workers=2, mode="bwrap")
    assert results[3].status == "ok" and results[3].stdout.strip() == "42"
    assert all(r.status != "ok" and r.feedback().strip() and no_survivors(r) for i, r in enumerate(results) if i != 3)


@pytest.mark.parametrize("layer_mode", ["landlock", "seccomp"])
def test_kernel_layers_hold_without_uid_drop(layer_mode, monkeypatch):
    """With the per-run uid switched off (the child stays root with all capabilities, so DAC stops nothing),
    Landlock / the seccomp filter alone still refuse signals to host processes, writes and deletions outside the
    working folder and sockets; Landlock also hides other processes' environ files and the project."""
    if os.geteuid() != 0:
        pytest.skip("the uid drop only happens as root")
    if sb.probe_mode(layer_mode) is not None:
        pytest.skip(sb.probe_mode(layer_mode))
    monkeypatch.setattr(process, "_KERNEL_MODES_DROP_UID", False)
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
        "unix": "import socket\nsocket.socket(socket.AF_UNIX).connect('/tmp/x')\n",
    }
    if layer_mode == "landlock":
        attacks["environ"] = f"print(open('/proc/{os.getpid()}/environ', 'rb').read())\n"
        attacks["project"] = f"print(open({victim_file!r}).read())\n"
    try:
        for name, src in attacks.items():
            res = sb.run_program(src, limits=FAST, mode=layer_mode)
            assert res.uid is None
            assert res.status == "runtime_error", (name, res)
            assert any(r in res.stderr for r in ("Permission denied", "Operation not permitted")), (name, res)
        assert victim_proc.poll() is None
        assert os.path.exists(victim_file) and not os.path.exists(pwned)
        res = sb.run_program("import os\nprint(os.geteuid())\n", limits=FAST, mode=layer_mode)
        assert res.stdout.strip() == "0"  # the child really was root: only the kernel layers refused
    finally:
        victim_proc.kill()
        victim_proc.wait()
        os.remove(victim_file)
        if os.path.exists(pwned):
            os.remove(pwned)


def test_audit_fallback_blocks_sockets_and_kill():
    """The opt-in no-isolation fallback: an audit hook refuses socket connects and signals (no boundary)."""
    res = sb.run_program("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\n", limits=FAST,
                         mode="audit")
    assert res.status == "runtime_error" and "is not allowed" in res.stderr, res
    res = sb.run_program("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", limits=FAST, mode="audit")
    assert res.status == "runtime_error" and "os.kill is not allowed" in res.stderr


@pytest.mark.parametrize("where, copies", [("tmp", False), ("home_cache", False), ("home_cache", True)])
def test_mode_selection_venv_in_home_cache_python_in_pyenv(where, copies):
    """Mode selection (issue 9): A virtualenv under /tmp (CI's ``mktemp -d``, mode 0700) or under ``~/.cache`` with Python itself under
    ``~/.pyenv`` (symlinked or ``--copies``): every mode must start programs from it -- each interpreter path is
    mapped on its own, so none hides another -- and a world-readable file next to the venv stays invisible in
    the modes that claim ``only_mapped_host_paths``."""
    available = [m for m in sb.KERNEL_MODES if sb.probe_mode(m) is None]
    if not available:
        pytest.skip("no kernel isolation mode on this host")
    parent = tempfile.gettempdir() if where == "tmp" else os.path.expanduser("~/.cache")
    os.makedirs(parent, exist_ok=True)
    base = tempfile.mkdtemp(dir=parent, prefix="scgrpo-venv-test-")  # 0700, like mktemp -d
    try:
        venv = os.path.join(base, "venv")
        cmd = [os.path.realpath(sys.base_prefix + "/bin/python3"), "-m", "venv", "--without-pip", venv]
        subprocess.run(cmd + (["--copies"] if copies else []), check=True, timeout=120)
        secret = os.path.join(base, "ground_truth.json")
        with open(secret, "w") as f:
            f.write('{"answer": 42}')
        os.chmod(secret, 0o644)
        program = (f"import json, sys\nprint(json.dumps(sys.prefix))\ntry:\n    print(open({secret!r}).read())\n"
                   "except OSError:\n    print('refused')\n")
        # the sandbox package loaded from its folder: the fresh venv has none of the project's dependencies
        script = (
            "import importlib.util, json, sys\n"
            f"spec = importlib.util.spec_from_file_location('sbx', {sb.__file__!r}, "
            f"submodule_search_locations=[{os.path.dirname(sb.__file__)!r}])\n"
            "sb = importlib.util.module_from_spec(spec); sys.modules['sbx'] = sb; spec.loader.exec_module(sb)\n"
            f"for mode in {available!r}:\n"
            f"    r = sb.run_program({program!r}, mode=mode)\n"
            "    print(json.dumps([mode, r.status, r.stdout.splitlines(), r.stderr[-300:]]))\n"
        )
        out = subprocess.run([os.path.join(venv, "bin", "python"), "-c", script], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        assert [r[0] for r in rows] == available
        for mode, status, lines, err in rows:
            assert status == "ok", (mode, err)
            prefix = json.loads(lines[0])
            # the real interpreter binary runs (--copies: the venv's own copy, found through its pyvenv.cfg) with
            # -S, so sys.prefix is the base installation's and no site-packages exist in the sandbox
            assert prefix == os.path.realpath(sys.base_prefix), (mode, prefix)
            if sb.INVARIANTS[mode]["only_mapped_host_paths"]:
                assert lines[1] == "refused", (mode, lines)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def table() -> str:
    """The attack x mode table: contained / NOT contained / not run (the invariant each attack probes)."""
    modes = [m for m in sb.MODES if sb.probe_mode(m) is None]
    rows = [f"| attack (invariant) | {' | '.join(modes)} |", "|---|" + "---|" * len(modes)]
    for attack in ATTACKS:
        cells = []
        for mode in modes:
            if attack.heavy and mode == "audit":
                cells.append("not run")
                continue
            try:
                contained, detail = attack.fn(mode)
            except Exception as exc:  # noqa: BLE001
                contained, detail = False, f"error {exc!r}"[:80]
            cells.append("contained" if contained else f"NOT ({detail})"[:60])
        rows.append(f"| {attack.name} ({attack.invariant or 'grading'}) | {' | '.join(cells)} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
