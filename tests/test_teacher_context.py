"""Teacher contexts (scgrpo_verl.teacher.context / templates) with a real local fast tokenizer + ChatML."""

import pytest
import torch
from tokenizer_utils import build_byte_level_tokenizer

from scgrpo_verl.algos.sc_grpo import ROUTE_PLAIN, ROUTE_SOLVE_NONE, ROUTE_WEIGHTED
from scgrpo_verl.config import TeacherConfig
from scgrpo_verl.teacher.context import Rollout, build_teacher_contexts, chat_template_ids, strip_thinking
from scgrpo_verl.teacher.templates import TemplateConfig, sdpg_teacher_messages

HEADER = "<|im_start|>assistant\n"
QUESTION = "What is 2 + 3?"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_byte_level_tokenizer(tmp_path_factory.mktemp("tok"))


def make(tok, uid, text, score, question=QUESTION, system=None, feedback="", privileged=None):
    prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return Rollout(
        uid=uid,
        prompt=prompt,
        response_ids=tok.encode(text, add_special_tokens=False),
        response_text=text,
        score=score,
        feedback=feedback,
        privileged=privileged,
    )


def group(tok, uid, scores, **kwargs):
    return [make(tok, uid, f"answer {uid}-{i} is {s}", s, **kwargs) for i, s in enumerate(scores)]


def decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=False)


def build(rollouts, tok, method, seed=0, templates=None, **teacher):
    gen = torch.Generator().manual_seed(seed)
    return build_teacher_contexts(rollouts, tok, method, TeacherConfig(**teacher), templates, generator=gen)


# -- tokenizer helper ------------------------------------------------------------------------------------
def test_tokenizer_helper_round_trips(tmp_path):
    from transformers import AutoTokenizer

    build_byte_level_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    text = "Héllo ✓ the answer is 42"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text and len(ids) < len(text.encode())  # merges were learnt
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tok.encode(special, add_special_tokens=False)) == 1
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n" + HEADER
    assert decode(tok, chat_template_ids(tok, messages)) == rendered


def test_chat_template_ids_accepts_list_and_nested_returns():
    class Fake:
        def __init__(self, out):
            self.out = out

        def apply_chat_template(self, *args, **kwargs):
            return self.out

    assert chat_template_ids(Fake([1, 2]), []) == [1, 2]
    assert chat_template_ids(Fake([[1, 2]]), []) == [1, 2]
    assert chat_template_ids(Fake({"input_ids": [3]}), []) == [3]
    assert chat_template_ids(Fake(torch.tensor([[4, 5]])), []) == [4, 5]


# -- lengths and the shared response ids -----------------------------------------------------------------
@pytest.mark.parametrize("method", ["sc_grpo", "sdpo", "sdpg"])
def test_teacher_input_is_prompt_plus_identical_response_ids(tok, method):
    rollouts = group(tok, "a", [1, 1, 0, 0], privileged="5") + group(tok, "b", [1, 1, 1, 0], privileged="7")
    ctx = build(rollouts, tok, method, use_privileged_context=True)
    assert ctx.mask.tolist() == [1.0] * 8
    for r, prompt, full, msgs in zip(rollouts, ctx.teacher_prompt_ids, ctx.teacher_input_ids, ctx.teacher_messages):
        assert full == prompt + r.response_ids
        assert prompt == chat_template_ids(tok, msgs)
        assert decode(tok, prompt).endswith(HEADER)
        assert QUESTION in decode(tok, prompt)


# -- SDPO ------------------------------------------------------------------------------------------------
def test_sdpo_first_success_and_never_self(tok):
    rollouts = group(tok, "g", [0, 1, 0, 1, 1])
    ctx = build(rollouts, tok, "sdpo", sibling_choice="first")
    assert ctx.sibling_index == [1, 3, 1, 1, 1]
    assert ctx.source == ["solution"] * 5
    text = decode(tok, ctx.teacher_prompt_ids[0])
    assert "Correct solution:\n\n" + rollouts[1].response_text in text
    assert rollouts[0].response_text not in text
    assert text.index(QUESTION) < text.index("Correct solution:") < text.index("correct solution to the original question")


