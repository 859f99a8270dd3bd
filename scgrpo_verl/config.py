"""Validated configuration of the plugin (one source of truth for defaults).

The YAML section ``self_teacher`` (``configs/self_teacher_defaults.yaml``) mirrors
:class:`SelfTeacherConfig` field by field; a test keeps the two equal. verl sees the section
in two places, both interpolated from the one top-level section:

- ``actor_rollout_ref.actor.policy_loss`` becomes :class:`SelfTeacherPolicyLossConfig` (its
  ``_target_``), so verl's own ``validate_config`` builds and checks it at start-up, and the
  actor's loss reads ``config.policy_loss.self_teacher``;
- ``algorithm.self_teacher`` reaches the ``sc_grpo`` advantage estimator.
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

from scgrpo_verl.algos.divergence import DIVERGENCE_KINDS
from scgrpo_verl.teacher.templates import TemplateConfig

PLUGIN_LOSS_MODES = ("sc_grpo", "sdpo", "sdpg")
TEACHER_WEIGHTS = ("live", "frozen", "ema", "trust_region")
SDPO_DISTILLATION_MODES = ("full", "topk", "sampled_token")
REFERENCE_KL_TYPES = ("urkl", "ufkl")
SIBLING_CHOICES = ("uniform", "first")
THRESHOLD_SCOPES = ("micro_batch", "batch")
SDPO_NORMALIZATIONS = ("all_tokens", "teacher_tokens")


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise _error(f"self_teacher.{key}: {message}")


def _error(message: str) -> ValueError:
    from scgrpo_verl.errors import ConfigError  # a ValueError the CLI prints as one line

    return ConfigError(message)


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _type_ok(value: Any, kind: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    return True  # other annotations (dataclasses, Any) are checked elsewhere


def _check_types(instance: Any, section: str) -> None:
    """Type of every option of a config dataclass, checked before its range checks so that
    ``self_teacher.sc_grpo.c_min=abc`` names the key (instead of a TypeError from ``'abc' > 0``).
    ints are accepted for float options (YAML ``1`` for ``1.0``); ``null`` only for Optional options."""
    hints = typing.get_type_hints(type(instance))
    for item in fields(instance):
        kind = hints.get(item.name)
        value = getattr(instance, item.name)
        optional = False
        if typing.get_origin(kind) is typing.Union:
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            optional = len(args) < len(typing.get_args(kind))
            kind = args[0] if len(args) == 1 else Any
        if kind not in _TYPE_WORDS or (value is None and optional):
            continue
        if value is None or not _type_ok(value, kind):
            allowed = _TYPE_WORDS[kind] + (" or null" if optional else "")
            shown = "null" if value is None else f"{value!r} ({type(value).__name__})"
            raise _error(f"self_teacher.{section}{item.name}: must be {allowed}, got {shown}")


def _in_unit_interval(value: float) -> bool:
    return 0.0 <= value <= 1.0


@dataclass(frozen=True)
class SCGRPOConfig:
    """SC-GRPO options (ALGORITHMS.md section 1)."""

    c_min: float = 1e-4  # floor of c in f(D) = D / (D + c)
    quantile: float = 0.75  # c = max(P75 of active-token D in the micro-batch, c_min)
    renormalize: bool = False  # rescale weights to mean 1 (changes the effective learning rate)
    solve_none_alpha: float = 0.1  # pseudo-advantage scale for groups with n_c = 0
    epsilon: float = 1e-6  # std floor of the solve-none z-score
    seed: int = 0  # seeds the uniform draws of references and verified siblings
    threshold_scope: str = "micro_batch"  # c over the update's micro-batch (the paper) | batch: one c per step

    def __post_init__(self):
        _check_types(self, "sc_grpo.")
        _require(self.c_min > 0, "sc_grpo.c_min", f"must be > 0, got {self.c_min}")
        _require(
            self.threshold_scope in THRESHOLD_SCOPES,
            "sc_grpo.threshold_scope",
            f"must be one of {THRESHOLD_SCOPES}, got {self.threshold_scope!r}",
        )
        _require(0.0 < self.quantile < 1.0, "sc_grpo.quantile", f"must be in (0, 1), got {self.quantile}")
        _require(self.solve_none_alpha >= 0, "sc_grpo.solve_none_alpha", f"must be >= 0, got {self.solve_none_alpha}")
        _require(self.epsilon > 0, "sc_grpo.epsilon", f"must be > 0, got {self.epsilon}")


@dataclass(frozen=True)
class SDPOConfig:
    """SDPO options (ALGORITHMS.md section 2; defaults of the reference code)."""

    distillation: str = "topk"  # full | topk | sampled_token
    topk: int = 100  # student's top-k ids
    add_tail: bool = True  # tail bucket log(1 - sum top-k p); False renormalises over the top-k
    alpha: float = 0.5  # 0 forward KL(q||p), 1 reverse KL(p||q), else generalized JSD
    is_clip: Optional[float] = 2.0  # sg(min(pi/pi_old, is_clip)); null disables
    pg_coef: float = 0.0  # lambda in lambda * PG + (1 - lambda) * distillation (reference code: 0)
    normalize: str = "all_tokens"  # distillation mean over all response tokens | teacher_tokens (the authors')

    def __post_init__(self):
        _check_types(self, "sdpo.")
        _require(
            self.distillation in SDPO_DISTILLATION_MODES,
            "sdpo.distillation",
            f"must be one of {SDPO_DISTILLATION_MODES}, got {self.distillation!r}",
        )
        _require(self.topk >= 1, "sdpo.topk", f"must be >= 1, got {self.topk}")
        _require(_in_unit_interval(self.alpha), "sdpo.alpha", f"must be in [0, 1], got {self.alpha}")
        _require(
            self.distillation != "sampled_token" or self.alpha == 1.0,
            "sdpo.alpha",
            f"sampled_token distillation estimates reverse KL and needs alpha = 1, got {self.alpha}",
        )
        _require(self.is_clip is None or self.is_clip > 0, "sdpo.is_clip", f"must be > 0 or null, got {self.is_clip}")
        _require(_in_unit_interval(self.pg_coef), "sdpo.pg_coef", f"must be in [0, 1], got {self.pg_coef}")
        _require(
            self.normalize in SDPO_NORMALIZATIONS,
            "sdpo.normalize",
            f"must be one of {SDPO_NORMALIZATIONS}, got {self.normalize!r}",
        )

    @property
    def divergence_kind(self) -> str:
        return "jsd"


@dataclass(frozen=True)
class SDPGConfig:
    """SDPG options (ALGORITHMS.md section 3). alpha * L_K uses verl's ``actor.kl_loss_coef``."""

    beta_base: float = 1e-3
    warmup_steps: int = 50  # T_warm
    decay_steps: int = 350  # T_decay
    total_steps: int = 400  # T
    opd_clamp: float = 20.0  # per-token clamp of KL(p || q)
    ref_kl: str = "urkl"  # urkl: 0.5 log^2(pi/pi_ref) | ufkl: pi_ref/pi + log(pi/pi_ref)

    def __post_init__(self):
        _check_types(self, "sdpg.")
        _require(self.beta_base >= 0, "sdpg.beta_base", f"must be >= 0, got {self.beta_base}")
        for name in ("warmup_steps", "decay_steps", "total_steps"):
            _require(getattr(self, name) >= 0, f"sdpg.{name}", f"must be >= 0, got {getattr(self, name)}")
        _require(self.opd_clamp > 0, "sdpg.opd_clamp", f"must be > 0, got {self.opd_clamp}")
        _require(self.ref_kl in REFERENCE_KL_TYPES, "sdpg.ref_kl", f"must be one of {REFERENCE_KL_TYPES}, got {self.ref_kl!r}")


