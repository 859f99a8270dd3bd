"""The plugin's options as plain dataclasses (no verl import, nothing of the package above ``algos``): the one
source of truth for their defaults.

The YAML section ``self_teacher`` (``configs/self_teacher_defaults.yaml``) mirrors :class:`SelfTeacherConfig`
field by field (``tests/test_settings.py`` compares the two). Every option carries its help text in
``field(metadata={"help": ...})``; ``scgrpo-verl check`` prints it next to the value. verl sees the section through
:mod:`scgrpo_verl.config` (the verl config subclass), the teacher layer and the methods use these classes directly.

Each method's options block (``self_teacher.<method>``) is a dataclass here; the method itself, its hooks and which
options it reads, is a file in :mod:`scgrpo_verl.methods`.
"""

from __future__ import annotations

import string
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Iterator, Mapping, Optional

from scgrpo_verl.algos.divergence import DIVERGENCE_KINDS
from scgrpo_verl.errors import ConfigError

TEACHER_WEIGHTS = ("live", "frozen", "ema", "trust_region")
SDPO_DISTILLATION_MODES = ("full", "topk", "sampled_token")
OPSD_DISTILLATION_MODES = ("full", "topk")
OPSD_TEACHER_WEIGHTS = ("frozen", "live")
REFERENCE_KL_TYPES = ("urkl", "ufkl")
SIBLING_CHOICES = ("uniform", "first")
THRESHOLD_SCOPES = ("micro_batch", "batch")
SDPO_NORMALIZATIONS = ("all_tokens", "teacher_tokens")


def option(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING) -> Any:
    """A dataclass field with its help text (``metadata["help"]``, as TRL's configs do)."""
    return field(default=default, default_factory=default_factory, metadata={"help": help})


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"self_teacher.{key}: {message}")


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
            raise ConfigError(f"self_teacher.{section}{item.name}: must be {allowed}, got {shown}")


def _one_of(value: Any, allowed: tuple, key: str) -> None:
    _require(value in allowed, key, f"must be one of {allowed}, got {value!r}")


def _in_unit_interval(value: float) -> bool:
    return 0.0 <= value <= 1.0


@dataclass(frozen=True)
class SCGRPOConfig:
    """SC-GRPO options (ALGORITHMS.md section 1)."""

    c_min: float = option(1e-4, "floor of c in f(D) = D / (D + c)")
    quantile: float = option(0.75, "c = max(this quantile of the active-token D in the micro-batch, c_min)")
    renormalize: bool = option(False, "rescale f(D) to mean 1 (changes the effective learning rate)")
    solve_none_alpha: float = option(0.1, "alpha of the solve-none pseudo-advantage (groups with no verified rollout)")
    epsilon: float = option(1e-6, "std floor of the solve-none z-score")
    seed: int = option(0, "seeds the uniform draws of references and verified siblings")
    threshold_scope: str = option("micro_batch", "c over the update's micro-batch (the paper) | batch: one c per step")

    def __post_init__(self):
        _check_types(self, "sc_grpo.")
        _require(self.c_min > 0, "sc_grpo.c_min", f"must be > 0, got {self.c_min}")
        _one_of(self.threshold_scope, THRESHOLD_SCOPES, "sc_grpo.threshold_scope")
        _require(0.0 < self.quantile < 1.0, "sc_grpo.quantile", f"must be in (0, 1), got {self.quantile}")
        _require(self.solve_none_alpha >= 0, "sc_grpo.solve_none_alpha", f"must be >= 0, got {self.solve_none_alpha}")
        _require(self.epsilon > 0, "sc_grpo.epsilon", f"must be > 0, got {self.epsilon}")