def test_sdpo_all_success_group_gets_teacher_from_another_success(tok):
    rollouts = group(tok, "g", [1, 1, 1])
    for seed in range(20):
        ctx = build(rollouts, tok, "sdpo", seed=seed)
        assert ctx.mask.tolist() == [1, 1, 1]
        assert all(s != i and s >= 0 for i, s in enumerate(ctx.sibling_index))
        for i in range(3):
            assert rollouts[i].response_text not in decode(tok, ctx.teacher_prompt_ids[i])
    lone = group(tok, "h", [1]) + group(tok, "k", [1, 0])
    ctx = build(lone, tok, "sdpo")
    assert ctx.mask.tolist() == [0, 0, 1] and ctx.sibling_index == [-1, -1, 1]


def test_sdpo_exclude_self_false_allows_self(tok):
    rollouts = group(tok, "g", [1, 0])
    ctx = build(rollouts, tok, "sdpo", sibling_choice="first", exclude_self=False)
    assert ctx.sibling_index == [0, 0]


def test_sdpo_feedback_rules(tok):
    rollouts = [
        make(tok, "fail", "x = 1", 0, feedback="Wrong answer: expected 5"),
        make(tok, "fail", "x = 2", 0, feedback=""),
        make(tok, "mixed", "it is 5", 1, feedback="All tests passed"),
        make(tok, "mixed", "it is 4", 0, feedback="Runtime error"),
    ]
    off = build(rollouts, tok, "sdpo", sibling_choice="first")
    assert off.source == [None, None, None, "solution"]
    assert off.mask.tolist() == [0, 0, 0, 1]

    only_without = build(rollouts, tok, "sdpo", sibling_choice="first", use_feedback=True)
    assert only_without.source == ["feedback", None, "feedback", "solution"]
    text = decode(tok, only_without.teacher_prompt_ids[0])
    assert "unsuccessful attempt:\n\nWrong answer: expected 5" in text and "Correct solution:" not in text
    assert "Runtime error" not in decode(tok, only_without.teacher_prompt_ids[3])

    both = build(rollouts, tok, "sdpo", sibling_choice="first", use_feedback=True, feedback_only_without_solution=False)
    assert both.source == ["feedback", None, "feedback", "solution+feedback"]
    text = decode(tok, both.teacher_prompt_ids[3])
    assert text.index("Correct solution:\n\nit is 5") < text.index("Runtime error")
    assert both.metrics()["self_teacher/frac_feedback_used"] == pytest.approx(3 / 4)


def test_think_blocks_stripped_from_demonstrations(tok):
    assert strip_thinking("<think>a\nb</think>\nThe answer is 5.") == "The answer is 5."
    assert strip_thinking("reasoning without an opening tag</think>The answer is 5.") == "The answer is 5."
    assert strip_thinking("A<think>x</think>B<think>y</think>C") == "ABC"
    assert strip_thinking("The answer is 5.<think>never closed") == "The answer is 5."
    assert strip_thinking("<think>only thinking") == ""
    rollouts = [
        make(tok, "g", "<think>secret scratch</think>The answer is 5.", 1),
        make(tok, "g", "I guess 4", 0),
    ]
    ctx = build(rollouts, tok, "sdpo", sibling_choice="first", exclude_self=False)
    text = decode(tok, ctx.teacher_prompt_ids[1])
    assert "The answer is 5." in text and "secret scratch" not in text and "<think>" not in text
    kept = build(rollouts, tok, "sdpo", sibling_choice="first", exclude_self=False, remove_thinking=False)
    assert "<think>secret scratch</think>" in decode(tok, kept.teacher_prompt_ids[1])
    # the response ids scored by the teacher are never altered
    assert ctx.teacher_input_ids[0][-len(rollouts[0].response_ids):] == rollouts[0].response_ids


