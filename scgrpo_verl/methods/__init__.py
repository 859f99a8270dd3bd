"""The self-teacher methods, one registered :class:`SelfTeacherMethod` per file (see :mod:`.base`).

Importing this package registers every shipped method; ``get_method(loss_mode)`` returns one.
"""

from scgrpo_verl.methods.base import (
    LOG_PROB_PASS,
    METHOD_REGISTRY,
    UPDATE_PASS,
    LogProbPassResult,
    LossInputs,
    SelfTeacherMethod,
    get_method,
    is_method,
    method_estimators,
    method_names,
    register_method,
)
from scgrpo_verl.methods import sc_grpo, sdpo, sdpg, opsd  # noqa: E402,F401  (each registers itself)

__all__ = [
    "LOG_PROB_PASS",
    "METHOD_REGISTRY",
    "UPDATE_PASS",
    "LogProbPassResult",
    "LossInputs",
    "SelfTeacherMethod",
    "get_method",
    "is_method",
    "method_estimators",
    "method_names",
    "register_method",
]
