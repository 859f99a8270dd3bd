"""Teacher contexts (scgrpo_verl.teacher.context / templates) with a real local fast tokenizer + ChatML."""

import pytest
import torch
from tokenizer_utils import build_byte_level_tokenizer

from scgrpo_verl.algos.sc_grpo import ROUTE_PLAIN, ROUTE_SOLVE_NONE, ROUTE_WEIGHTED
from scgrpo_verl.settings import TeacherConfig
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


# -- the fast builder against the landed algorithm (commit 7087683) ----------------------------------------
from scgrpo_verl.teacher.context import fit_teacher_prompt  # noqa: E402
from scgrpo_verl.teacher.templates import sc_grpo_teacher_messages, sdpo_teacher_messages  # noqa: E402


def reference_contexts(rollouts, tok, method, config, templates=None, seed=0):
    """The landed builder's algorithm, naively: draws in batch order, every prompt rendered and tokenised
    whole by the chat template from the decoded demonstration text (per rollout, no caching)."""
    templates = TemplateConfig.from_mapping(templates)
    gen = torch.Generator().manual_seed(seed)
    n = len(rollouts)
    texts = [r.response_text if r.response_text is not None else tok.decode(r.response_ids, skip_special_tokens=True)
             for r in rollouts]
    verified = [r.score >= config.success_threshold for r in rollouts]
    groups = {}
    for row, r in enumerate(rollouts):
        groups.setdefault(r.uid, []).append(row)

    def demo(row):
        return strip_thinking(texts[row]) if config.remove_thinking else texts[row]

    def pick(cands):
        if not cands:
            return -1
        if config.sibling_choice == "first":
            return cands[0]
        return cands[int(torch.randint(len(cands), (1,), generator=gen))]

    def sibs(row):
        return [j for j in groups[rollouts[row].uid] if verified[j] and not (config.exclude_self and j == row)]

    plans = [None] * n
    if method == "sc_grpo":
        refs = {}
        for uid, rows in groups.items():
            n_c = sum(verified[r] for r in rows)
            if n_c == 0 and len(rows) > 1:
                refs[uid] = rows[int(torch.randint(len(rows), (1,), generator=gen))]
        for row, r in enumerate(rollouts):
            rows = groups[r.uid]
            n_c = sum(verified[j] for j in rows)
            if 2 <= n_c < len(rows):
                s = pick(sibs(row))
                if s >= 0:
                    plans[row] = ("solution", s, lambda p, r=r: sc_grpo_teacher_messages(r.prompt, p[0], templates), [demo(s)])
            elif r.uid in refs and refs[r.uid] != row:
                s = refs[r.uid]
                plans[row] = ("reference", s, lambda p, r=r: sc_grpo_teacher_messages(r.prompt, p[0], templates, True),
                              [demo(s)])
    elif method == "sdpo":
        for row, r in enumerate(rollouts):
            s = pick(sibs(row))
            fb = config.use_feedback and r.feedback.strip() != "" and (s < 0 or not config.feedback_only_without_solution)
            if s >= 0 and fb:
                plans[row] = ("solution+feedback", s, lambda p, r=r: sdpo_teacher_messages(r.prompt, p[0], p[1], templates),
                              [demo(s), r.feedback])
            elif s >= 0:
                plans[row] = ("solution", s, lambda p, r=r: sdpo_teacher_messages(r.prompt, p[0], None, templates), [demo(s)])
            elif fb:
                plans[row] = ("feedback", -1, lambda p, r=r: sdpo_teacher_messages(r.prompt, None, p[0], templates),
                              [r.feedback])
    else:
        for row, r in enumerate(rollouts):
            if config.use_privileged_context and r.privileged is not None and r.privileged.strip():
                plans[row] = ("privileged", -1, lambda p, r=r: sdpg_teacher_messages(r.prompt, p[0], templates),
                              [r.privileged])
    out = {"input_ids": [None] * n, "messages": [None] * n, "source": [None] * n, "sibling": [-1] * n,
           "shortened": [False] * n, "too_long": [False] * n}
    for row, plan in enumerate(plans):
        if plan is None:
            continue
        kind, s, build_fn, pieces = plan
        fitted = fit_teacher_prompt(build_fn, pieces, tok, config.max_reprompt_len, templates.truncation_marker)
        if fitted.too_long:
            out["too_long"][row] = True
            continue
        out["input_ids"][row] = fitted.prompt_ids + rollouts[row].response_ids
        out["messages"][row] = fitted.messages
        out["source"][row], out["sibling"][row], out["shortened"][row] = kind, s, fitted.shortened
    return out


