"""Process sandbox for model-written Python programs, built on bubblewrap.

A policy trained on code rewards optimises against the grader, so every sandbox weakness becomes a strategy.
The isolation is **bubblewrap** (Debian's ``bubblewrap``, the tool Flatpak is built on). Each program gets, in
mode ``"bwrap"``:

* fresh **PID, IPC, network, UTS, mount** (and cgroup, where possible) namespaces, plus a **user namespace**
  when the host is not root. As root the program instead runs as a random **per-run host uid** in
  ``[UID_BASE, UID_BASE + UID_SPAN)`` (the boot code drops to it before reading the program): ``RLIMIT_NPROC``
  never applies to uid 0, and a user namespace would map the program back to uid 0;
* a **minimal read-only view** (:func:`.view._view`): the interpreter binary, its standard library and
  ``lib-dynload``, the shared libraries they link against (a multiarch folder such as
  ``/usr/lib/x86_64-linux-gnu`` in one piece) and ``/etc/ld.so.cache``, each mapped on its own: nothing of home
  folders, dataset caches, the project or the rest of ``/usr/lib``. No installed package: the standard library's
  own ``site-packages`` (any ``site-``/``dist-packages`` folder inside the view) is covered by an empty tmpfs
  nobody may list;
* a private **tmpfs of ``disk_mb``** as ``/tmp`` and working folder (the run's disk quota; ``main.py`` is copied
  in from memory), one of ``shm_mb`` on ``/dev/shm``; ``/`` and ``/dev`` read-only;
* stdin a read-only descriptor of a sealed anonymous memory file (it cannot be written, grown or shrunk),
  stdout/stderr anonymous memory files of the parent capped by ``RLIMIT_FSIZE`` (no host file for other runs
  to read), and no other inherited descriptor (bwrap closes those it reads its set-up from);
* as root, no capability left after the uid drop, the inheritable set included;
* ``--die-with-parent``, and teardown of the whole PID namespace when the program ends or is killed (the
  parent waits for bwrap's PID 1 to be gone, which the kernel allows only after every other process is);
* the **seccomp filter** below, and the limits: ``RLIMIT_CPU``, ``RLIMIT_AS`` (per process), ``RLIMIT_NPROC``,
  ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``, no core dumps, wall-clock timeout, output cap.

**Memory bound.** cgroup v2 ``memory.max``/``pids.max`` need a delegated cgroup v2 subtree with the memory and
pids controllers; the hosts this was built and tested on have none writable (cgroup v1 controllers, an empty
unified hierarchy; :func:`diagnose` reports ``limits_via``), so the limits are rlimits, and what one run can
hold is their sum (:func:`memory_bound_mb`): ``max_processes * memory_mb`` (``RLIMIT_AS`` per process) ``+
disk_mb + shm_mb`` (the two tmpfs) ``+ 2 * max(max_file_size_mb, max_output_bytes)`` (stdout/stderr, capped by
``RLIMIT_FSIZE``; stdin is sealed) ``+`` kernel buffers of at most ``(max_processes + 1) * max_open_files``
pipes and sockets (the filter refuses ``F_SETPIPE_SZ`` and ``SO_SNDBUF``/``SO_RCVBUF``: 64 KiB per pipe, twice
``net.core.wmem_default`` per socket). SysV IPC and ``memfd_create`` are refused. With the defaults that is about
16.5 GiB, almost all of it the 16 processes' address spaces, so :func:`run_batch` runs as many programs at once
as fit their bound into the host's available memory (:func:`batch_workers`), not one per core.

**Weaker modes** (hosts where bwrap cannot create namespaces), used only when the user opts in with
``SCGRPO_SANDBOX_MODE=<mode>`` or the reward kwarg ``sandbox_mode``, logged at WARNING whenever a process selects
one; :data:`INVARIANTS` says what each holds. ``"landlock"``: Landlock lets the program read only the
interpreter view (carved around the package folders, so they cannot even be listed; the boot code enters the
Landlock domain after the interpreter's start-up) and its own fresh 0700 folder (owned by the per-run uid as
root), write only that folder, and the seccomp filter refuses every ``socket()``; no disk quota.
``"seccomp"``: the filter also refuses every file creation or change; reads are limited only by the uid.
``"audit"``: an in-interpreter audit hook, no security boundary. Without bwrap and without an opt-in,
:func:`select_mode` raises :class:`SandboxError` with :data:`REFUSAL`: code rewards fail closed. A sandbox that
breaks after start-up (a failed run whose stderr reads like bwrap's, the boot code's or the interpreter's own
start-up failure) is probed again, and :class:`SandboxError` stops training when the probe fails too.

The **seccomp filter** (every kernel mode; checks the arch, denies x32) refuses ``ptrace``, ``process_vm_*``,
``kcmp``, mount and namespace calls (``clone``/``clone3`` with namespace flags included), ``bpf``,
``perf_event_open``, keyrings, ``io_uring``, ``userfaultfd``, ``pidfd_*``, module loading, ``kexec``,
``personality``, privileged clock/host calls, SysV IPC ``*get``, ``memfd_create``, ``F_SETPIPE_SZ`` and socket
buffer sizes; without a PID namespace (``landlock``/``seccomp``) also ``setsid``/``setpgid``, ``prlimit`` on
other processes and signal-owner changes. Signals there stay inside the program's own process tree through a
Landlock signal scope (ABI >= 6, both modes) or the per-run uid (root); only where neither exists does the filter
allow signals to the program's own pid and process group alone (then ``os.kill(child_pid)`` fails).

Linux only. ``python -m scgrpo_verl.rewards.sandbox`` and ``scgrpo-verl sandbox`` print :func:`diagnose`.

**Modules**, each importing only those after it: :mod:`.diagnose` (what :func:`diagnose` reports), :mod:`.runner`
(:func:`run_program`, :func:`run_batch`, pool sizing), :mod:`.modes` (modes, invariants, probing, selection),
:mod:`.process` (spawning, waiting for, killing and cleaning up one run), :mod:`.landlock` (the ruleset, over the
view's paths), :mod:`.view` (the interpreter view and bwrap's command line), :mod:`.seccomp` (the BPF filter),
:mod:`.boot` (the code that runs inside the sandbox before the program), :mod:`.base` (limits, results, errors).
This package re-exports the public names; a name with a leading underscore is private to the package and is
imported from the module that defines it (a test that replaces one patches the module that calls it).
"""

