"""The boot code: the ``python -I -B -S -c`` program that runs inside the sandbox before the user's program
(optional audit hook, rlimits, the uid drop, inheritable capabilities cleared, ``landlock_restrict_self``, then
``main.py`` as ``__main__`` with the boot frames hidden from its tracebacks). It is shipped as source text:
:data:`_BOOT` is a string, and :func:`_boot_source` prepends the run's settings as literals. :data:`_ENV` is the
program's whole environment."""

from __future__ import annotations

from typing import Sequence

from .base import SANDBOX_PATH

_BOOT = r'''
import sys
if _AUDIT:
    def _guard(event, args, _getpid=__import__("os").getpid):
        if event == "os.kill" and args and args[0] in (0, _getpid()):
            return  # signalling itself (e.g. a program that dies by SIGSEGV) is fine
        if event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
                     "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "subprocess.Popen", "os.system", "os.exec",
                     "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg", "pty.spawn"):
            raise PermissionError(f"sandbox: {event} is not allowed")
    sys.addaudithook(_guard)
    del _guard


def _boot():
    import builtins
    import os

    class Quitter:  # what `site` (skipped with -S: it costs more than the rest of start-up) would install
        def __init__(self, name):
            self.name = name

        def __repr__(self):
            return "Use %s() or Ctrl-D (i.e. EOF) to exit" % self.name

        def __call__(self, code=None):
            raise SystemExit(code)

    builtins.exit, builtins.quit = Quitter("exit"), Quitter("quit")
    if _LIMITS:
        import resource
        for _res, _soft, _hard in _LIMITS:
            resource.setrlimit(_res, (_soft, _hard))
    if _UID is not None:
        if _EXPOSE:
            # Interpreter folders below a folder the sandbox uid cannot traverse: keep them importable through
            # /proc/self/fd/<n> (a handle opened now, while still root, needs no traversal later).
            links = [(d, "/proc/self/fd/%d" % os.open(d, os.O_PATH | os.O_DIRECTORY)) for d in _EXPOSE]

            def fix(p):
                if isinstance(p, str) and p.startswith("/"):
                    r = os.path.realpath(p)
                    for d, link in links:
                        if r == d or r.startswith(d + "/"):
                            return link + r[len(d):]
                return p

            sys.path[:] = [fix(p) for p in sys.path]
            for m in list(sys.modules.values()):
                path = getattr(m, "__path__", None)
                if type(path) is list:
                    path[:] = [fix(p) for p in path]
            sys.path_importer_cache.clear()
        os.setgroups([])
        os.setresgid(_UID, _UID, _UID)
        os.setresuid(_UID, _UID, _UID)
        if os.getresuid() != (_UID,) * 3 or os.getresgid() != (_UID,) * 3 or os.getgroups():
            raise SystemExit("sandbox: could not drop privileges")
    if _CLEAR_INHERITABLE or _LANDLOCK_FD is not None:
        import _ctypes  # not ctypes: its import costs a bwrap run ~5 ms of CPU

        class Long(_ctypes._SimpleCData):
            _type_ = "l"

        class Fn(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = Long

        class Libc:
            _handle = _ctypes.dlopen(None, _ctypes.RTLD_LOCAL)

    if _CLEAR_INHERITABLE:
        # the uid change cleared the permitted and effective sets; clear the inheritable one too (bwrap leaves
        # CAP_SETUID/CAP_SETGID there): capset(v3 header, all-zero data)
        if Fn(("capset", Libc))((0x20080522).to_bytes(4, sys.byteorder) + bytes(4), bytes(24)) != 0:
            raise SystemExit("sandbox: could not clear the inheritable capabilities: errno %d" % _ctypes.get_errno())
    if _LANDLOCK_FD is not None:
        # Landlock from here, not before exec: the start-up above listed the standard library folder (which the
        # ruleset does not let the program list: it is carved around site-packages), and every path finder
        # fills its listing now, so imports keep working inside the domain.
        import importlib.machinery
        importlib.machinery.PathFinder.find_spec("_scgrpo_sandbox_warm_up_")
        if Fn(("syscall", Libc))(Long(446), Long(_LANDLOCK_FD), Long(0)) != 0:
            raise SystemExit("sandbox: landlock_restrict_self failed: errno %d" % _ctypes.get_errno())
        os.close(_LANDLOCK_FD)
    with open("main.py", "rb") as f:
        src = f.read()
    try:
        code = compile(src, "main.py", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:
        import traceback
        sys.stderr.write("".join(traceback.format_exception_only(type(e), e)))
        raise SystemExit(1)
    import types
    main = types.ModuleType("__main__")
    main.__file__ = os.path.join(os.getcwd(), "main.py")
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    sys.argv[:] = ["main.py"]
    return code, main.__dict__


_code, _globals = _boot()
del _boot
try:
    exec(_code, _globals)
except SystemExit:
    raise
except BaseException as _e:
    _tb = _e.__traceback__
    while _tb is not None and _tb.tb_frame.f_code.co_filename == "<string>":
        _tb = _tb.tb_next  # hide the boot frames: the traceback starts in main.py, as with `python main.py`
    sys.excepthook(type(_e), _e.with_traceback(_tb), _tb)
    raise SystemExit(1)
'''


def _boot_source(audit: bool, uid: int | None, expose: Sequence[str],
                 limits: Sequence[tuple[int, tuple[int, int]]] = (), landlock_fd: int | None = None,
                 clear_inheritable: bool = False) -> str:
    """The ``python -c`` boot code: optional audit hook, rlimits, uid drop, the inheritable capabilities cleared
    (``clear_inheritable``: bwrap as root leaves some), Landlock (``landlock_fd``: an inherited ruleset), then
    ``main.py`` as ``__main__``."""
    lim = [(int(res), int(soft), int(hard)) for res, (soft, hard) in limits]
    return (f"_AUDIT = {audit!r}\n_UID = {uid!r}\n_EXPOSE = {list(expose)!r}\n_LIMITS = {lim!r}\n"
            f"_LANDLOCK_FD = {landlock_fd!r}\n_CLEAR_INHERITABLE = {clear_inheritable!r}\n" + _BOOT)


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