MULTI_LINE = "First, add the numbers: 2 + 3 = 5.\nThen check it twice.\nSo the answer is 5."
RESPONSES = (
    MULTI_LINE,
    "single line, no newline at all: 5",
    "  leading spaces\nthen text.\nend",
    "trailing newlines.\nAnswer: 5.\n\n",
    "<think>private scratch\nwork</think>\n\nThe answer is 5.\nDone.",
    "unopened thinking\nstill thinking</think>The answer:\n5 is it.",
    "Answer first.\nMore text.<think>never closed\nblock",
    "A<think>x</think>B\nC<think>y</think>D\nE",
    "x > 3 and y -> z\nso 5 >= 4.\nfinal: 5",
    "Ünïcödé ✓ résumé\nnaïve café.\nπ ≈ 3.14\n答案是五。",
    "code:\n    def f(a):\n        return a + 1\n\nprint(f(4))\n",
    "ends with punctuation!\nreally?!",
    "tabs\tand  double  spaces \nnext line  \n\tindented\nlast",
    " ".join(f"step {i}: add the numbers carefully." + ("\n" if i % 5 == 4 else "") for i in range(40)),
)


def varied_batch(tok, with_text):
    """Groups of 4 with different prompts (system / multi-turn / none), responses from RESPONSES, some ending in
    the eos token, one with an eos in the middle; feedback and hints on some."""
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    patterns = ([1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0], [0, 1, 0, 1], [0, 0, 0, 0])
    prompts = (
        [{"role": "user", "content": QUESTION}],
        [{"role": "system", "content": "You are careful."}, {"role": "user", "content": "Add 2 and 3.\n"}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Sum?"}],
        [{"role": "user", "content": "  Spaces around  "}],
    )
    rollouts, k = [], 0
    for g, pattern in enumerate(patterns):
        for i, score in enumerate(pattern):
            text = RESPONSES[k % len(RESPONSES)]
            ids = tok.encode(text, add_special_tokens=False)
            if k % 3 == 0:
                ids = ids + [eos]
            if k == 9:
                ids = ids[:3] + [eos] + ids[3:]  # a special token inside: dropped by decode
            k += 1
            rollouts.append(Rollout(
                uid=f"g{g}", prompt=prompts[g % len(prompts)], response_ids=ids,
                response_text=tok.decode(ids, skip_special_tokens=True) if with_text else None, score=score,
                feedback=("Wrong answer.\nExpected 5." if i % 2 else "") if score < 1 else "passed",
                privileged=None if g == 3 else (LONG if g == 5 else f"The answer is {g}.\n"), index=i,
            ))
    return rollouts


CONFIGS = [
    ("sc_grpo", {}),
    ("sc_grpo", {"remove_thinking": False}),
    ("sdpo", {}),
    ("sdpo", {"sibling_choice": "first", "use_feedback": True, "feedback_only_without_solution": False}),
    ("sdpo", {"use_feedback": True, "exclude_self": False}),
    ("sdpo", {"max_reprompt_len": 150, "use_feedback": True}),
    ("sc_grpo", {"max_reprompt_len": 150}),
    ("sdpg", {"use_privileged_context": True}),
    ("sdpg", {"use_privileged_context": True, "max_reprompt_len": 120}),  # the long hint's prompt: too long
    ("sdpg", {"use_privileged_context": True, "max_reprompt_len": 140}),  # the long hint shortened
]


@pytest.mark.parametrize("method, teacher", CONFIGS)
@pytest.mark.parametrize("with_text", [False, True])
def test_fast_builder_matches_landed_algorithm(tok, method, teacher, with_text):
    config = TeacherConfig(**teacher)
    templates = {"sc_grpo_default_system": "Be brief."} if teacher.get("remove_thinking") is False else None
    old = reference_contexts(varied_batch(tok, True), tok, method, config, templates, seed=5)
    for exact in (False, True):
        rollouts = varied_batch(tok, with_text)
        ctx = build_teacher_contexts(rollouts, tok, method, config, templates,
                                     generator=torch.Generator().manual_seed(5), exact=exact)
        assert ctx.teacher_input_ids == old["input_ids"]
        assert ctx.sibling_index == old["sibling"] and ctx.source == old["source"]
        assert ctx.shortened == old["shortened"] and ctx.too_long == old["too_long"]
        assert list(ctx.teacher_messages) == old["messages"]
        assert ctx.mask.tolist() == [float(ids is not None) for ids in old["input_ids"]]
        if not exact and method != "sdpg":  # most demonstrations reuse their ids
            assert ctx.extra["fast_demonstrations"] > 0
    if method != "sdpg":
        assert any(s >= 0 for s in old["sibling"])
    if "max_reprompt_len" in teacher:  # the length handling is exercised
        assert any(old["shortened"]) or any(old["too_long"])


def test_fast_path_is_taken_and_reuses_response_ids(tok):
    text = "\n".join(f"Line {i}: we add {i} and {i + 1} to get {2 * i + 1}." for i in range(30))
    ids = tok.encode(text, add_special_tokens=False)
    rollouts = [Rollout(uid="g", prompt=[{"role": "user", "content": QUESTION}], response_ids=ids, response_text=None,
                        score=s, index=i) for i, s in enumerate([1, 0, 0])]
    ctx = build_teacher_contexts(rollouts, tok, "sdpo", TeacherConfig(sibling_choice="first"))
    assert ctx.extra == {"fast_demonstrations": 1, "retokenized_demonstrations": 0}
    prompt = ctx.teacher_prompt_ids[1]
    inner = ids[len(tok.encode(text.split("\n")[0] + "\n", add_special_tokens=False)):]
    assert any(prompt[k:k + len(inner) - 20] == inner[:-20] for k in range(len(prompt)))  # the middle reused as is
    slow = build_teacher_contexts(rollouts, tok, "sdpo", TeacherConfig(sibling_choice="first"), exact=True)
    assert slow.extra == {"fast_demonstrations": 0, "retokenized_demonstrations": 1}
    assert slow.teacher_input_ids == ctx.teacher_input_ids


def test_non_canonical_response_ids_kept_in_fast_path_retokenised_when_exact(tok):
    """The one documented difference: a response whose ids are not the tokenizer's own encoding of its text."""
    lines = ["The answer is 5.", "What is 2 + 3? The answer is 5.", "done."]
    canonical = tok.encode("\n".join(lines), add_special_tokens=False)
    middle = tok.encode(lines[1], add_special_tokens=False)
    spelled = [tok.convert_tokens_to_ids(c if c != " " else "Ġ") for c in lines[1]]  # one token per character
    assert len(spelled) > len(middle)
    newline = tok.encode("\n", add_special_tokens=False)
    odd = tok.encode(lines[0], add_special_tokens=False) + newline + spelled + newline + tok.encode(lines[2], add_special_tokens=False)
    assert tok.decode(odd) == tok.decode(canonical)
    rollouts = [
        Rollout(uid="g", prompt=[{"role": "user", "content": QUESTION}], response_ids=odd, response_text=None, score=1),
        Rollout(uid="g", prompt=[{"role": "user", "content": QUESTION}], response_ids=[5], response_text=None, score=0),
    ]
    config = TeacherConfig(sibling_choice="first")
    fast = build_teacher_contexts(rollouts, tok, "sdpo", config)
    exact = build_teacher_contexts(rollouts, tok, "sdpo", config, exact=True)
    old = reference_contexts(rollouts, tok, "sdpo", config)
    assert exact.teacher_input_ids == old["input_ids"]
    assert decode(tok, fast.teacher_prompt_ids[1]) == decode(tok, exact.teacher_prompt_ids[1])  # same text
    prompt = fast.teacher_prompt_ids[1]
    assert any(prompt[k:k + len(spelled)] == spelled for k in range(len(prompt)))  # the student's own ids
    assert len(fast.teacher_prompt_ids[1]) == len(exact.teacher_prompt_ids[1]) + len(spelled) - len(middle)


def test_unsupported_tokenizer_takes_exact_path(tok, tmp_path):
    from scgrpo_verl.teacher.context import _byte_level_tables

    class Slow:  # not a fast tokenizer: the tables are refused, the builder re-tokenises every prompt
        is_fast = False

    assert _byte_level_tables(Slow()) is None
    assert _byte_level_tables(tok) is not None


# -- canonical order: the same draws whatever the batch order -------------------------------------------
@pytest.mark.parametrize("method", ["sc_grpo", "sdpo"])
def test_shuffled_batch_gives_same_contexts_per_uid_and_index(tok, method):
    import random

    rollouts = varied_batch(tok, False) + [
        Rollout(uid=f"x{g}", prompt=[{"role": "user", "content": QUESTION}], response_ids=tok.encode(f"r{g}{i}\nok"),
                response_text=None, score=s, index=i)
        for g, pattern in enumerate([[1, 1, 0, 0, 0, 1], [0] * 6, [1, 0, 1, 1, 0, 0]]) for i, s in enumerate(pattern)
    ]
    config = TeacherConfig()

    def by_key(batch, seed):
        ctx = build_teacher_contexts(batch, tok, method, config, generator=torch.Generator().manual_seed(seed))
        key = [(r.uid, r.index) for r in batch]
        out = {}
        for row, k in enumerate(key):
            out[k] = (
                ctx.teacher_input_ids[row],
                key[ctx.sibling_index[row]] if ctx.sibling_index[row] >= 0 else None,
                ctx.source[row],
                None if ctx.route is None else int(ctx.route[row]),
                None if ctx.reference is None else bool(ctx.reference[row]),
            )
        return out

    base = by_key(rollouts, 3)
    assert any(v[1] is not None for v in base.values())
    rng = random.Random(0)
    for _ in range(4):
        shuffled = list(rollouts)
        rng.shuffle(shuffled)
        assert by_key(shuffled, 3) == base
    assert any(by_key(rollouts, seed) != base for seed in (4, 5, 6))  # the draws do depend on the seed


def test_rollout_index_rules(tok):
    a = Rollout(uid="g", prompt=[{"role": "user", "content": "q"}], response_ids=[1], response_text=None, score=1, index=0)
    b = Rollout(uid="g", prompt=[{"role": "user", "content": "q"}], response_ids=[2], response_text=None, score=1)
    with pytest.raises(ValueError, match="has no index while others have one"):
        build_teacher_contexts([a, b], tok, "sdpo", TeacherConfig())
    b.index = 0
    with pytest.raises(ValueError, match="duplicate rollout indices"):
        build_teacher_contexts([a, b], tok, "sdpo", TeacherConfig())
    with pytest.raises(ValueError, match="response_text must be a string or None"):
        Rollout(uid="g", prompt=[{"role": "user", "content": "q"}], response_ids=[1], response_text=3, score=1)


def _fuzz_text(rng):
    atoms = ["The", " answer", " is", " 5", ".", ",", "!", "?", ":", "\n", "\n\n", "  ", "\t", " ", "x", "=", "+",
             "->", ">", "<", "'s", "é", "答", "✓", "42", "(a)", "}", "{", "#", "--", "\r\n", "<think>", "</think>"]
    weights = [6, 6, 6, 4, 5, 3, 1, 1, 2, 6, 3, 2, 1, 4, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 0.3, 0.6]
    return "".join(rng.choices(atoms, weights, k=rng.randint(1, 80)))


@pytest.mark.parametrize("method, teacher", [
    ("sc_grpo", {}),
    ("sdpo", {"sibling_choice": "first", "use_feedback": True, "feedback_only_without_solution": False}),
    ("sdpo", {"remove_thinking": False, "exclude_self": False}),
])
def test_fast_builder_matches_landed_algorithm_on_random_text(tok, method, teacher):
    """An opponent's batch: random mixes of spaces, newlines, punctuation, unicode and think tags."""
    import random

    rng = random.Random(1234)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    prompts = ([{"role": "user", "content": "Q:\n"}], [{"role": "system", "content": " s "}, {"role": "user", "content": "Q."}])
    rollouts = []
    for g in range(24):
        for i in range(4):
            ids = tok.encode(_fuzz_text(rng), add_special_tokens=False) or [5]
            if rng.random() < 0.3:
                ids = ids + [eos]
            rollouts.append(Rollout(uid=g, prompt=prompts[g % 2], response_ids=ids, response_text=None,
                                    score=float(rng.random() < 0.5), feedback=_fuzz_text(rng), index=i))
    config = TeacherConfig(**teacher)
    old = reference_contexts(rollouts, tok, method, config, seed=9)
    ctx = build_teacher_contexts(rollouts, tok, method, config, generator=torch.Generator().manual_seed(9))
    assert ctx.teacher_input_ids == old["input_ids"]
    assert ctx.extra["fast_demonstrations"] > 10


def test_think_block_demonstrations_reuse_ids(tok):
    body = "\n".join(f"Step {k}: add {k} and {k}." for k in range(8))
    texts = [f"<think>\nhmm {i}\nlet me see\n</think>\n\n{body}\nThe answer is {i}." for i in range(3)]
    texts.append(f"still thinking {3}\nok</think>{body}\nThe answer is 3.")  # the template opened the block
    rollouts = [Rollout(uid="g", prompt=[{"role": "user", "content": QUESTION}], response_ids=tok.encode(t),
                        response_text=None, score=s, index=i) for i, (t, s) in enumerate(zip(texts, [1, 1, 0, 1]))]
    config = TeacherConfig()
    ctx = build_teacher_contexts(rollouts, tok, "sdpo", config, generator=torch.Generator().manual_seed(0))
    old = reference_contexts(rollouts, tok, "sdpo", config, seed=0)
    assert ctx.teacher_input_ids == old["input_ids"]
    assert ctx.extra["retokenized_demonstrations"] == 0 and ctx.extra["fast_demonstrations"] >= 2
    assert all("hmm" not in decode(tok, ids) and "think>" not in decode(tok, ids) for ids in ctx.teacher_prompt_ids)


def test_teacher_prompt_uses_the_students_chat_template_kwargs(tmp_path):
    """verl renders the student's prompt with data.apply_chat_template_kwargs (e.g. Qwen3's enable_thinking=False
    adds an empty think block); the teacher prompt must be rendered with the same arguments."""
    from scgrpo_verl.settings import TeacherConfig
    from scgrpo_verl.teacher.context import Rollout, build_teacher_contexts, chat_template_ids
    from tokenizer_utils import build_byte_level_tokenizer

    tokenizer = build_byte_level_tokenizer(tmp_path)
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% if enable_thinking is defined and not enable_thinking %}"
        "<think>\n\n</think>\n\n{% endif %}{% endif %}"
    )
    prompt = [{"role": "user", "content": "What is 2 + 3?"}]
    ids = tokenizer.encode("5", add_special_tokens=False)
    rollouts = [Rollout(uid="a", prompt=prompt, response_ids=ids, response_text=None, score=s, index=i)
                for i, s in enumerate((1.0, 1.0, 0.0))]
    off = {"enable_thinking": False}
    contexts = build_teacher_contexts(rollouts, tokenizer, "sc_grpo", TeacherConfig(), chat_template_kwargs=off)
    teacher_prompt = tokenizer.decode(contexts.teacher_input_ids[0][: -len(ids)])
    assert teacher_prompt.endswith("<|assistant|><think>\n\n</think>\n\n")
    assert tokenizer.decode(chat_template_ids(tokenizer, prompt, off)).endswith("<think>\n\n</think>\n\n")
    plain = build_teacher_contexts(rollouts, tokenizer, "sc_grpo", TeacherConfig())
    assert tokenizer.decode(plain.teacher_input_ids[0][: -len(ids)]).endswith("<|assistant|>")