# -- SC-GRPO ---------------------------------------------------------------------------------------------
def test_sc_grpo_routes_masks_and_solve_none(tok):
    rollouts = (
        group(tok, "w", [1, 0, 1, 0])  # n_c = 2 < G: weighted
        + group(tok, "one", [0, 1, 0, 0])  # n_c = 1: plain
        + group(tok, "all", [1, 1, 1, 1])  # n_c = G: plain
        + group(tok, "none", [0, 0, 0, 0])  # n_c = 0: solve-none
    )
    ctx = build(rollouts, tok, "sc_grpo", seed=3)
    assert ctx.route.tolist() == [ROUTE_WEIGHTED] * 4 + [ROUTE_PLAIN] * 8 + [ROUTE_SOLVE_NONE] * 4
    assert ctx.num_correct.tolist() == [2] * 4 + [1] * 4 + [4] * 4 + [0] * 4
    assert ctx.reference[:12].sum() == 0 and ctx.reference[12:].sum() == 1
    ref = 12 + int(ctx.reference[12:].nonzero())
    # weighted: correct rollouts get the OTHER correct one; incorrect ones one of the two
    assert ctx.sibling_index[0] == 2 and ctx.sibling_index[2] == 0
    assert ctx.sibling_index[1] in (0, 2) and ctx.sibling_index[3] in (0, 2)
    assert ctx.source[:4] == ["solution"] * 4
    assert ctx.mask[4:12].sum() == 0 and ctx.source[4:12] == [None] * 8
    for row in range(12, 16):
        if row == ref:
            assert ctx.mask[row] == 0 and ctx.source[row] is None and ctx.sibling_index[row] == -1
        else:
            assert ctx.mask[row] == 1 and ctx.source[row] == "reference" and ctx.sibling_index[row] == ref
            assert rollouts[ref].response_text in decode(tok, ctx.teacher_prompt_ids[row])
    text = decode(tok, ctx.teacher_prompt_ids[1])
    assert text.startswith("<|im_start|>system\nA reference solution")
    assert text.endswith(f"<|im_start|>user\n{QUESTION}<|im_end|>\n" + HEADER)  # student prompt unchanged


def test_sc_grpo_given_references_and_solve_none_guide(tok):
    rollouts = group(tok, "none", [0, 0, 0]) + group(tok, "w", [1, 1, 0])
    templates = TemplateConfig(sc_grpo_solve_none_guide="An earlier attempt (not verified):\n{reference}")
    gen = torch.Generator().manual_seed(0)
    ctx = build_teacher_contexts(
        rollouts, tok, "sc_grpo", TeacherConfig(), templates, generator=gen,
        references=torch.tensor([False, True, False, False, False, False]),
    )
    assert ctx.mask.tolist() == [1, 0, 1, 1, 1, 1] and ctx.sibling_index[:3] == [1, -1, 1]
    assert "An earlier attempt (not verified):\n" + rollouts[1].response_text in decode(tok, ctx.teacher_prompt_ids[0])
    assert "A reference solution" in decode(tok, ctx.teacher_prompt_ids[3])
    for bad in ([False] * 6, [True, True, False, False, False, False], [False, True, False, True, False, False]):
        with pytest.raises(ValueError, match="references"):
            build_teacher_contexts(rollouts, tok, "sc_grpo", TeacherConfig(), references=torch.tensor(bad))
    with pytest.raises(ValueError, match="references has 2 entries"):
        build_teacher_contexts(rollouts, tok, "sc_grpo", TeacherConfig(), references=torch.tensor([True, False]))


def test_sc_grpo_keeps_student_system_prompt(tok):
    rollouts = group(tok, "w", [1, 1, 0], system="You are a careful solver.")
    ctx = build(rollouts, tok, "sc_grpo")
    text = decode(tok, ctx.teacher_prompt_ids[0])
    assert text.startswith("<|im_start|>system\nYou are a careful solver.\n\nA reference solution")
    assert text.count("<|im_start|>system") == 1
    templated = build(group(tok, "w", [1, 1, 0]), tok, "sc_grpo", templates={"sc_grpo_default_system": "BASE"})
    assert decode(tok, templated.teacher_prompt_ids[0]).startswith("<|im_start|>system\nBASE\n\nA reference")


