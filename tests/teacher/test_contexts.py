"""build_teacher_contexts (scgrpo_verl.teacher.contexts / rollouts) with a real local fast tokenizer + ChatML: the
teacher input layout, metrics, input validation and the canonical draw order."""

import pytest
import torch
from conftest import HEADER, LONG, QUESTION, build_contexts as build, decode, group, make
from splice_reference import varied_batch
from tokenizer_utils import build_byte_level_tokenizer

from scgrpo_verl.settings import TeacherConfig

from scgrpo_verl.methods import get_method
from scgrpo_verl.teacher import Rollout, build_teacher_contexts, chat_prompt_ids, strip_thinking


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
    assert decode(tok, chat_prompt_ids(tok, messages)) == rendered


@pytest.mark.parametrize("method", ["sc_grpo", "sdpo", "sdpg"])
def test_teacher_input_is_prompt_plus_identical_response_ids(tok, method):
    rollouts = group(tok, "a", [1, 1, 0, 0], privileged="5") + group(tok, "b", [1, 1, 1, 0], privileged="7")
    ctx = build(rollouts, tok, method, use_privileged_context=True)
    assert ctx.mask.tolist() == [1.0] * 8
    for r, prompt, full, msgs in zip(rollouts, ctx.teacher_prompt_ids, ctx.teacher_input_ids, ctx.teacher_messages):
        assert full == prompt + r.response_ids
        assert prompt == chat_prompt_ids(tok, msgs)
        assert decode(tok, prompt).endswith(HEADER)
        assert QUESTION in decode(tok, prompt)


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


def test_bad_inputs(tok):
    rollouts = group(tok, "g", [1, 0])
    with pytest.raises(ValueError, match="'grpo' is not a self-teacher method"):
        build(rollouts, tok, "grpo")
    with pytest.raises(ValueError, match="must be a registered self-teacher method"):
        build_teacher_contexts(rollouts, tok, "sdpo", TeacherConfig())
    with pytest.raises(ValueError, match="empty batch"):
        build([], tok, "sdpo")
    with pytest.raises(ValueError, match="routes has 3 entries for 2 rollouts"):
        build_teacher_contexts(rollouts, tok, get_method("sc_grpo"), TeacherConfig(), routes=torch.zeros(3))
    with pytest.raises(ValueError, match="SC-GRPO inputs"):
        build_teacher_contexts(rollouts, tok, get_method("sdpo"), TeacherConfig(), routes=torch.zeros(2))
    with pytest.raises(ValueError, match="must be a Rollout"):
        build_teacher_contexts([{"uid": 1}], tok, get_method("sdpo"), TeacherConfig())
    with pytest.raises(ValueError, match="settings must be a scgrpo_verl.settings.SelfTeacherConfig or TeacherConfig"):
        build_teacher_contexts(rollouts, tok, get_method("sdpo"), None)
    with pytest.raises(ValueError, match="empty response"):
        Rollout(uid=0, prompt=[{"role": "user", "content": "q"}], response_ids=[], response_text="", score=0)
    with pytest.raises(ValueError, match="'role' and 'content'"):
        Rollout(uid=0, prompt=[{"content": "q"}], response_ids=[1], response_text="a", score=0)
    no_user = Rollout(uid=0, prompt=[{"role": "system", "content": "s"}], response_ids=[1], response_text="a", score=1)
    with pytest.raises(ValueError, match="no user message"):
        build([no_user, no_user], tok, "sdpo", exclude_self=False)


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
        ctx = build_teacher_contexts(batch, tok, get_method(method), config, generator=torch.Generator().manual_seed(seed))
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
        build_teacher_contexts([a, b], tok, get_method("sdpo"), TeacherConfig())
    b.index = 0
    with pytest.raises(ValueError, match="duplicate rollout indices"):
        build_teacher_contexts([a, b], tok, get_method("sdpo"), TeacherConfig())
    with pytest.raises(ValueError, match="response_text must be a string or None"):
        Rollout(uid="g", prompt=[{"role": "user", "content": "q"}], response_ids=[1], response_text=3, score=1)


def test_teacher_prompt_uses_the_students_chat_template_kwargs(tmp_path):
    """verl renders the student's prompt with data.apply_chat_template_kwargs (e.g. Qwen3's enable_thinking=False
    adds an empty think block); the teacher prompt must be rendered with the same arguments."""
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
    contexts = build_teacher_contexts(rollouts, tokenizer, get_method("sc_grpo"), TeacherConfig(), chat_template_kwargs=off)
    teacher_prompt = tokenizer.decode(contexts.teacher_input_ids[0][: -len(ids)])
    assert teacher_prompt.endswith("<|assistant|><think>\n\n</think>\n\n")
    assert tokenizer.decode(chat_prompt_ids(tokenizer, prompt, off)).endswith("<think>\n\n</think>\n\n")
    plain = build_teacher_contexts(rollouts, tokenizer, get_method("sc_grpo"), TeacherConfig())
    assert tokenizer.decode(plain.teacher_input_ids[0][: -len(ids)]).endswith("<|assistant|>")


def test_rollout_response_ids_from_tensors_and_arrays():
    import numpy as np

    prompt = [{"role": "user", "content": "q"}]
    for ids in (torch.tensor([3, 4, 5]), np.array([3, 4, 5]), (3, 4, 5), [3, 4, 5]):
        assert Rollout(uid=0, prompt=prompt, response_ids=ids, response_text=None, score=1).response_ids == [3, 4, 5]
    for bad in (torch.tensor([1.5, 2.0]), np.array([1.5]), ["a", "b"]):
        with pytest.raises(ValueError, match="response_ids must be integers"):
            Rollout(uid=0, prompt=prompt, response_ids=bad, response_text=None, score=1)
