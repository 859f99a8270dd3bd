"""Teacher prompts within max_reprompt_len (scgrpo_verl.teacher.fit) with a real local fast tokenizer + ChatML."""

from conftest import HEADER, LONG, QUESTION, build_contexts as build, decode, make

from scgrpo_verl.settings import TemplateConfig

from scgrpo_verl.teacher.templates import chat_prompt_ids, sdpg_teacher_messages


def test_long_demonstration_is_shortened_keeping_question_instruction_header(tok):
    rollouts = [make(tok, "g", LONG, 1), make(tok, "g", "it is 4", 0)]
    full = build(rollouts, tok, "sdpo", sibling_choice="first", exclude_self=False)
    full_len = len(full.teacher_prompt_ids[1])
    budget = full_len - 200
    ctx = build(rollouts, tok, "sdpo", sibling_choice="first", exclude_self=False, max_reprompt_len=budget)
    assert ctx.mask.tolist() == [1, 1] and ctx.shortened == [True, True] and ctx.too_long == [False, False]
    for row in range(2):
        ids = ctx.teacher_prompt_ids[row]
        assert budget - 10 <= len(ids) <= budget
        assert ctx.teacher_input_ids[row] == ids + rollouts[row].response_ids
        text = decode(tok, ids)
        assert f"<|im_start|>user\n{QUESTION}\n\nCorrect solution:\n\nstep 0: add the numbers" in text
        assert "\n...[truncated]...\n" in text and "step 59" not in text
        assert text.endswith("correct solution to the original question.<|im_end|>\n" + HEADER)
    metrics = ctx.metrics()
    assert metrics["self_teacher/frac_contexts_shortened"] == 1.0 and metrics["self_teacher/num_too_long"] == 0


def test_solution_and_feedback_both_shortened(tok):
    rollouts = [make(tok, "g", LONG, 1), make(tok, "g", "it is 4", 0, feedback="Error: " + LONG)]
    kwargs = dict(sibling_choice="first", use_feedback=True, feedback_only_without_solution=False)
    full_len = len(build(rollouts, tok, "sdpo", **kwargs).teacher_prompt_ids[1])
    ctx = build(rollouts, tok, "sdpo", max_reprompt_len=full_len - 300, **kwargs)
    text = decode(tok, ctx.teacher_prompt_ids[1])
    assert ctx.source[1] == "solution+feedback" and ctx.shortened[1]
    assert text.count("...[truncated]...") == 2 and "Error: step 0" in text
    assert len(ctx.teacher_prompt_ids[1]) <= full_len - 300


def test_too_long_gets_no_teacher(tok):
    long_question = "Compute " + LONG
    rollouts = [make(tok, "g", "5", 1, question=long_question), make(tok, "g", "4", 0, question=long_question)]
    ctx = build(rollouts, tok, "sdpo", sibling_choice="first", max_reprompt_len=50)
    assert ctx.mask.tolist() == [0, 0] and ctx.too_long == [False, True]  # row 0 has no sibling at all
    assert ctx.teacher_prompt_ids == [None, None] and ctx.source == [None, None]
    assert ctx.metrics()["self_teacher/num_too_long"] == 1.0
    assert ctx.metrics()["self_teacher/mean_teacher_prompt_len"] == 0.0
    # SDPG with the hint as the only shortenable text
    rollouts = [make(tok, "g", "5", 1, privileged=LONG)]
    hint_as_marker = sdpg_teacher_messages(rollouts[0].prompt, TemplateConfig().truncation_marker, TemplateConfig())
    floor = len(chat_prompt_ids(tok, hint_as_marker))  # the shortest possible SDPG prompt here
    ctx = build(rollouts, tok, "sdpg", use_privileged_context=True, max_reprompt_len=floor + 20)
    assert ctx.mask.tolist() == [1] and ctx.shortened == [True] and len(ctx.teacher_prompt_ids[0]) <= floor + 20
    assert "Hint (the reference answer to this question):\nstep 0" in decode(tok, ctx.teacher_prompt_ids[0])
    ctx = build(rollouts, tok, "sdpg", use_privileged_context=True, max_reprompt_len=floor)
    assert ctx.mask.tolist() == [1] and ctx.teacher_prompt_ids[0] == chat_prompt_ids(tok, hint_as_marker)
    ctx = build(rollouts, tok, "sdpg", use_privileged_context=True, max_reprompt_len=floor - 1)
    assert ctx.mask.tolist() == [0] and ctx.too_long == [True]