@dataclass(frozen=True)
class SDPOConfig:
    """SDPO options (ALGORITHMS.md section 2; defaults of the reference code)."""

    distillation: str = option("topk", "full | topk | sampled_token")
    topk: int = option(100, "the student's top-k token ids the divergence runs over")
    add_tail: bool = option(True, "tail bucket log(1 - sum top-k p); false renormalises over the top-k")
    alpha: float = option(0.5, "0 forward KL(q||p), 1 reverse KL(p||q), else the generalized JSD")
    is_clip: Optional[float] = option(2.0, "sg(min(pi/pi_old, is_clip)) on the distillation term; null disables")
    pg_coef: float = option(0.0, "lambda in lambda * PG + (1 - lambda) * distillation (reference code: 0)")
    normalize: str = option("all_tokens", "distillation mean over all response tokens | teacher_tokens (the authors')")

    def __post_init__(self):
        _check_types(self, "sdpo.")
        _one_of(self.distillation, SDPO_DISTILLATION_MODES, "sdpo.distillation")
        _require(self.topk >= 1, "sdpo.topk", f"must be >= 1, got {self.topk}")
        _require(_in_unit_interval(self.alpha), "sdpo.alpha", f"must be in [0, 1], got {self.alpha}")
        _require(
            self.distillation != "sampled_token" or self.alpha == 1.0,
            "sdpo.alpha",
            f"sampled_token distillation estimates reverse KL and needs alpha = 1, got {self.alpha}",
        )
        _require(self.is_clip is None or self.is_clip > 0, "sdpo.is_clip", f"must be > 0 or null, got {self.is_clip}")
        _require(_in_unit_interval(self.pg_coef), "sdpo.pg_coef", f"must be in [0, 1], got {self.pg_coef}")
        _one_of(self.normalize, SDPO_NORMALIZATIONS, "sdpo.normalize")


@dataclass(frozen=True)
class SDPGConfig:
    """SDPG options (ALGORITHMS.md section 3). alpha * L_K uses verl's ``actor.kl_loss_coef``."""

    beta_base: float = option(1e-3, "beta of the L_OPD term at its peak")
    warmup_steps: int = option(50, "T_warm: linear warm-up of beta")
    decay_steps: int = option(350, "T_decay: cosine decay of beta after the warm-up")
    total_steps: int = option(400, "T: the step at which beta reaches 0")
    opd_clamp: float = option(20.0, "per-token clamp of KL(p || q)")
    ref_kl: str = option("urkl", "urkl: 0.5 log^2(pi/pi_ref) | ufkl: pi_ref/pi + log(pi/pi_ref)")

    def __post_init__(self):
        _check_types(self, "sdpg.")
        _require(self.beta_base >= 0, "sdpg.beta_base", f"must be >= 0, got {self.beta_base}")
        for name in ("warmup_steps", "decay_steps", "total_steps"):
            _require(getattr(self, name) >= 0, f"sdpg.{name}", f"must be >= 0, got {getattr(self, name)}")
        _require(self.opd_clamp > 0, "sdpg.opd_clamp", f"must be > 0, got {self.opd_clamp}")
        _one_of(self.ref_kl, REFERENCE_KL_TYPES, "sdpg.ref_kl")


#: the teacher prompt of the OPSD paper's Figure 2 (arXiv 2601.18734 section 3.2), in the user turn after the question
#: as the authors' code places it
OPSD_REFERENCE_TEMPLATE = (
    "{prompt}\n\nHere is a reference solution:\n{reference}\n\n"
    "After understanding the reference solution, please try to solve this problem using your own approach below:"
)