# -- realistic text: code, indented markdown, LaTeX, mixed-language; two pre-tokenisers ---------------------------
from scgrpo_verl.cpu_backend.realistic_text import KINDS, build_realistic_tokenizer, response_text  # noqa: E402


@pytest.fixture(scope="module", params=["qwen", "gpt2"])
def real_tok(request, tmp_path_factory):
    return build_realistic_tokenizer(tmp_path_factory.mktemp(f"real-{request.param}"), request.param, num_merges=3000)


def realistic_batch(tok, kind, seed=0, groups=6, n=4):
    """Groups of ``n`` responses of one kind (150-500 tokens), some with a think block, most ending in eos, some cut
    at a random token (possibly inside a multi-byte character)."""
    import random

    rng = random.Random(f"{kind}-{seed}")
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    rollouts = []
    for g in range(groups):
        question = response_text(rng, kind, 300 if g % 2 else 20).strip()  # long ones are tokenised in pieces
        prompt = [{"role": "user", "content": f"Q{g}: {question}"}]
        for i in range(n):
            ids = tok.encode(response_text(rng, kind, rng.randint(150, 500), think=rng.random() < 0.3),
                             add_special_tokens=False)
            ids = ids[: rng.randint(50, len(ids))] if rng.random() < 0.3 else ids + [eos]
            rollouts.append(Rollout(uid=g, prompt=prompt, response_ids=ids, response_text=None,
                                    score=float(rng.random() < 0.5), feedback=f"failed test {i}\n  got {g}",
                                    privileged=f"answer {g}", index=i))
    return rollouts


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method, teacher", [
    ("sc_grpo", {}),
    ("sdpo", {"use_feedback": True, "feedback_only_without_solution": False}),
    ("sdpo", {"remove_thinking": False, "use_feedback": True}),
    ("sdpg", {"use_privileged_context": True}),
])
def test_realistic_text_matches_full_retokenisation(real_tok, kind, method, teacher):
    """Every kind of text, both pre-tokenisers: the teacher inputs equal the naive build (every prompt rendered and
    tokenised whole), and nearly every demonstration reuses its ids."""
    rollouts = realistic_batch(real_tok, kind)
    config = TeacherConfig(**teacher)
    old = reference_contexts(rollouts, real_tok, method, config, seed=3)
    ctx = build_teacher_contexts(rollouts, real_tok, method, config, generator=torch.Generator().manual_seed(3))
    assert ctx.teacher_input_ids == old["input_ids"]
    assert ctx.sibling_index == old["sibling"]
    if method != "sdpg":
        assert ctx.extra["fast_demonstrations"] > 0
        assert ctx.extra["fast_demonstrations"] >= 3 * ctx.extra["retokenized_demonstrations"]