from .base import (STATUSES, UID_BASE, UID_SPAN, SandboxError, SandboxLimits, SandboxResult, classify,
                   describe_failure, last_lines)
from .diagnose import diagnose
from .landlock import landlock_abi
from .modes import (ENV_MODE, INVARIANT_DOCS, INVARIANTS, KERNEL_MODES, MODES, REFUSAL, WEAK_MODES, isolation_mode,
                    probe_mode, select_mode)
from .runner import MEMORY_SHARE, batch_workers, default_workers, memory_bound_mb, run_batch, run_program
from .view import PACKAGE_DIRS

__all__ = [
    "ENV_MODE",
    "INVARIANTS",
    "INVARIANT_DOCS",
    "KERNEL_MODES",
    "MEMORY_SHARE",
    "MODES",
    "PACKAGE_DIRS",
    "REFUSAL",
    "STATUSES",
    "SandboxError",
    "SandboxLimits",
    "SandboxResult",
    "UID_BASE",
    "UID_SPAN",
    "WEAK_MODES",
    "batch_workers",
    "classify",
    "default_workers",
    "describe_failure",
    "diagnose",
    "isolation_mode",
    "landlock_abi",
    "last_lines",
    "memory_bound_mb",
    "probe_mode",
    "run_batch",
    "run_program",
    "select_mode",
]