@dataclass(frozen=True)
class OPSDConfig:
    """OPSD options (On-Policy Self-Distillation, arXiv 2601.18734): the same model with the dataset's reference
    solution in its prompt is the teacher; pure distillation on the student's own rollouts. Each default's source
    is cited in ``configs/methods/opsd.yaml``."""

    divergence: str = option("forward_kl", "forward_kl: KL(q||p) (the paper's choice) | reverse_kl: KL(p||q) | "
                                           "jsd: generalized JSD with beta")
    beta: float = option(0.5, "jsd only: the mixture M = beta q + (1 - beta) p (0 forward KL, 1 reverse KL)")
    distillation: str = option("full", "full: the whole vocabulary (the paper) | topk: the student's top-k ids plus "
                                       "a tail bucket")
    topk: int = option(64, "distillation=topk: how many ids")
    reference_key: str = option("reference_solution", "extra_info key of the dataset row's worked reference "
                                                      "solution (data_prep's gsm8k, math500, aime2024 write it)")
    template: str = option(OPSD_REFERENCE_TEMPLATE, "teacher prompt: the last user message becomes this; "
                                                    "{prompt} the question, {reference} the reference solution")

    def __post_init__(self):
        _check_types(self, "opsd.")
        _one_of(self.divergence, DIVERGENCE_KINDS, "opsd.divergence")
        _require(_in_unit_interval(self.beta), "opsd.beta", f"must be in [0, 1], got {self.beta}")
        _one_of(self.distillation, OPSD_DISTILLATION_MODES, "opsd.distillation")
        _require(self.topk >= 1, "opsd.topk", f"must be >= 1, got {self.topk}")
        _require(self.reference_key.strip() != "", "opsd.reference_key", "must name an extra_info key")
        check_template("self_teacher.opsd.template", self.template, allowed={"prompt", "reference"},
                       required={"prompt", "reference"})


# -- teacher-prompt templates (the messages they build: scgrpo_verl.teacher.templates) -----------------------
KEY_PREFIX = "self_teacher.teacher.templates"

# field -> (allowed placeholders, required placeholders)
PLACEHOLDERS: dict[str, tuple[frozenset, frozenset]] = {
    "sdpo_reprompt": (frozenset({"prompt", "solution", "feedback"}), frozenset({"prompt", "solution", "feedback"})),
    "sdpo_solution": (frozenset({"solution"}), frozenset({"solution"})),
    "sdpo_feedback": (frozenset({"feedback"}), frozenset({"feedback"})),
    "sc_grpo_default_system": (frozenset(), frozenset()),
    "sc_grpo_guide": (frozenset({"reference"}), frozenset({"reference"})),
    "sc_grpo_solve_none_guide": (frozenset({"reference"}), frozenset({"reference"})),
    "sdpg_privileged": (frozenset({"prompt", "privileged"}), frozenset({"prompt", "privileged"})),
}


def _error(name: str, message: str) -> ValueError:
    return ValueError(f"{KEY_PREFIX}.{name}: {message}")


def template_placeholders(key: str, template: str) -> set[str]:
    """The ``{placeholder}`` names of ``template`` (the option ``key``); positional, attribute, index and
    format-spec fields are rejected (they would make rendering depend on the inserted text)."""
    found = set()
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:  # unbalanced braces
        raise ValueError(f"{key}: malformed template ({exc}); write a literal brace as '{{{{' or '}}}}'") from None
    for _, field_name, format_spec, conversion in parsed:
        if field_name is None:
            continue
        if field_name == "" or field_name.isdigit():
            raise ValueError(f"{key}: positional placeholders ('{{}}' / '{{0}}') are not allowed; use named ones")
        if not field_name.isidentifier():
            raise ValueError(f"{key}: placeholder {{{field_name}}} must be a plain name (no attribute or index access)")
        if format_spec or conversion:
            raise ValueError(f"{key}: placeholder {{{field_name}}} must not carry a conversion or format spec")
        found.add(field_name)
    return found


def check_template(key: str, template: Any, allowed: set, required: set) -> None:
    """A ``ValueError`` naming option ``key`` unless ``template`` is a string whose placeholders are among
    ``allowed`` and include every ``required`` one."""
    if not isinstance(template, str):
        raise ValueError(f"{key}: must be a string, got {type(template).__name__}")
    found = template_placeholders(key, template)
    unknown = sorted(found - set(allowed))
    if unknown:
        allowed_text = ", ".join("{" + p + "}" for p in sorted(allowed)) or "none"
        raise ValueError(f"{key}: unknown placeholder {{{unknown[0]}}}; allowed: {allowed_text}")
    missing = sorted(set(required) - found)
    if missing:
        raise ValueError(f"{key}: missing required placeholder {{{missing[0]}}}")


