"""The self-teacher: teacher contexts (prompts) per rollout and the teacher pass on a causal LM."""

from scgrpo_verl.teacher.contexts import TeacherContexts, build_teacher_contexts
from scgrpo_verl.teacher.fit import fit_teacher_prompt
from scgrpo_verl.teacher.rollouts import Rollout, strip_thinking
from scgrpo_verl.settings import TemplateConfig
from scgrpo_verl.teacher.templates import (
    chat_prompt_ids,
    sc_grpo_teacher_messages,
    sdpg_teacher_messages,
    sdpo_teacher_messages,
)

__all__ = [
    "Rollout",
    "TeacherContexts",
    "TemplateConfig",
    "build_teacher_contexts",
    "chat_prompt_ids",
    "fit_teacher_prompt",
    "sc_grpo_teacher_messages",
    "sdpg_teacher_messages",
    "sdpo_teacher_messages",
    "strip_thinking",
]
