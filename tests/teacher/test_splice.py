"""BPE splicing (scgrpo_verl.teacher.splice / prompt): the fast builder, which reuses a demonstration's response
ids and re-tokenises only its junctions, against the naive builder (every prompt rendered and tokenised whole)."""

import pytest
import torch
from conftest import QUESTION, decode
from splice_reference import reference_contexts, varied_batch

from scgrpo_verl.settings import TeacherConfig

from scgrpo_verl.methods import get_method
from scgrpo_verl.cpu_backend.realistic_text import KINDS, build_realistic_tokenizer, response_text
from scgrpo_verl.teacher import Rollout, build_teacher_contexts
from scgrpo_verl.teacher.splice import byte_level_tables
from scgrpo_verl.settings import TemplateConfig


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
        ctx = build_teacher_contexts(rollouts, tok, get_method(method), config, templates,
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
    ctx = build_teacher_contexts(rollouts, tok, get_method("sdpo"), TeacherConfig(sibling_choice="first"))
    assert ctx.extra == {"fast_demonstrations": 1, "retokenized_demonstrations": 0}
    prompt = ctx.teacher_prompt_ids[1]
    inner = ids[len(tok.encode(text.split("\n")[0] + "\n", add_special_tokens=False)):]
    assert any(prompt[k:k + len(inner) - 20] == inner[:-20] for k in range(len(prompt)))  # the middle reused as is
    slow = build_teacher_contexts(rollouts, tok, get_method("sdpo"), TeacherConfig(sibling_choice="first"), exact=True)
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
    fast = build_teacher_contexts(rollouts, tok, get_method("sdpo"), config)
    exact = build_teacher_contexts(rollouts, tok, get_method("sdpo"), config, exact=True)
    old = reference_contexts(rollouts, tok, "sdpo", config)
    assert exact.teacher_input_ids == old["input_ids"]
    assert decode(tok, fast.teacher_prompt_ids[1]) == decode(tok, exact.teacher_prompt_ids[1])  # same text
    prompt = fast.teacher_prompt_ids[1]
    assert any(prompt[k:k + len(spelled)] == spelled for k in range(len(prompt)))  # the student's own ids
    assert len(fast.teacher_prompt_ids[1]) == len(exact.teacher_prompt_ids[1]) + len(spelled) - len(middle)


def test_unsupported_tokenizer_takes_exact_path(tok, tmp_path):
    class Slow:  # not a fast tokenizer: the tables are refused, the builder re-tokenises every prompt
        is_fast = False

    assert byte_level_tables(Slow()) is None
    assert byte_level_tables(tok) is not None


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
    ctx = build_teacher_contexts(rollouts, tok, get_method(method), config, generator=torch.Generator().manual_seed(9))
    assert ctx.teacher_input_ids == old["input_ids"]
    assert ctx.extra["fast_demonstrations"] > 10


def test_think_block_demonstrations_reuse_ids(tok):
    body = "\n".join(f"Step {k}: add {k} and {k}." for k in range(8))
    texts = [f"<think>\nhmm {i}\nlet me see\n</think>\n\n{body}\nThe answer is {i}." for i in range(3)]
    texts.append(f"still thinking {3}\nok</think>{body}\nThe answer is 3.")  # the template opened the block
    rollouts = [Rollout(uid="g", prompt=[{"role": "user", "content": QUESTION}], response_ids=tok.encode(t),
                        response_text=None, score=s, index=i) for i, (t, s) in enumerate(zip(texts, [1, 1, 0, 1]))]
    config = TeacherConfig()
    ctx = build_teacher_contexts(rollouts, tok, get_method("sdpo"), config, generator=torch.Generator().manual_seed(0))
    old = reference_contexts(rollouts, tok, "sdpo", config, seed=0)
    assert ctx.teacher_input_ids == old["input_ids"]
    assert ctx.extra["retokenized_demonstrations"] == 0 and ctx.extra["fast_demonstrations"] >= 2
    assert all("hmm" not in decode(tok, ids) and "think>" not in decode(tok, ids) for ids in ctx.teacher_prompt_ids)


# -- realistic text: code, indented markdown, LaTeX, mixed-language; two pre-tokenisers ---------------------------


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
    ctx = build_teacher_contexts(rollouts, real_tok, get_method(method), config, generator=torch.Generator().manual_seed(3))
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
            ctx = build_teacher_contexts(rollouts, real_tok, get_method(method), config, templates)
            assert ctx.teacher_input_ids == old["input_ids"], (method, templates)
            assert list(ctx.teacher_messages) == old["messages"]
            assert ctx.extra["fast_demonstrations"] > 0


def test_split_rules_follow_the_probes(tmp_path):
    """A byte-level BPE without a regex pre-tokeniser merges across spaces: no split rule holds, the fast path is
    refused, and the builder still gives the naive result."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from scgrpo_verl.cpu_backend.assets import CHATML_TEMPLATE

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
    assert byte_level_tables(tok) is None
    rollouts = [Rollout(uid=0, prompt=[{"role": "user", "content": "Q"}], response_ids=tok.encode(t),
                        response_text=None, score=s, index=i)
                for i, (t, s) in enumerate((("the answer is x = 1\nthe answer is y", 1.0), ("no", 0.0)))]
    config = TeacherConfig(sibling_choice="first")
    assert build_teacher_contexts(rollouts, tok, get_method("sdpo"), config).teacher_input_ids == reference_contexts(
        rollouts, tok, "sdpo", config)["input_ids"]