def _check_template(name: str, template: Any) -> None:
    allowed, required = PLACEHOLDERS[name]
    check_template(f"{KEY_PREFIX}.{name}", template, allowed, required)


@dataclass(frozen=True)
class TemplateConfig:
    """Teacher-prompt templates (``self_teacher.teacher.templates``); see the module docstring."""

    # SDPO: the reprompt replaces the last user message; a closing line asks for a correct solution.
    sdpo_reprompt: str = (
        "{prompt}{solution}{feedback}\n\n"
        "Using the material above, now give a correct solution to the original question."
    )
    sdpo_solution: str = "\n\nCorrect solution:\n\n{solution}\n"
    sdpo_feedback: str = "\n\nFeedback received on your earlier, unsuccessful attempt:\n\n{feedback}\n"
    # SC-GRPO: base system prompt + guide instruction + the reference trajectory, in the system message.
    sc_grpo_default_system: str = ""
    sc_grpo_guide: str = (
        "A reference solution to the problem you are about to receive is shown below. "
        "Use it as a guide while you write your own answer.\n\n"
        "Reference solution:\n{reference}"
    )
    sc_grpo_solve_none_guide: Optional[str] = None  # None: solve-none references use sc_grpo_guide
    # SDPG: the question plus a hint section holding the dataset's reference answer / solution.
    sdpg_privileged: str = (
        "{prompt}\n\nHint (the reference answer to this question):\n{privileged}\n\n"
        "Use the hint to produce a correct, complete solution."
    )
    truncation_marker: str = "\n...[truncated]...\n"

    def __post_init__(self):
        for name in PLACEHOLDERS:
            value = getattr(self, name)
            if name == "sc_grpo_solve_none_guide" and value is None:
                continue
            _check_template(name, value)
        if not isinstance(self.truncation_marker, str):
            raise _error("truncation_marker", f"must be a string, got {type(self.truncation_marker).__name__}")

    @classmethod
    def from_mapping(cls, values: Any) -> "TemplateConfig":
        """Build from a mapping (or an OmegaConf ``DictConfig``), naming an unknown option; ``None``: defaults."""
        if isinstance(values, cls):
            return values
        if values is None:
            return cls()
        if hasattr(values, "items") and not isinstance(values, Mapping):  # DictConfig without importing omegaconf
            values = {key: values[key] for key in values}
        if not isinstance(values, Mapping):
            raise ValueError(f"{KEY_PREFIX}: expected a mapping of options, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known - {"_target_"})
        if unknown:
            raise _error(unknown[0], f"unknown option; known options are {sorted(known)}")
        return cls(**{key: value for key, value in values.items() if key != "_target_"})

    @property
    def solve_none_guide(self) -> str:
        return self.sc_grpo_guide if self.sc_grpo_solve_none_guide is None else self.sc_grpo_solve_none_guide


@dataclass(frozen=True)
class TeacherConfig:
    """How the self-teacher is built (ALGORITHMS.md sections 1-3 and 'Shared machinery')."""

    weights: str = option("live", "live | frozen | ema | trust_region")
    ema_rate: float = option(0.05, "EMA teacher: teacher <- (1 - rate) teacher + rate policy, once per step")
    trust_region_mix: float = option(0.05, "logits lerp between the frozen initial model and the live policy")
    success_threshold: float = option(1.0, "a rollout is verified when its reward >= this")
    sibling_choice: str = option("uniform", "uniform (SC-GRPO) | first (SDPO's first success)")
    exclude_self: bool = option(True, "never condition a rollout on itself (dont_reprompt_on_self_success)")
    remove_thinking: bool = option(True, "strip <think>...</think> from demonstrations")
    use_feedback: bool = option(False, "put the environment's textual feedback into the teacher prompt")
    feedback_only_without_solution: bool = option(True, "SDPO: feedback only when no verified sibling")
    use_privileged_context: bool = option(False, "the dataset row's hint / reference answer (SDPG)")
    max_reprompt_len: int = option(10240, "teacher prompt budget in tokens; demonstrations are shortened first")
    divergence_chunk_mib: Optional[float] = option(
        None, "fp32 work per chunk of the divergence kernel; null: the device's budget (CPU 160 MiB, CUDA a quarter "
              "of the free memory, at most 8 GiB)")
    templates: TemplateConfig = option(default_factory=TemplateConfig, help="teacher-prompt templates "
                                       "(scgrpo_verl/teacher/templates.py)")

    def __post_init__(self):
        _check_types(self, "teacher.")
        _one_of(self.weights, TEACHER_WEIGHTS, "teacher.weights")
        _require(0.0 < self.ema_rate <= 1.0, "teacher.ema_rate", f"must be in (0, 1], got {self.ema_rate}")
        _require(
            _in_unit_interval(self.trust_region_mix),
            "teacher.trust_region_mix",
            f"must be in [0, 1], got {self.trust_region_mix}",
        )
        _one_of(self.sibling_choice, SIBLING_CHOICES, "teacher.sibling_choice")
        _require(self.max_reprompt_len > 0, "teacher.max_reprompt_len", f"must be > 0, got {self.max_reprompt_len}")
        _require(
            self.divergence_chunk_mib is None or self.divergence_chunk_mib > 0,
            "teacher.divergence_chunk_mib",
            f"must be > 0, got {self.divergence_chunk_mib}",
        )

    @property
    def divergence_chunk_bytes(self) -> Optional[int]:
        """``divergence_chunk_mib`` in bytes (None: the device's budget)."""
        return None if self.divergence_chunk_mib is None else int(self.divergence_chunk_mib * (1 << 20))


@dataclass(frozen=True)
class SelfTeacherConfig:
    """The whole ``self_teacher`` section."""

    enable: bool = option(False, "the method configs switch it on; off = stock verl behaviour")
    sc_grpo: SCGRPOConfig = option(default_factory=SCGRPOConfig, help="SC-GRPO (arXiv 2606.18810)")
    sdpo: SDPOConfig = option(default_factory=SDPOConfig, help="SDPO (arXiv 2601.20802)")
    sdpg: SDPGConfig = option(default_factory=SDPGConfig, help="SDPG (arXiv 2606.04036)")
    opsd: OPSDConfig = option(default_factory=OPSDConfig, help="OPSD (arXiv 2601.18734)")
    teacher: TeacherConfig = option(default_factory=TeacherConfig, help="how the self-teacher is built")

    def __post_init__(self):
        _check_types(self, "")

    @classmethod
    def from_mapping(cls, values: Any) -> "SelfTeacherConfig":
        return build_dataclass(cls, values, "self_teacher")


def build_dataclass(cls: type, values: Any, path: str) -> Any:
    """Build dataclass ``cls`` from a mapping (or an OmegaConf ``DictConfig``), naming the full key of any unknown
    option."""
    if isinstance(values, cls):
        return values
    if values is None:
        return cls()
    if not isinstance(values, Mapping) and hasattr(values, "items"):  # a DictConfig, without importing omegaconf
        from omegaconf import OmegaConf

        values = OmegaConf.to_container(values, resolve=True)
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path}: expected a mapping of options, got {type(values).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known) - {"_target_"})
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: unknown option; known options are {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        if name == "_target_":
            continue
        default = known[name].default_factory if known[name].default_factory is not MISSING else None
        if default is not None and is_dataclass(default):
            value = build_dataclass(default, value, f"{path}.{name}")
        kwargs[name] = value
    return cls(**kwargs)


def option_help(cls: type, prefix: str) -> Iterator[tuple[str, Any, str]]:
    """``(key, default, help)`` of every option of dataclass ``cls`` (nested sections flattened), keys under
    ``prefix``."""
    instance = cls()
    for item in fields(cls):
        key = f"{prefix}.{item.name}"
        value = getattr(instance, item.name)
        if is_dataclass(value) and "help" in item.metadata:
            yield from option_help(type(value), key)
        else:
            yield key, value, item.metadata.get("help", "")
