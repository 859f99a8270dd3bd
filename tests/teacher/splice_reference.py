"""The naive teacher-context builder (the landed algorithm of commit 7087683: draws in batch order, every prompt
rendered and tokenised whole) and batches that exercise the spliced fast path; shared by test_splice.py and
test_contexts.py."""

import torch
from conftest import LONG, QUESTION

from scgrpo_verl.teacher import Rollout, strip_thinking
from scgrpo_verl.teacher.fit import fit_teacher_prompt
from scgrpo_verl.settings import TemplateConfig
from scgrpo_verl.teacher.templates import (
    sc_grpo_teacher_messages,
    sdpg_teacher_messages,
    sdpo_teacher_messages,
)


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