def test_sc_grpo_never_self_over_many_seeds_and_uniform(tok):
    # interleaved groups (uids need not be contiguous)
    a, b = group(tok, "a", [1, 1, 1, 0, 0]), group(tok, "b", [0, 1, 1, 0, 0])
    rollouts = [r for pair in zip(a, b) for r in pair]
    rows_a, rows_b = list(range(0, 10, 2)), list(range(1, 10, 2))
    seen = {row: set() for row in range(10)}
    for seed in range(60):
        ctx = build(rollouts, tok, "sc_grpo", seed=seed)
        assert ctx.mask.tolist() == [1.0] * 10
        for row, sibling in enumerate(ctx.sibling_index):
            same = rows_a if row in rows_a else rows_b
            assert sibling != row and sibling in same and bool(ctx.verified[sibling])
            assert rollouts[row].response_text not in decode(tok, ctx.teacher_prompt_ids[row])
            seen[row].add(sibling)
    assert seen[0] == {2, 4} and seen[6] == {0, 2, 4} and seen[3] == {5} and seen[1] == {3, 5}


def test_seeded_draws_reproducible_and_seed_dependent(tok):
    rollouts = [r for uid in range(6) for r in group(tok, f"g{uid}", [1, 1, 1, 0, 0, 0])]
    rollouts += group(tok, "none", [0] * 6)
    first, again = build(rollouts, tok, "sc_grpo", seed=11), build(rollouts, tok, "sc_grpo", seed=11)
    assert first.sibling_index == again.sibling_index and first.teacher_input_ids == again.teacher_input_ids
    assert torch.equal(first.reference, again.reference)
    others = [build(rollouts, tok, "sc_grpo", seed=s) for s in (12, 13, 14)]
    assert any(o.sibling_index != first.sibling_index for o in others)
    refs = {int(build(rollouts, tok, "sc_grpo", seed=s).reference.nonzero()) for s in range(12)}
    assert len(refs) > 1


def test_sc_grpo_requires_exclude_self(tok):
    with pytest.raises(ValueError, match="exclude_self"):
        build(group(tok, "g", [1, 1, 0]), tok, "sc_grpo", exclude_self=False)


# -- SDPG ------------------------------------------------------------------------------------------------
def test_sdpg_privileged_context(tok):
    rollouts = [
        make(tok, "g", "it is 5", 1, privileged="5"),
        make(tok, "g", "it is 4", 0, privileged=None),
        make(tok, "h", "x", 0, privileged="  "),
        make(tok, "h", "y", 0, privileged="Add 2 and 3 to get 5."),
    ]
    ctx = build(rollouts, tok, "sdpg", use_privileged_context=True)
    assert ctx.mask.tolist() == [1, 0, 0, 1] and ctx.source == ["privileged", None, None, "privileged"]
    assert ctx.sibling_index == [-1] * 4
    text = decode(tok, ctx.teacher_prompt_ids[3])
    assert f"<|im_start|>user\n{QUESTION}\n\nHint" in text and "Add 2 and 3 to get 5." in text
    assert build(rollouts, tok, "sdpg").mask.sum() == 0  # use_privileged_context off