@dataclass(frozen=True)
class TeacherConfig:
    """How the self-teacher is built (ALGORITHMS.md sections 1-3 and 'Shared machinery')."""

    weights: str = "live"  # live | frozen | ema | trust_region
    ema_rate: float = 0.05  # EMA teacher: teacher <- (1 - rate) teacher + rate policy, once per step
    trust_region_mix: float = 0.05  # logits lerp between the frozen initial model and the live policy
    success_threshold: float = 1.0  # a rollout is verified when reward >= threshold
    sibling_choice: str = "uniform"  # uniform (SC-GRPO) | first (SDPO's first success)
    exclude_self: bool = True  # never condition a rollout on itself (dont_reprompt_on_self_success)
    remove_thinking: bool = True  # strip <think>...</think> from demonstrations
    use_feedback: bool = False  # put the environment's textual feedback into the teacher prompt
    feedback_only_without_solution: bool = True  # SDPO default: feedback only when no verified sibling
    use_privileged_context: bool = False  # dataset row's hint / reference (SDPG)
    max_reprompt_len: int = 10240  # teacher prompt budget in tokens; demonstrations are shortened first
    # fp32 work per chunk of the divergence kernel; null: the device's budget (CPU 160 MiB, CUDA a quarter of the
    # free memory, at most 8 GiB: thousands of rows at V=152k)
    divergence_chunk_mib: Optional[float] = None
    templates: TemplateConfig = field(default_factory=TemplateConfig)  # teacher-prompt templates

    def __post_init__(self):
        _check_types(self, "teacher.")
        _require(self.weights in TEACHER_WEIGHTS, "teacher.weights", f"must be one of {TEACHER_WEIGHTS}, got {self.weights!r}")
        _require(0.0 < self.ema_rate <= 1.0, "teacher.ema_rate", f"must be in (0, 1], got {self.ema_rate}")
        _require(
            _in_unit_interval(self.trust_region_mix),
            "teacher.trust_region_mix",
            f"must be in [0, 1], got {self.trust_region_mix}",
        )
        _require(
            self.sibling_choice in SIBLING_CHOICES,
            "teacher.sibling_choice",
            f"must be one of {SIBLING_CHOICES}, got {self.sibling_choice!r}",
        )
        _require(self.max_reprompt_len > 0, "teacher.max_reprompt_len", f"must be > 0, got {self.max_reprompt_len}")
        _require(
            self.divergence_chunk_mib is None or self.divergence_chunk_mib > 0,
            "teacher.divergence_chunk_mib",
            f"must be > 0, got {self.divergence_chunk_mib}",
        )


