"""Teacher-prompt templates of the three self-teacher methods (pure python; no verl import).

Every method builds the self-teacher's prompt from the student's chat messages plus extra context;
the response tokens scored after it are the student's own, unchanged (ALGORITHMS.md).

SC-GRPO (section 1). The paper's exact template is not public; ours is:

    system:  <base system prompt> + "\\n\\n" + sc_grpo_guide.format(reference=<demonstration>)
    ...the student's other messages, unchanged...

where <base system prompt> is the student's own system message when it has one, otherwise
``sc_grpo_default_system`` (empty by default, in which case the system message holds only the guide).
Solve-none groups (no verified rollout) condition on an unverified reference rollout; they use
``sc_grpo_solve_none_guide`` when it is set and ``sc_grpo_guide`` otherwise (the default: the paper
uses one conditioning mechanism for both routes).

SDPO (section 2). The LAST user message's content becomes

    sdpo_reprompt.format(prompt=<original content>,
                         solution=sdpo_solution.format(solution=<demonstration>) or "",
                         feedback=sdpo_feedback.format(feedback=<feedback>) or "")

(a section is the empty string when the rollout has no demonstration / no feedback); the system
message and any other message are kept.

SDPG (section 3). The LAST user message's content becomes
``sdpg_privileged.format(prompt=<original content>, privileged=<hint / reference answer>)``.

``truncation_marker`` is inserted where a demonstration, feedback or hint was cut to fit
``teacher.max_reprompt_len`` (``scgrpo_verl.teacher.fit``).

Placeholders are ``{name}`` fields of :meth:`str.format`; a literal brace is written ``{{`` / ``}}``.
Each template is checked at construction: an unknown placeholder or a missing required one is a
``ValueError`` naming the option (``self_teacher.teacher.templates.<field>``).

:func:`chat_prompt_ids` turns any of these message lists (or a student's) into prompt ids, as verl renders a student
prompt (``apply_chat_template`` with ``data.apply_chat_template_kwargs``, e.g. the thinking switch of
:func:`chat_template_kwargs`): the one builder of chat prompt ids, for the teacher contexts, ``scgrpo-verl eval`` and
``scgrpo-verl ttsd``.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional, Sequence

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


# -- message builders (shared by scgrpo_verl.teacher.plans and scgrpo_verl.explain) ----------------------
def normalize_messages(messages: Any) -> list[dict]:
    """Chat messages as a list of plain ``{"role", "content", ...}`` dicts (accepts numpy arrays of dicts)."""
    if isinstance(messages, (str, bytes)) or not hasattr(messages, "__iter__"):
        raise ValueError(f"prompt must be a list of chat messages, got {type(messages).__name__}")
    out = []
    for i, message in enumerate(messages):
        if not hasattr(message, "keys"):
            raise ValueError(
                f"prompt message {i} must be a mapping with 'role' and 'content', got {type(message).__name__}"
            )
        message = dict(message)
        if "role" not in message or "content" not in message:
            raise ValueError(f"prompt message {i} needs 'role' and 'content' keys, got {sorted(message)}")
        out.append(message)
    if not out:
        raise ValueError("prompt has no messages")
    return out


def _last_user_index(messages: Sequence[Mapping]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "user":
            if not isinstance(messages[i]["content"], str):
                raise ValueError(
                    f"the last user message must have text content, got {type(messages[i]['content']).__name__}"
                )
            return i
    raise ValueError("the prompt has no user message to rewrite into a teacher prompt")


def _replace_content(messages: Sequence[Mapping], index: int, content: str) -> list[dict]:
    out = [dict(m) for m in messages]
    out[index]["content"] = content
    return out


def replace_last_user_message(messages: Sequence[Mapping], rewrite) -> list[dict]:
    """``messages`` with the last user message's content replaced by ``rewrite(content)``."""
    messages = normalize_messages(messages)
    index = _last_user_index(messages)
    return _replace_content(messages, index, rewrite(messages[index]["content"]))


def sc_grpo_teacher_messages(
    messages: Sequence[Mapping], reference: str, templates: TemplateConfig, solve_none: bool = False
) -> list[dict]:
    """SC-GRPO teacher messages: system = base system prompt + guide with ``reference``; rest unchanged."""
    messages = normalize_messages(messages)
    guide = (templates.solve_none_guide if solve_none else templates.sc_grpo_guide).format(reference=reference)
    if messages[0]["role"] == "system":
        base, rest = messages[0]["content"], messages[1:]
        if not isinstance(base, str):
            raise ValueError(f"the system message must have text content, got {type(base).__name__}")
    else:
        base, rest = templates.sc_grpo_default_system, messages
    system = f"{base}\n\n{guide}" if base else guide
    return [{"role": "system", "content": system}] + [dict(m) for m in rest]


def sdpo_teacher_messages(
    messages: Sequence[Mapping], solution: Optional[str], feedback: Optional[str], templates: TemplateConfig
) -> list[dict]:
    """SDPO teacher messages: the last user message becomes the reprompt (solution and/or feedback sections)."""
    messages = normalize_messages(messages)
    index = _last_user_index(messages)
    content = templates.sdpo_reprompt.format(
        prompt=messages[index]["content"],
        solution=templates.sdpo_solution.format(solution=solution) if solution is not None else "",
        feedback=templates.sdpo_feedback.format(feedback=feedback) if feedback is not None else "",
    )
    return _replace_content(messages, index, content)


def sdpg_teacher_messages(messages: Sequence[Mapping], privileged: str, templates: TemplateConfig) -> list[dict]:
    """SDPG teacher messages: the last user message becomes the question plus the hint section."""
    messages = normalize_messages(messages)
    index = _last_user_index(messages)
    content = templates.sdpg_privileged.format(prompt=messages[index]["content"], privileged=privileged)
    return _replace_content(messages, index, content)


# -- chat prompt ids (shared by the teacher contexts, scgrpo_verl.eval and scgrpo_verl.ttsd) -------------------
def chat_template_kwargs(base: Optional[Mapping] = None, enable_thinking: Optional[bool] = None) -> dict:
    """``apply_chat_template`` keyword arguments: ``base`` (verl's ``data.apply_chat_template_kwargs``, or a CLI's
    ``--chat-template-kwargs``) with Qwen3's thinking switch ``enable_thinking`` set when it is given."""
    kwargs = dict(base or {})
    if enable_thinking is not None:
        kwargs["enable_thinking"] = bool(enable_thinking)
    return kwargs


def chat_prompt_ids(
    tokenizer, messages: Sequence[Mapping], chat_template_kwargs: Optional[Mapping] = None
) -> list[int]:
    """The prompt ids of a conversation, as verl renders a student prompt:
    ``apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **chat_template_kwargs)`` (the
    rendered text tokenised without special tokens added) as a flat list of ints. transformers 5 returns a
    ``BatchEncoding``, older versions a list; a nested ``[[ids]]``, a tensor or an array are flattened too."""
    out = tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=True, tokenize=True, **dict(chat_template_kwargs or {})
    )
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    if hasattr(out, "tolist"):  # a tensor or an array
        out = out.tolist()
    out = list(out)
    if out and (isinstance(out[0], (list, tuple)) or getattr(out[0], "ndim", 0) >= 1):
        if len(out) != 1:
            raise ValueError(f"apply_chat_template returned {len(out)} sequences for one conversation")
        out = out[0].tolist() if hasattr(out[0], "tolist") else list(out[0])
    return [int(i) for i in out]
