"""Landlock: the kernel's ABI version (:func:`landlock_abi`) and the ruleset a ``landlock``-mode program enters
(:func:`_landlock_ruleset`): read the interpreter view (carved around package folders, :mod:`.view`), everything in
its own folder, no TCP, signals and abstract Unix sockets scoped to the domain; in ``seccomp`` mode only that
scoping. The ruleset is built in the parent; the boot code (:mod:`.boot`) calls ``landlock_restrict_self``."""

from __future__ import annotations

import ctypes
import functools
import os
import stat
import struct
import sys

from .base import SandboxError, _errno_text, _syscall
from .seccomp import _SECCOMP_ARCHES
from .view import _view_paths

# <linux/landlock.h>; the syscall numbers are the same on x86_64 and aarch64
NR_LANDLOCK_CREATE_RULESET = 444
NR_LANDLOCK_ADD_RULE = 445
NR_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
LL_FS_EXECUTE = 1 << 0
LL_FS_WRITE_FILE = 1 << 1
LL_FS_READ_FILE = 1 << 2
LL_FS_READ_DIR = 1 << 3
LL_FS_REFER = 1 << 13  # ABI 2
LL_FS_TRUNCATE = 1 << 14  # ABI 3
LL_FS_IOCTL_DEV = 1 << 15  # ABI 5
LL_NET_BIND_TCP = 1 << 0  # ABI 4
LL_NET_CONNECT_TCP = 1 << 1  # ABI 4
LL_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
LL_SCOPE_SIGNAL = 1 << 1  # ABI 6


@functools.lru_cache(maxsize=1)
def landlock_abi() -> int:
    """The kernel's Landlock ABI version (>= 1), or ``-errno`` when Landlock is unavailable (cached)."""
    if not sys.platform.startswith("linux") or os.uname().machine not in _SECCOMP_ARCHES:
        return -38  # ENOSYS: unknown syscall numbers on this architecture
    rc = _syscall(NR_LANDLOCK_CREATE_RULESET, 0, 0, LANDLOCK_CREATE_RULESET_VERSION)
    return int(rc) if rc >= 1 else -ctypes.get_errno()


def _landlock_fs_rights(abi: int) -> int:
    """Every file-system access right Landlock ABI ``abi`` knows."""
    rights = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        rights |= LL_FS_REFER
    if abi >= 3:
        rights |= LL_FS_TRUNCATE
    if abi >= 5:
        rights |= LL_FS_IOCTL_DEV
    return rights


def _landlock_ruleset(workdir: str | None) -> int:
    """A Landlock ruleset fd for a program whose private folder is ``workdir`` (built in the parent).

    The interpreter view (:func:`_view_paths`, carved around package folders): execute, read files, list
    folders; ``workdir``: everything; ``/dev/null``: read + write, ``/dev/urandom``: read; nothing else (no
    ``/proc``, no home folders, no other run's folder). TCP bind/connect denied (ABI >= 4); signals and abstract
    Unix sockets scoped to the domain (ABI >= 6). ``workdir=None``: only that scoping, no file or network rule
    (``seccomp`` mode, ABI >= 6). The child inherits the fd and its boot code calls ``landlock_restrict_self``.
    """
    abi = landlock_abi()
    if abi < 1:
        raise SandboxError(f"Landlock is unavailable: {_errno_text(-abi)}")
    fs = _landlock_fs_rights(abi)
    if workdir is None:
        if abi < 6:
            raise SandboxError(f"Landlock ABI {abi} cannot scope signals (ABI >= 6 can)")
        attr, size = struct.pack("=QQQ", 0, 0, LL_SCOPE_ABSTRACT_UNIX_SOCKET | LL_SCOPE_SIGNAL), 24
    elif abi >= 6:
        attr, size = struct.pack("=QQQ", fs, LL_NET_BIND_TCP | LL_NET_CONNECT_TCP,
                                 LL_SCOPE_ABSTRACT_UNIX_SOCKET | LL_SCOPE_SIGNAL), 24
    elif abi >= 4:
        attr, size = struct.pack("=QQ", fs, LL_NET_BIND_TCP | LL_NET_CONNECT_TCP), 16
    else:
        attr, size = struct.pack("=Q", fs), 8
    buf = ctypes.create_string_buffer(attr, size)
    fd = _syscall(NR_LANDLOCK_CREATE_RULESET, ctypes.addressof(buf), size, 0)
    if fd < 0:
        err = ctypes.get_errno()
        raise SandboxError(f"landlock_create_ruleset: {_errno_text(err)}")
    if workdir is None:
        return int(fd)
    file_rw = LL_FS_READ_FILE | LL_FS_WRITE_FILE | (LL_FS_TRUNCATE if abi >= 3 else 0)
    read_dir = LL_FS_EXECUTE | LL_FS_READ_FILE | LL_FS_READ_DIR
    rules = [(path, read_dir, True) for path in _view_paths()]
    rules += [(workdir, fs, False), ("/dev/null", file_rw, False), ("/dev/urandom", LL_FS_READ_FILE, True)]
    try:
        for path, rights, optional in rules:
            try:
                pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                if optional:  # e.g. a dangling symlink in /
                    continue
                raise
            try:
                if not stat.S_ISDIR(os.fstat(pfd).st_mode):
                    rights &= LL_FS_EXECUTE | LL_FS_READ_FILE | LL_FS_WRITE_FILE | LL_FS_TRUNCATE | LL_FS_IOCTL_DEV
                rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, pfd), 12)  # packed path_beneath_attr
                if _syscall(NR_LANDLOCK_ADD_RULE, fd, LANDLOCK_RULE_PATH_BENEATH, ctypes.addressof(rule), 0) != 0:
                    err = ctypes.get_errno()
                    raise SandboxError(f"landlock_add_rule({path}): {_errno_text(err)}")
            finally:
                os.close(pfd)
    except BaseException:
        os.close(fd)
        raise
    return int(fd)
