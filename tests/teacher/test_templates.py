"""Teacher templates (scgrpo_verl.teacher.templates): validation, and the messages each builder makes, against
messages written out by hand."""

import pytest
from conftest import QUESTION, build_contexts as build, decode, make

from scgrpo_verl.settings import TemplateConfig, template_placeholders
from scgrpo_verl.teacher.templates import (
    normalize_messages,
    sc_grpo_teacher_messages,
    sdpg_teacher_messages,
    sdpo_teacher_messages,
)


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


# -- the messages each builder makes, written out by hand ----------------------------------------------------------
SYSTEM = {"role": "system", "content": "You are careful."}
USER = {"role": "user", "content": "What is 2 + 3?"}
DEFAULT_GUIDE = ("A reference solution to the problem you are about to receive is shown below. "
                 "Use it as a guide while you write your own answer.\n\nReference solution:\n")


def test_sc_grpo_messages_put_the_guide_in_the_system_message():
    templates = TemplateConfig()
    # no system message, empty default system: the system message holds the guide only
    assert sc_grpo_teacher_messages([USER], "It is 5.", templates) == [
        {"role": "system", "content": DEFAULT_GUIDE + "It is 5."}, USER]
    # the student's own system message is the base
    assert sc_grpo_teacher_messages([SYSTEM, USER], "It is 5.", templates) == [
        {"role": "system", "content": "You are careful.\n\n" + DEFAULT_GUIDE + "It is 5."}, USER]
    # a default system prompt is the base only without the student's
    based = TemplateConfig(sc_grpo_default_system="BASE", sc_grpo_guide="Ref: {reference}")
    assert sc_grpo_teacher_messages([USER], "x", based) == [{"role": "system", "content": "BASE\n\nRef: x"}, USER]
    assert sc_grpo_teacher_messages([SYSTEM, USER], "x", based)[0]["content"] == "You are careful.\n\nRef: x"
    # solve-none: the guide unless a solve-none guide is set
    assert sc_grpo_teacher_messages([USER], "x", based, solve_none=True)[0]["content"] == "BASE\n\nRef: x"
    own = TemplateConfig(sc_grpo_guide="Ref: {reference}", sc_grpo_solve_none_guide="Attempt: {reference}")
    assert own.solve_none_guide == "Attempt: {reference}" and based.solve_none_guide == "Ref: {reference}"
    assert sc_grpo_teacher_messages([USER], "x", own, solve_none=True)[0]["content"] == "Attempt: x"
    assert sc_grpo_teacher_messages([USER], "x", own)[0]["content"] == "Ref: x"


def test_sdpo_messages_rewrite_the_last_user_message():
    templates = TemplateConfig()
    closing = "\n\nUsing the material above, now give a correct solution to the original question."
    solution = "\n\nCorrect solution:\n\nIt is 5.\n"
    feedback = "\n\nFeedback received on your earlier, unsuccessful attempt:\n\nWrong: 4\n"
    cases = {("It is 5.", None): solution, (None, "Wrong: 4"): feedback, ("It is 5.", "Wrong: 4"): solution + feedback,
             (None, None): ""}
    for (sol, fb), middle in cases.items():
        assert sdpo_teacher_messages([SYSTEM, USER], sol, fb, templates) == [
            SYSTEM, {"role": "user", "content": "What is 2 + 3?" + middle + closing}]
    # multi-turn: only the LAST user message is rewritten; every other message is kept as it is
    turns = [USER, {"role": "assistant", "content": "4?"}, {"role": "user", "content": "Again."}]
    custom = TemplateConfig(sdpo_reprompt="[{prompt}|{solution}|{feedback}]", sdpo_solution="S={solution}",
                            sdpo_feedback="F={feedback}")
    assert sdpo_teacher_messages(turns, "5", "no", custom) == turns[:2] + [{"role": "user", "content": "[Again.|S=5|F=no]"}]


def test_sdpg_messages_append_the_hint():
    expected = ("What is 2 + 3?\n\nHint (the reference answer to this question):\n5\n\n"
                "Use the hint to produce a correct, complete solution.")
    assert sdpg_teacher_messages([SYSTEM, USER], "5", TemplateConfig()) == [SYSTEM, {"role": "user", "content": expected}]


def test_inserted_texts_are_verbatim_and_inputs_untouched():
    """Braces in an inserted text are not read as placeholders; literal braces in a template render as one brace;
    the caller's messages are copied, not modified."""
    messages = [{"role": "user", "content": "Solve {x}", "name": "kept"}]
    out = sdpg_teacher_messages(messages, "{prompt} {0}", TemplateConfig(sdpg_privileged="{{{prompt}}}: {privileged}"))
    assert out == [{"role": "user", "content": "{Solve {x}}: {prompt} {0}", "name": "kept"}]
    assert messages == [{"role": "user", "content": "Solve {x}", "name": "kept"}]
    out[0]["content"] = "changed"
    reprompt = sdpo_teacher_messages(messages, "{solution}", None, TemplateConfig())
    assert messages[0]["content"] == "Solve {x}" and "Correct solution:\n\n{solution}\n" in reprompt[0]["content"]


def test_message_errors_name_the_problem():
    templates = TemplateConfig()
    with pytest.raises(ValueError, match="no user message"):
        sdpo_teacher_messages([SYSTEM], "s", None, templates)
    with pytest.raises(ValueError, match="last user message must have text content, got list"):
        sdpg_teacher_messages([{"role": "user", "content": [{"type": "text"}]}], "h", templates)
    with pytest.raises(ValueError, match="system message must have text content"):
        sc_grpo_teacher_messages([{"role": "system", "content": None}, USER], "r", templates)


def test_normalize_messages():
    import numpy as np

    array = np.array([SYSTEM, USER], dtype=object)  # how parquet rows arrive
    assert normalize_messages(array) == [SYSTEM, USER] and type(normalize_messages(array)[0]) is dict
    for bad, match in (("hi", "list of chat messages, got str"), (3, "got int"), ([], "no messages"),
                       (["hi"], "message 0 must be a mapping"), ([{"role": "user"}], "needs 'role' and 'content'")):
        with pytest.raises(ValueError, match=match):
            normalize_messages(bad)


@pytest.mark.parametrize("template, names", [
    ("plain text", set()),
    ("{prompt}{solution}", {"prompt", "solution"}),
    ("{{literal}} {feedback} {feedback}", {"feedback"}),
    ("}}{{", set()),
])
def test_template_placeholders(template, names):
    assert template_placeholders("sdpo_reprompt", template) == names


def test_from_mapping_takes_a_dictconfig_and_skips_target():
    from omegaconf import OmegaConf

    values = OmegaConf.create({"_target_": "x.Y", "sc_grpo_guide": "G {reference}", "truncation_marker": "~"})
    config = TemplateConfig.from_mapping(values)
    assert config == TemplateConfig(sc_grpo_guide="G {reference}", truncation_marker="~")
    assert TemplateConfig.from_mapping(config) is config
    with pytest.raises(ValueError, match=r"self_teacher\.teacher\.templates: expected a mapping of options, got list"):
        TemplateConfig.from_mapping(["sc_grpo_guide"])