@dataclass(frozen=True)
class SelfTeacherConfig:
    """The whole ``self_teacher`` section."""

    enable: bool = False  # the method configs switch it on; off = stock verl behaviour
    sc_grpo: SCGRPOConfig = field(default_factory=SCGRPOConfig)
    sdpo: SDPOConfig = field(default_factory=SDPOConfig)
    sdpg: SDPGConfig = field(default_factory=SDPGConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)

    def __post_init__(self):
        _check_types(self, "")

    @classmethod
    def from_mapping(cls, values: Any) -> "SelfTeacherConfig":
        return build_dataclass(cls, values, "self_teacher")


def build_dataclass(cls: type, values: Any, path: str) -> Any:
    """Build dataclass ``cls`` from a mapping, naming the full key of any unknown option."""
    if isinstance(values, cls):
        return values
    if values is None:
        return cls()
    if isinstance(values, DictConfig):
        values = OmegaConf.to_container(values, resolve=True)
    if not isinstance(values, Mapping):
        raise _error(f"{path}: expected a mapping of options, got {type(values).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known) - {"_target_"})
    if unknown:
        raise _error(f"{path}.{unknown[0]}: unknown option; known options are {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        if name == "_target_":
            continue
        default = known[name].default_factory if known[name].default_factory is not MISSING else None
        if default is not None and is_dataclass(default):
            value = build_dataclass(default, value, f"{path}.{name}")
        kwargs[name] = value
    return cls(**kwargs)


def _policy_loss_base():
    from verl.workers.config import PolicyLossConfig

    return PolicyLossConfig


@dataclass
class SelfTeacherPolicyLossConfig(_policy_loss_base()):
    """verl's PolicyLossConfig plus the plugin section, validated when verl builds the actor config.

    ``adv_estimator`` is interpolated from ``algorithm.adv_estimator`` so the pairing of estimator and
    loss is checked at start-up (verl itself only looks the estimator up at the first advantage step).
    """

    self_teacher: Any = None
    adv_estimator: Optional[str] = None

    def __post_init__(self):
        from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, POLICY_LOSS_REGISTRY

        object.__setattr__(self, "self_teacher", SelfTeacherConfig.from_mapping(self.self_teacher))
        if self.loss_mode not in POLICY_LOSS_REGISTRY or (
            self.adv_estimator is not None and self.adv_estimator not in ADV_ESTIMATOR_REGISTRY
        ):  # the plugin's registration may have been skipped (verl loads plugins once, swallowing errors)
            from scgrpo_verl.plugin import register

            register()
        if self.loss_mode not in POLICY_LOSS_REGISTRY:
            raise ValueError(
                f"actor_rollout_ref.actor.policy_loss.loss_mode: unknown loss {self.loss_mode!r}; "
                f"registered: {sorted(POLICY_LOSS_REGISTRY)}"
            )
        if self.adv_estimator is not None and self.adv_estimator not in ADV_ESTIMATOR_REGISTRY:
            raise ValueError(
                f"algorithm.adv_estimator: unknown estimator {self.adv_estimator!r}; "
                f"registered: {sorted(ADV_ESTIMATOR_REGISTRY)}"
            )
        if (self.loss_mode == "sc_grpo") != (self.adv_estimator == "sc_grpo") and self.adv_estimator is not None:
            raise ValueError(
                "algorithm.adv_estimator and actor_rollout_ref.actor.policy_loss.loss_mode must both be 'sc_grpo' "
                f"for SC-GRPO (got estimator {self.adv_estimator!r}, loss {self.loss_mode!r})"
            )
        if self.loss_mode in PLUGIN_LOSS_MODES and not self.self_teacher.enable:
            raise ValueError(
                f"self_teacher.enable: loss_mode {self.loss_mode!r} needs the self-teacher; set self_teacher.enable=true"
            )
