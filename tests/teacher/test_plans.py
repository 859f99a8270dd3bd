"""Per-method teacher plans (scgrpo_verl.teacher.plans): which rollouts get a teacher, from which sibling / source,
with which template -- through build_teacher_contexts with a real local fast tokenizer + ChatML."""

import pytest
import torch
from conftest import HEADER, QUESTION, build_contexts as build, decode, group, make

from scgrpo_verl.algos.sc_grpo import ROUTE_PLAIN, ROUTE_SOLVE_NONE, ROUTE_WEIGHTED

from scgrpo_verl.methods import get_method
from scgrpo_verl.settings import TeacherConfig
from scgrpo_verl.teacher import build_teacher_contexts
from scgrpo_verl.settings import TemplateConfig


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
        rollouts, tok, get_method("sc_grpo"), TeacherConfig(), templates, generator=gen,
        references=torch.tensor([False, True, False, False, False, False]),
    )
    assert ctx.mask.tolist() == [1, 0, 1, 1, 1, 1] and ctx.sibling_index[:3] == [1, -1, 1]
    assert "An earlier attempt (not verified):\n" + rollouts[1].response_text in decode(tok, ctx.teacher_prompt_ids[0])
    assert "A reference solution" in decode(tok, ctx.teacher_prompt_ids[3])
    for bad in ([False] * 6, [True, True, False, False, False, False], [False, True, False, True, False, False]):
        with pytest.raises(ValueError, match="references"):
            build_teacher_contexts(rollouts, tok, get_method("sc_grpo"), TeacherConfig(), references=torch.tensor(bad))
    with pytest.raises(ValueError, match="references has 2 entries"):
        build_teacher_contexts(rollouts, tok, get_method("sc_grpo"), TeacherConfig(), references=torch.tensor([True, False]))


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