JUNCTIONS = (
    " leading space then text\nmore = 1",  # starts with a space
    "\nleading newline, then code:\n    x = 1\n",
    "\n\n  indented start\n  - item one\n  - item two",
    "\u0301 a combining accent first, then text é",  # a combining mark right after the template's text
    "é\u0301 ü and more words here",
    "<think>\nscratch work here\n</think>\n\nThe answer is $\\frac{1}{2}$ and more.",
    "plan first</think>  \n  The answer:\n    return x  # done",  # the template opened the block
    "<think>never closed, nothing else",
    "Answer first.<think>trailing unclosed block",
    "   </think>\tafter a spaced close tag, 答案是五。 done",
    "A<think>x</think>B then <think>y</think> C tail words",  # two blocks: not one slice, re-tokenised
    "𝔸𝔹ℂ rare characters 𝔻𝔼 split into byte tokens, then 🎉🎉 done 🎉",
    "答案是五。我们先计算左边，再比较右边的值。",  # no split candidate at all
    "x",
    "word " * 40 + "end",
)


@pytest.mark.parametrize("remove_thinking", [True, False])
def test_junction_edge_cases_match_full_retokenisation(real_tok, remove_thinking):
    """Responses starting with a space / newline / combining mark, think tags (split across tokens by the BPE),
    characters split across byte tokens, responses cut inside a character; a template gluing the demonstration to a
    letter (NFC composes across that junction under the Qwen normaliser)."""
    eos = real_tok.convert_tokens_to_ids("<|im_end|>")
    rollouts = []
    for k, text in enumerate(JUNCTIONS):
        ids = real_tok.encode(text, add_special_tokens=False)
        variants = (ids + [eos], ids[:-1] or ids, [eos] + ids, ids)  # eos end, cut before the end, special start
        for i, v in enumerate(variants):
            rollouts.append(Rollout(uid=k, prompt=[{"role": "user", "content": "Solve: e"}], response_ids=v,
                                    response_text=None, score=float(i < 3), index=i))
    ids = real_tok.encode("so x = 1 and then 𝔸𝔹 are the answer", add_special_tokens=False)
    inside = [ids[:k] for k in range(len(ids)) if real_tok.decode(ids[:k]).endswith("\ufffd")]
    assert inside  # a response cut inside a multi-byte character
    rollouts += [Rollout(uid="cut", prompt=[{"role": "user", "content": "Q"}], response_ids=v, response_text=None,
                         score=s, index=i) for i, (v, s) in enumerate(((inside[-1], 1.0), (inside[0], 1.0), ([5], 0.0)))]
    config = TeacherConfig(remove_thinking=remove_thinking, sibling_choice="first")
    for templates in (None, TemplateConfig(sc_grpo_guide="Reference: e{reference}e", sdpo_solution="e{solution}e")):
        for method in ("sc_grpo", "sdpo"):
            old = reference_contexts(rollouts, real_tok, method, config, templates)
            ctx = build_teacher_contexts(rollouts, real_tok, method, config, templates)
            assert ctx.teacher_input_ids == old["input_ids"], (method, templates)
            assert list(ctx.teacher_messages) == old["messages"]
            assert ctx.extra["fast_demonstrations"] > 0


