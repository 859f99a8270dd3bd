"""The self-teacher method interface and its registry (no verl import).

A method is one :class:`SelfTeacherMethod` subclass in its own file, registered with :func:`register_method` under
its ``policy_loss.loss_mode`` name, in the style of verl's ``register_policy_loss`` / ``register_adv_est``. It owns
every decision that differs between methods; the trainer step (:mod:`scgrpo_verl.step`), the worker, the actor loss
(:mod:`scgrpo_verl.losses`), the teacher contexts and the dry-run ask it and never compare method names:

- contexts: which rollouts get a teacher and with what context (:meth:`plan_contexts`), which dataset fields the
  contexts read (:meth:`context_fields`, :meth:`privileged_text`), what it stages next to the batch
  (:meth:`stage_fields`);
- passes: which of verl's passes runs the teacher (:meth:`teacher_pass`);
- after the passes: what it keeps from the log-prob pass (:meth:`after_log_prob_pass`), how it changes the
  advantages (:meth:`adjust_advantages`), what the update reads (:meth:`update_options`);
- the loss: weights on the policy-gradient tokens (:meth:`policy_gradient_weights`), its own term
  (:meth:`loss`), the reference-KL term (:meth:`reference_kl`), and the metrics of each.

Adding a method: a file in this package with the class and its ``@register_method`` line (imported by
``methods/__init__.py``), its options block in :mod:`scgrpo_verl.settings`, its config under ``configs/``, and
its tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from scgrpo_verl.batch_keys import TEACHER_MASK_KEY
from scgrpo_verl.errors import ConfigError

#: verl passes a method's teacher can run in
LOG_PROB_PASS = "log_prob"
UPDATE_PASS = "update"

METHOD_REGISTRY: dict[str, "SelfTeacherMethod"] = {}


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: register one instance of the method under ``name`` (its ``policy_loss.loss_mode``)."""

    def decorate(cls: type) -> type:
        if name in METHOD_REGISTRY and type(METHOD_REGISTRY[name]) is not cls:
            raise ValueError(f"self-teacher method {name!r} is already registered by {type(METHOD_REGISTRY[name])}")
        cls.name = name
        METHOD_REGISTRY[name] = cls()
        return cls

    return decorate


def get_method(name: str) -> "SelfTeacherMethod":
    """The registered method ``name``; a one-line error naming the registered ones otherwise."""
    try:
        return METHOD_REGISTRY[name]
    except KeyError:
        raise ConfigError(f"actor_rollout_ref.actor.policy_loss.loss_mode: {name!r} is not a self-teacher method; "
                          f"registered: {sorted(METHOD_REGISTRY)}") from None


def method_names() -> tuple[str, ...]:
    """Names of the registered methods (the plugin's loss modes)."""
    return tuple(METHOD_REGISTRY)


def method_estimators() -> tuple[str, ...]:
    """The advantage estimators methods register (``adv_estimator`` set), each once."""
    return tuple(dict.fromkeys(m.adv_estimator for m in METHOD_REGISTRY.values() if m.adv_estimator))


def is_method(name: Any) -> bool:
    return name in METHOD_REGISTRY


@dataclass
class LogProbPassResult:
    """What a method keeps from the teacher's log-prob pass: batch fields to stage, options for the update."""

    fields: dict = field(default_factory=dict)
    update_options: dict = field(default_factory=dict)


@dataclass
class LossInputs:
    """One micro-batch as the actor loss sees it, padded (B, T), with verl's aggregation bound in.

    ``aggregate(loss_mat, mask, **info)`` is verl's ``agg_loss`` with the loss's ``loss_agg_mode`` and the global
    batch info (``info`` overrides entries); ``token_weights(mask, **info)`` are its detached per-token coefficients
    c_t (agg(X) = sum_t c_t X_t); ``log_metric(name, value)`` records a loss value the way verl aggregates losses
    over micro-batches and ranks.
    """

    settings: Any  # scgrpo_verl.settings.SelfTeacherConfig
    log_prob: torch.Tensor
    old_log_prob: torch.Tensor
    advantages: torch.Tensor
    response_mask: torch.Tensor  # bool
    rollout_is_weights: Optional[torch.Tensor]
    teacher_mask: Optional[torch.Tensor]  # (B, 1) float: 1 where the rollout has a teacher
    teacher: Any  # scgrpo_verl.teacher.engine_forward.MicroBatchTeacher or None
    global_steps: Optional[int]
    tensor: Callable[[str], torch.Tensor]  # a micro-batch field, padded
    has_field: Callable[[str], bool]
    non_tensor: Callable[[str], Any]  # an update option (None when absent)
    aggregate: Callable[..., torch.Tensor]
    token_weights: Callable[..., torch.Tensor]
    log_metric: Callable[[str, torch.Tensor], None]
    metrics: dict = field(default_factory=dict)

    def teacher_rows(self) -> torch.Tensor:
        """(B, 1) 1.0 where the rollout has a teacher; a ``KeyError`` naming the key when the step did not stage it."""
        if self.teacher_mask is None:
            raise KeyError(f"the micro-batch has no {TEACHER_MASK_KEY!r} (written by the trainer's teacher step)")
        return self.teacher_mask

    def require_teacher(self, method: str):
        if self.teacher is None:
            raise ValueError(
                f"loss_mode {method!r} needs the micro-batch's self-teacher (self_teacher=...): run it through "
                "SelfTeacherWorker (or scgrpo_verl.engine_path's stand-in engine), which runs the teacher forward"
            )
        return self.teacher