# -- length budget ---------------------------------------------------------------------------------------
LONG = " ".join(f"step {i}: add the numbers carefully." for i in range(60))


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
    floor = len(chat_template_ids(tok, hint_as_marker))  # the shortest possible SDPG prompt here
    ctx = build(rollouts, tok, "sdpg", use_privileged_context=True, max_reprompt_len=floor + 20)
    assert ctx.mask.tolist() == [1] and ctx.shortened == [True] and len(ctx.teacher_prompt_ids[0]) <= floor + 20
    assert "Hint (the reference answer to this question):\nstep 0" in decode(tok, ctx.teacher_prompt_ids[0])
    ctx = build(rollouts, tok, "sdpg", use_privileged_context=True, max_reprompt_len=floor)
    assert ctx.mask.tolist() == [1] and ctx.teacher_prompt_ids[0] == chat_template_ids(tok, hint_as_marker)
    ctx = build(rollouts, tok, "sdpg", use_privileged_context=True, max_reprompt_len=floor - 1)
    assert ctx.mask.tolist() == [0] and ctx.too_long == [True]


# -- metrics ---------------------------------------------------------------------------------------------
def test_metrics_hand_computed(tok):
    rollouts = (
        [make(tok, "a", "the answer is 5", 1), make(tok, "a", "4", 0, feedback="wrong")]  # a: teacher for row 1
        + [make(tok, "b", "6", 0, feedback="off by one"), make(tok, "b", "7", 0)]  # b: feedback for row 2 only
        + [make(tok, "c", LONG, 1), make(tok, "c", LONG, 1)]  # c: both teach each other, shortened
    )
    short = len(build(rollouts, tok, "sdpo", sibling_choice="first", use_feedback=True).teacher_prompt_ids[4]) - 50
    ctx = build(rollouts, tok, "sdpo", sibling_choice="first", use_feedback=True, max_reprompt_len=short)
    assert ctx.mask.tolist() == [0, 1, 1, 0, 1, 1]
    assert ctx.source == [None, "solution", "feedback", None, "solution", "solution"]
    assert ctx.shortened == [False, False, False, False, True, True]
    lengths = [len(ids) for ids in ctx.teacher_prompt_ids if ids is not None]
    assert ctx.metrics() == {
        "self_teacher/frac_groups_with_success": pytest.approx(2 / 3),
        "self_teacher/frac_rollouts_with_teacher": pytest.approx(4 / 6),
        "self_teacher/frac_feedback_used": pytest.approx(1 / 6),
        "self_teacher/frac_contexts_shortened": pytest.approx(2 / 6),
        "self_teacher/num_too_long": 0.0,
        "self_teacher/mean_teacher_prompt_len": pytest.approx(sum(lengths) / 4),
    }


# -- validation ------------------------------------------------------------------------------------------
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


def test_bad_inputs(tok):
    rollouts = group(tok, "g", [1, 0])
    with pytest.raises(ValueError, match="unknown self-teacher method 'grpo'"):
        build(rollouts, tok, "grpo")
    with pytest.raises(ValueError, match="empty batch"):
        build([], tok, "sdpo")
    with pytest.raises(ValueError, match="routes has 3 entries for 2 rollouts"):
        build_teacher_contexts(rollouts, tok, "sc_grpo", TeacherConfig(), routes=torch.zeros(3))
    with pytest.raises(ValueError, match="SC-GRPO inputs"):
        build_teacher_contexts(rollouts, tok, "sdpo", TeacherConfig(), routes=torch.zeros(2))
    with pytest.raises(ValueError, match="must be a Rollout"):
        build_teacher_contexts([{"uid": 1}], tok, "sdpo", TeacherConfig())
    with pytest.raises(ValueError, match="teacher_config is required"):
        build_teacher_contexts(rollouts, tok, "sdpo", None)
    with pytest.raises(ValueError, match="empty response"):
        Rollout(uid=0, prompt=[{"role": "user", "content": "q"}], response_ids=[], response_text="", score=0)
    with pytest.raises(ValueError, match="'role' and 'content'"):
        Rollout(uid=0, prompt=[{"content": "q"}], response_ids=[1], response_text="a", score=0)
    no_user = Rollout(uid=0, prompt=[{"role": "system", "content": "s"}], response_ids=[1], response_text="a", score=1)
    with pytest.raises(ValueError, match="no user message"):
        build([no_user, no_user], tok, "sdpo", exclude_self=False)
