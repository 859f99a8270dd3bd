"""Teacher-prompt messages of the self-teacher methods, and chat prompt ids (pure python; no verl import).

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
The options themselves are :class:`scgrpo_verl.settings.TemplateConfig`, checked at construction: an unknown
placeholder or a missing required one is a ``ValueError`` naming the option
(``self_teacher.teacher.templates.<field>``).

:func:`chat_prompt_ids` turns any of these message lists (or a student's) into prompt ids, as verl renders a student
prompt (``apply_chat_template`` with ``data.apply_chat_template_kwargs``, e.g. the thinking switch of
:func:`chat_template_kwargs`): the one builder of chat prompt ids, for the teacher contexts, ``scgrpo-verl eval`` and
``scgrpo-verl ttsd``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from scgrpo_verl.settings import TemplateConfig

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
    return replace_last_user_message(messages, lambda question: templates.sdpo_reprompt.format(
        prompt=question,
        solution=templates.sdpo_solution.format(solution=solution) if solution is not None else "",
        feedback=templates.sdpo_feedback.format(feedback=feedback) if feedback is not None else "",
    ))


def sdpg_teacher_messages(messages: Sequence[Mapping], privileged: str, templates: TemplateConfig) -> list[dict]:
    """SDPG teacher messages: the last user message becomes the question plus the hint section."""
    return replace_last_user_message(
        messages, lambda question: templates.sdpg_privileged.format(prompt=question, privileged=privileged))


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
