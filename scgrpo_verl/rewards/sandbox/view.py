"""The interpreter view: what a sandboxed interpreter needs of the host, mapped read-only at the same paths
(:func:`_view`: the binary, its standard library without any ``site-``/``dist-packages``, the shared libraries it
links against), the same view carved into Landlock rules (:func:`_view_paths`), the folders the uid drop would hide
(:func:`_expose_dirs`), and the bwrap command line that builds the whole sandbox around it (:func:`_bwrap_argv`)."""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import subprocess
import sys
from typing import Sequence

from .base import SANDBOX_PATH, SandboxError, SandboxLimits, _rlimits, last_lines
from .boot import _ENV, _boot_source

SYSTEM_LIB_DIRS = ("/lib", "/lib64", "/lib32", "/libx32", "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32")


def _hidden_ancestors(path: str) -> list[str]:
    """Ancestors of ``path`` that other users cannot traverse (e.g. ``/root`` of a pyenv under ``/root``)."""
    parts = os.path.realpath(path).strip("/").split("/")
    return [a for a in ("/" + "/".join(parts[:i]) for i in range(1, len(parts))) if not os.stat(a).st_mode & 0o001]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


PACKAGE_DIRS = ("site-packages", "dist-packages")
"""Folder names of installed third-party packages: never part of the view, wherever they sit."""


def _package_dirs(root: str, depth: int = 3) -> list[str]:
    """``site-packages`` / ``dist-packages`` folders at most ``depth`` levels below ``root`` (a bounded scan: e.g.
    ``<stdlib>/site-packages``)."""
    found, level = [], [root]
    for _ in range(depth):
        nxt = []
        for d in level:
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                if e.name in PACKAGE_DIRS:
                    found.append(e.path)
                elif e.is_dir(follow_symlinks=False):
                    nxt.append(e.path)
        level = nxt
    return found


def _carve(root: str, excluded: Sequence[str]) -> list[str]:
    """The paths that grant ``root`` without the paths in ``excluded`` (for Landlock rules, which grant whole
    trees): ``root`` itself when nothing excluded lies below it; else each child of ``root`` on its own, recursing
    into the children that hold an excluded path and dropping the excluded ones. Symlink children need no rule
    (Landlock checks the file they resolve to, which is granted only if it is in the view itself)."""
    if not any(_under(x, root) for x in excluded):
        return [root]
    if root in excluded:
        return []
    paths = []
    for e in sorted(os.scandir(root), key=lambda e: e.name):
        if e.path in excluded or e.is_symlink():
            continue
        paths += _carve(e.path, excluded) if e.is_dir(follow_symlinks=False) else [e.path]
    return paths


def _resolve(path: str, links: list[tuple[str, str]], depth: int = 0) -> str:
    """The real path of ``path``, appending ``(target, link)`` for every symlink met on the way (to recreate in
    the view, so that e.g. ``/lib64/ld-linux-x86-64.so.2`` resolves there as it does on the host)."""
    if depth > 40:
        raise SandboxError(f"too many levels of symbolic links resolving {path}")
    cur = "/"
    for part in path.strip("/").split("/"):
        nxt = os.path.join(cur, part)
        if os.path.islink(nxt):
            target = os.readlink(nxt)
            links.append((target, nxt))
            cur = _resolve(os.path.normpath(os.path.join(cur, target)), links, depth + 1)
        else:
            cur = nxt
    return cur


