"""Errors a user can fix, and how the command line shows them (one line, no traceback).

Raise :class:`UserError` (or a subclass) wherever a problem comes from the user's input -- a config key, a data
file or row, a checkpoint, a reward, the sandbox -- with a message that names the key / file / row and says what is
allowed. ``scgrpo-verl`` prints it as ``scgrpo-verl <command>: error: <message>`` and exits with status 2; the full
traceback is printed only with ``--debug`` or ``HYDRA_FULL_ERROR=1``.

:func:`config_error_message` turns the exceptions Hydra, OmegaConf and verl raise while a config is composed and
validated into that one line (the innermost message, which names the key).
"""

from __future__ import annotations

import contextlib
import os
import warnings

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with the user's input; shown as one line by the CLI."""


class ConfigError(UserError, ValueError):
    """A config key has a value that cannot run (also a ValueError, so callers that expect one still work)."""


def debug_requested(argv=None) -> bool:
    """``--debug`` on the command line or ``HYDRA_FULL_ERROR=1`` in the environment."""
    return "--debug" in (argv or ()) or os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")


def innermost(error: BaseException) -> BaseException:
    """The root cause of a chain of wrapped exceptions (Hydra's InstantiationException wraps the dataclass's error)."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        cause = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if cause is None:
            break
        error = cause
    return error


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def config_error_message(error: BaseException) -> str:
    """One line for an error raised while composing / validating a config: the innermost message, which names the
    key (``self_teacher.sdpo.alpha: must be in [0, 1], got 2``); OmegaConf's ``full_key`` is added when the message
    lacks it."""
    root = innermost(error)
    message = str(root).strip() or type(root).__name__
    message = message.split("\n    full_key:")[0]  # OmegaConf appends a multi-line block (full_key, object_type)
    key = getattr(root, "full_key", None) or getattr(error, "full_key", None)
    if key and key not in message:
        message = f"{key}: {message}"
    if isinstance(root, AssertionError) and not str(root).strip():
        message = "verl's validate_config failed an assertion without a message (run with --debug to see which)"
    return one_line(message)


@contextlib.contextmanager
def deferred_warnings():
    """Hold the warnings raised inside the block (verl's ``UserWarning: Disabled critic ...`` while a config is
    validated) and show them only when the block ends without an error: an error line comes first and alone. The
    filters in force (the CLI's noise filters) still apply."""
    with warnings.catch_warnings(record=True) as caught:
        yield
    for item in caught:
        warnings.showwarning(item.message, item.category, item.filename, item.lineno)