def test_split_rules_follow_the_probes(tmp_path):
    """A byte-level BPE without a regex pre-tokeniser merges across spaces: no split rule holds, the fast path is
    refused, and the builder still gives the naive result."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from scgrpo_verl.cpu_backend.assets import CHATML_TEMPLATE
    from scgrpo_verl.teacher.context import _byte_level_tables

    raw = Tokenizer(models.BPE(fuse_unk=False))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(["the answer is x = 1\nthe answer is y\n"] * 50, trainers.BpeTrainer(
        vocab_size=len(alphabet) + 200, initial_alphabet=alphabet, show_progress=False))
    raw.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>")
    tok.chat_template = CHATML_TEMPLATE
    assert tok.encode(" answer is", add_special_tokens=False) != (
        tok.encode(" answer", add_special_tokens=False) + tok.encode(" is", add_special_tokens=False))
    assert _byte_level_tables(tok) is None
    rollouts = [Rollout(uid=0, prompt=[{"role": "user", "content": "Q"}], response_ids=tok.encode(t),
                        response_text=None, score=s, index=i)
                for i, (t, s) in enumerate((("the answer is x = 1\nthe answer is y", 1.0), ("no", 0.0)))]
    config = TeacherConfig(sibling_choice="first")
    assert build_teacher_contexts(rollouts, tok, "sdpo", config).teacher_input_ids == reference_contexts(
        rollouts, tok, "sdpo", config)["input_ids"]


def test_rollout_response_ids_from_tensors_and_arrays():
    import numpy as np

    prompt = [{"role": "user", "content": "q"}]
    for ids in (torch.tensor([3, 4, 5]), np.array([3, 4, 5]), (3, 4, 5), [3, 4, 5]):
        assert Rollout(uid=0, prompt=prompt, response_ids=ids, response_text=None, score=1).response_ids == [3, 4, 5]
    for bad in (torch.tensor([1.5, 2.0]), np.array([1.5]), ["a", "b"]):
        with pytest.raises(ValueError, match="response_ids must be integers"):
            Rollout(uid=0, prompt=prompt, response_ids=bad, response_text=None, score=1)