class SelfTeacherMethod:
    """The hooks of one self-teacher method (module docstring); the defaults are "nothing to add"."""

    name: str = ""
    #: the ``self_teacher.<options>`` block the method reads (``None``: none of its own)
    options: Optional[str] = None
    #: ``algorithm.adv_estimator`` the method needs (``None``: any estimator no other method claims)
    adv_estimator: Optional[str] = None
    #: ``self_teacher.teacher.templates`` fields its teacher prompt uses (``check`` shows them when changed)
    template_fields: tuple = ()
    #: the loss term's metric name (``self_teacher/<loss_metric>``), for docs and the dry-run
    loss_metric: Optional[str] = None
    #: ``LOG_PROB_PASS`` methods: the divergence D per token the log-prob pass returns (a ``DIVERGENCE_KINDS`` name)
    log_prob_divergence: Optional[str] = None

    # -- configuration ------------------------------------------------------------------------------------
    def check(self, settings) -> None:
        """Cross-option checks of the method (a ``ConfigError`` naming the key)."""

    # -- contexts -----------------------------------------------------------------------------------------
    def context_fields(self, settings) -> tuple[str, ...]:
        """Dataset fields (TransferQueue names) :meth:`privileged_text` reads."""
        return ()

    def privileged_text(self, settings, row: dict) -> Optional[str]:
        """The privileged context of one rollout from its :meth:`context_fields` (``None``: none)."""
        return None

    def required_extra_info(self, settings) -> dict[str, tuple[str, str]]:
        """``{extra_info key: (the option naming it, where such data comes from)}`` the training data must carry
        (the start-up check ``method_data`` refuses a train file where no row has the key)."""
        return {}

    def plan_contexts(self, batch, settings):
        """Which rollouts get a teacher and with what context: a :class:`scgrpo_verl.teacher.plans.Plans`."""
        raise NotImplementedError

    def stage_fields(self, contexts) -> dict[str, torch.Tensor]:
        """Per-rollout tensors staged next to the batch, beyond the teacher inputs and mask."""
        return {}

    # -- passes -------------------------------------------------------------------------------------------
    def teacher_pass(self, settings) -> Optional[str]:
        """Which verl pass runs the teacher: ``LOG_PROB_PASS``, ``UPDATE_PASS`` or ``None`` (no teacher term)."""
        return UPDATE_PASS

    def after_log_prob_pass(self, settings, divergence: Sequence[torch.Tensor], contexts, metrics: dict):
        """Keep what the log-prob pass computed (D per response token, one (r_i,) tensor per rollout, 0 where the
        rollout has no teacher): a :class:`LogProbPassResult`. Only called for ``LOG_PROB_PASS`` methods."""
        return LogProbPassResult()

    def adjust_advantages(self, settings, advantages: torch.Tensor, response_mask: torch.Tensor, uids,
                          fields: dict, metrics: dict) -> Optional[torch.Tensor]:
        """New (B, T) advantages after the estimator's, or ``None`` to keep them; ``fields`` holds the staged
        fields (padded) the method asked for in :attr:`advantage_fields`."""
        return None

    #: staged fields :meth:`adjust_advantages` reads
    advantage_fields: tuple = ()

    def update_options(self, settings, state: dict) -> dict:
        """Non-tensor options of the actor update (``state``: what :meth:`after_log_prob_pass` returned)."""
        return {}

    # -- loss ---------------------------------------------------------------------------------------------
    def policy_gradient_weights(self, inputs: LossInputs) -> Optional[torch.Tensor]:
        """(B, T) weights on verl's policy-gradient token terms, or ``None``."""
        return None

    def loss(self, inputs: LossInputs, pg_loss: torch.Tensor) -> torch.Tensor:
        """The policy loss from verl's surrogate ``pg_loss`` and the method's own term."""
        return pg_loss

    def reference_kl(self, inputs: LossInputs, ref_log_prob: torch.Tensor) -> Optional[torch.Tensor]:
        """(B, T) reference-KL token terms, or ``None`` for verl's ``kl_loss_type`` estimator."""
        return None

    def __repr__(self) -> str:
        return f"<self-teacher method {self.name!r}>"