def _linked_libraries(binaries: Sequence[str]) -> list[str]:
    """Shared libraries (as the loader names them) that ``binaries`` need: ``ldd`` of each, the loader itself,
    ``libgcc_s.so.1`` (glibc loads it for thread cancellation and unwinding) and the C.UTF-8 locale if it is a
    folder of its own."""
    ldd = shutil.which("ldd")
    out = ""
    if ldd:
        try:
            out = subprocess.run([ldd, *binaries], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
    libs = set()
    for line in out.splitlines():
        path = line.split("=>")[-1].strip().split(" (")[0].strip()
        if path.startswith("/") and os.path.exists(path):
            libs.add(path)
    for d in SYSTEM_LIB_DIRS:
        for extra in (f"{d}/libgcc_s.so.1", *glob.glob(f"{d}/*/libgcc_s.so.1"), f"{d}/locale/C.utf8"):
            if os.path.exists(extra):
                libs.add(extra)
    return sorted(libs)


@functools.lru_cache(maxsize=1)
def _view() -> dict:
    """What a sandboxed interpreter needs, mapped read-only at the same paths (cached):

    ``exe`` (the real interpreter binary), ``binds`` (host paths: the binary, a ``pyvenv.cfg`` next to a copied
    venv binary, the isolated interpreter's ``sys.path`` entries but ``site-``/``dist-packages``, each shared
    library the binary and the standard library's extension modules link against (:func:`_linked_libraries`),
    ``/etc/ld.so.cache``), ``symlinks`` (``(target, path)`` met on the way to those libraries, e.g. Debian's
    ``/lib -> usr/lib`` and ``/lib64/ld-linux-x86-64.so.2``) and ``dirs`` (every ancestor folder to create with
    mode 0755 first: bwrap would create them 0700, which a per-run uid cannot traverse). Every path is mapped on
    its own, so e.g. ``~/.pyenv`` and ``~/.cache/venv`` never hide each other and nothing else of the home
    folder, and nothing else of the system library folders (other interpreters' packages, applications under
    ``/usr/lib``), exists in the sandbox.

    No ``site-packages``/``dist-packages`` content is in the view (``excluded``: those found at most three levels
    below a mapped folder, e.g. the standard library's own ``site-packages``). bwrap maps an empty mode-0000 tmpfs
    over each (one mount each; carving the standard library into ~200 single mounts would cost bwrap ~0.4 s per
    run), so the folder's name stays and it cannot even be listed; Landlock grants ``readable``: the mapped
    folders carved child by child around them (:func:`_carve`), so nothing under them can be listed or read.
    """
    exe = os.path.realpath(sys.executable)
    probe = subprocess.run([exe, "-I", "-c", "import json, sys; print(json.dumps(sys.path))"], capture_output=True,
                           text=True, timeout=60, env={"PATH": SANDBOX_PATH, "LC_ALL": "C.UTF-8"})
    if probe.returncode != 0:
        raise SandboxError(f"could not ask {exe} for its sys.path: {last_lines(probe.stderr, 2) or probe.returncode}")
    entries = [os.path.realpath(p) for p in json.loads(probe.stdout) if p and os.path.exists(p)
               and not any(part in PACKAGE_DIRS for part in p.split("/"))]
    binds = [exe] + [c for c in (os.path.join(os.path.dirname(exe), "pyvenv.cfg"),
                                 os.path.join(os.path.dirname(os.path.dirname(exe)), "pyvenv.cfg")) if os.path.isfile(c)]
    binds += entries + ([f] if os.path.isfile(f := "/etc/ld.so.cache") else [])
    extensions = [e.path for d in entries if os.path.isdir(d) for e in os.scandir(d) if e.name.endswith(".so")]
    symlinks: list[tuple[str, str]] = []
    system = {os.path.realpath(d) for d in SYSTEM_LIB_DIRS if os.path.isdir(d)}
    for lib in _linked_libraries([exe, *extensions]):
        real = _resolve(lib, symlinks)
        folder = real if os.path.isdir(real) else os.path.dirname(real)
        # a library in a system folder's sub-folder (Debian's multiarch /usr/lib/x86_64-linux-gnu) maps that folder
        # in one mount; one directly in a system folder (/usr/lib64 on Fedora), or elsewhere, maps on its own
        inside = folder not in system and any(_under(folder, d) for d in system)
        binds.append(folder if inside else real)
    binds = sorted(set(binds), key=lambda p: (p.count("/"), p))
    binds = [p for p in binds if not any(q != p and _under(p, q) for q in binds)]
    symlinks = sorted({(t, link) for t, link in symlinks if not any(_under(link, q) for q in binds)},
                      key=lambda tl: (tl[1].count("/"), tl[1]))
    excluded = sorted({x for r in binds if os.path.isdir(r) for x in _package_dirs(r)})
    readable = [p for r in binds for p in _carve(r, excluded)]
    leaves = binds + [link for _, link in symlinks]
    dirs = sorted({a for p in leaves for a in ("/" + "/".join(p.strip("/").split("/")[:i])
                                                for i in range(1, p.count("/")))
                   if not any(_under(a, q) for q in leaves)}, key=lambda p: (p.count("/"), p))
    return {"exe": exe, "binds": binds, "symlinks": symlinks, "dirs": dirs, "excluded": excluded,
            "readable": readable}


def _view_paths() -> list[str]:
    """Host paths a Landlock-confined program may read (the interpreter view, carved around package folders)."""
    return list(_view()["readable"])


def _expose_dirs() -> list[str]:
    """Interpreter folders below a folder other users cannot traverse: the ``landlock``/``seccomp`` boot code keeps
    them importable after the uid drop through ``/proc/self/fd/<n>`` handles opened before it (exactly these
    folders: a handle on an ancestor would expose its other children, e.g. a dataset cache; in ``landlock`` mode
    only the carved view below them is readable)."""
    return [p for p in _view()["binds"] if os.path.isdir(p) and _hidden_ancestors(p)]


def _bwrap_argv(limits: SandboxLimits, uid: int | None, files: Sequence[tuple[int, str]], seccomp_fd: int,
                info_fd: int) -> list:
    """The bwrap command line of one run (package docstring). The rlimits are set by the boot code inside the
    sandbox, before the uid drop and before any program code, so the parent needs no ``preexec_fn`` and
    ``subprocess`` can spawn bwrap with ``vfork`` (a trainer process with a large address space forks slowly).
    ``RLIMIT_NPROC`` then counts the per-run uid (root host) or the processes of the run's user namespace
    (including bwrap's PID 1)."""
    nproc = limits.max_processes if uid is not None else limits.max_processes + 1
    view = _view()
    argv = [shutil.which("bwrap") or "bwrap"]
    if os.geteuid() == 0:
        # privileged bwrap: no user namespace (it would map the program back to host uid 0, which RLIMIT_NPROC
        # exempts); the boot code drops to the per-run uid with the two capabilities kept for that
        argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                 "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-all", "--unshare-user", "--disable-userns"]
    argv += ["--die-with-parent", "--info-fd", str(info_fd), "--hostname", "sandbox", "--clearenv"]
    for key, value in _ENV.items():
        argv += ["--setenv", key, value]
    for d in view["dirs"]:
        argv += ["--perms", "0755", "--dir", d]
    for target, link in view["symlinks"]:
        argv += ["--symlink", target, link]
    for path in view["binds"]:
        argv += ["--ro-bind", path, path]
    for path in view["excluded"]:  # an empty tmpfs nobody may list over each package folder
        argv += ["--perms", "0000", "--size", "4096", "--tmpfs", path]
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(limits.shm_mb << 20), "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
             "--perms", "1777", "--size", str(limits.disk_mb << 20), "--tmpfs", "/tmp"]
    for fd, name in files:
        argv += ["--perms", "0644", "--file", str(fd), f"/tmp/{name}"]
    argv += ["--remount-ro", "/", "--chdir", "/tmp", "--seccomp", str(seccomp_fd),
             "--", view["exe"], "-I", "-B", "-S", "-c",
             _boot_source(False, uid, (), _rlimits(limits, nproc), clear_inheritable=uid is not None)]
    return argv
