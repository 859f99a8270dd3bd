"""Teacher templates (scgrpo_verl.teacher.templates): validation, and the messages each builder makes, against
messages written out by hand."""

import pytest
from conftest import QUESTION, build_contexts as build, decode, make

from scgrpo_verl.teacher.templates import TemplateConfig


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sdpo_reprompt": "{prompt}{solution}{feedback}{answer}"}, r"templates\.sdpo_reprompt: unknown placeholder \{answer\}"),
        ({"sdpo_reprompt": "{prompt}{solution}"}, r"templates\.sdpo_reprompt: missing required placeholder \{feedback\}"),
        ({"sdpo_solution": "Correct solution:"}, r"templates\.sdpo_solution: missing required placeholder \{solution\}"),
        ({"sdpo_feedback": "{feedback} {0}"}, r"templates\.sdpo_feedback: positional"),
        ({"sc_grpo_guide": "{reference.text}"}, r"templates\.sc_grpo_guide: placeholder"),
        ({"sc_grpo_guide": "{reference!r}"}, r"templates\.sc_grpo_guide: placeholder"),
        ({"sc_grpo_solve_none_guide": "no placeholder"}, r"templates\.sc_grpo_solve_none_guide: missing"),
        ({"sc_grpo_default_system": "{system}"}, r"templates\.sc_grpo_default_system: unknown placeholder"),
        ({"sdpg_privileged": "{prompt} {hint}"}, r"templates\.sdpg_privileged: unknown placeholder \{hint\}"),
        ({"sdpg_privileged": "{prompt} {privileged"}, r"templates\.sdpg_privileged: malformed"),
        ({"truncation_marker": 3}, r"templates\.truncation_marker: must be a string"),
        ({"sdpo_solution": None}, r"templates\.sdpo_solution: must be a string"),
    ],
)
def test_template_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TemplateConfig(**kwargs)


def test_template_from_mapping_and_literal_braces(tok):
    assert TemplateConfig.from_mapping(None) == TemplateConfig()
    with pytest.raises(ValueError, match=r"self_teacher\.teacher\.templates\.bogus: unknown option"):
        TemplateConfig.from_mapping({"bogus": "x"})
    templates = TemplateConfig(sdpg_privileged="{prompt} {{hint}}: {privileged}")
    ctx = build([make(tok, "g", "5", 1, privileged="{x}")], tok, "sdpg", templates=templates, use_privileged_context=True)
    assert f"{QUESTION} {{hint}}: {{x}}" in decode(tok, ctx.teacher_prompt_ids[0])
