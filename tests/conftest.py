"""Shared CPU fixtures: a tiny random Qwen2, jagged micro-batches and verl's engine loss path; a naive divergence
loop; evaluation helpers."""

import itertools
import math
from fractions import Fraction

import pytest
import torch
from tensordict import TensorDict

from scgrpo_verl.engine_path import engine_loss, nested  # noqa: F401  (re-exported for the tests)

from scgrpo_verl.methods import get_method

VOCAB = 48
HIDDEN = 16


@pytest.fixture(scope="session")
def tiny_model():
    from scgrpo_verl.cpu_backend.assets import tiny_qwen2

    return tiny_qwen2(VOCAB, seed=0, hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64).eval()


# --------------------------------------------------------------------------- divergences (algos/)


def naive_divergence(p_logits, q_logits, kind, alpha, temperature=1.0):
    """Python loop over tokens and vocabulary entries, in float64."""
    out = []
    for zp, zq in zip(p_logits.double().tolist(), q_logits.double().tolist()):
        ep = [math.exp(z / temperature) for z in zp]
        eq = [math.exp(z / temperature) for z in zq]
        p = [e / sum(ep) for e in ep]
        q = [e / sum(eq) for e in eq]

        def kl(a, b):
            return sum(ai * math.log(ai / bi) for ai, bi in zip(a, b) if ai > 0)

        if kind == "forward_kl" or (kind == "jsd" and alpha == 0.0):
            out.append(kl(q, p))
        elif kind == "reverse_kl" or (kind == "jsd" and alpha == 1.0):
            out.append(kl(p, q))
        else:
            m = [(1 - alpha) * pi + alpha * qi for pi, qi in zip(p, q)]
            out.append((1 - alpha) * kl(p, m) + alpha * kl(q, m))
    return torch.tensor(out, dtype=torch.float64)


# --------------------------------------------------------------------------- evaluation (eval, report, ttsd)


def enumerated_pass_at_k(successes, k: int) -> Fraction:
    """pass@k by naive enumeration: the fraction of the k-subsets of the samples (``successes``: one bool each)
    that hold at least one success."""
    subsets = list(itertools.combinations(range(len(successes)), k))
    return Fraction(sum(1 for s in subsets if any(successes[i] for i in s)), len(subsets))


def verl_history() -> dict:
    """A run's step metrics as verl logs them: in-loop validation (val-core / val-aux) at steps 0 and 2."""
    return {
        0: {"val-core/openai/gsm8k/acc/mean@4": 0.25, "val-aux/openai/gsm8k/reward/mean@4": 0.3,
            "val-core/openai/gsm8k/acc/best@4/mean": 0.5, "val-core/tiny_parity/acc/mean@4": 0.4},
        1: {"timing_s/step": 12.5, "actor/pg_loss": -0.01, "self_teacher/frac_groups_with_success": 0.5},
        2: {"timing_s/step": 11.0, "val-core/openai/gsm8k/acc/mean@4": 0.5, "val-core/tiny_parity/acc/mean@4": 0.45,
            "val-aux/num_turns/mean": 2.0},
    }


def make_micro_batch(prompt_lens, response_lens, seed=0, extra=None, batch_num_tokens=None, global_batch_size=None,
                     dp_size=1, non_tensor=None):
    """A micro-batch as verl's actor hands it to the loss: jagged (B, j) tensors plus global batch info."""
    from verl.utils import tensordict_utils as tu

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(VOCAB, (p,), generator=g) for p in prompt_lens]
    responses = [torch.randint(VOCAB, (r,), generator=g) for r in response_lens]
    batch = {
        "prompts": nested(prompts),
        "responses": nested(responses),
        "input_ids": nested(torch.cat([a, b]) for a, b in zip(prompts, responses)),
        "position_ids": nested(torch.arange(p + r) for p, r in zip(prompt_lens, response_lens)),
        "attention_mask": nested(torch.ones(p + r, dtype=torch.long) for p, r in zip(prompt_lens, response_lens)),
        "response_mask": nested(torch.ones(r) for r in response_lens),
        "old_log_probs": nested(-torch.rand(r, generator=g) * 3 for r in response_lens),
        "advantages": nested(torch.full((r,), float(torch.randn(1, generator=g))) for r in response_lens),
    }
    batch.update(extra or {})
    td = TensorDict(batch, batch_size=[len(prompt_lens)])
    tu.assign_non_tensor(
        td,
        use_remove_padding=False,
        temperature=1.0,
        pad_token_id=0,
        dp_size=dp_size,
        batch_num_tokens=sum(response_lens) if batch_num_tokens is None else batch_num_tokens,
        global_batch_size=len(prompt_lens) if global_batch_size is None else global_batch_size,
        **(non_tensor or {}),
    )
    return td


def response_logits(model, micro_batch):
    """(B, R_max, V) student logits predicting each response token, from one forward per sample."""
    rows = []
    for prompt, response in zip(micro_batch["prompts"].unbind(), micro_batch["responses"].unbind()):
        ids = torch.cat([prompt, response]).unsqueeze(0)
        logits = model(input_ids=ids).logits[0]
        rows.append(logits[len(prompt) - 1 : len(prompt) - 1 + len(response)])
    width = max(r.shape[0] for r in rows)
    return torch.stack([torch.nn.functional.pad(r, (0, 0, 0, width - r.shape[0])) for r in rows])


def slice_micro_batch(td, start, stop):
    """Rows [start, stop) of a jagged micro-batch, keeping its (global) non-tensor batch info."""
    from tensordict import NonTensorData

    from verl.utils import tensordict_utils as tu

    out, info = {}, {}
    for key in td.keys():
        value = td.get(key)
        if isinstance(value, NonTensorData):
            info[key] = value.data
        elif value.is_nested:
            out[key] = nested(value.unbind()[start:stop])
        else:
            out[key] = value[start:stop]
    sliced = TensorDict(out, batch_size=[stop - start])
    tu.assign_non_tensor(sliced, **info)
    return sliced


# a fixed teacher lm_head: the stored teacher's logits are teacher_hidden @ TEACHER_HEAD.T
TEACHER_HEAD = torch.randn(VOCAB, HIDDEN, generator=torch.Generator().manual_seed(1234)) * 0.7


def teacher_states(lengths, seed=11):
    """Per-row teacher hidden states (r, H) and the logits they give through ``TEACHER_HEAD``, (r, V)."""
    g = torch.Generator().manual_seed(seed)
    hidden = [torch.randn(r, HIDDEN, generator=g) * 2 for r in lengths]
    return hidden, [h @ TEACHER_HEAD.T for h in hidden]


def stored_teacher(data):
    """A teacher forward stand-in reading fixed teacher hidden states from the micro-batch (``teacher_hidden``
    nested (B, r, H), scored through ``TEACHER_HEAD``) for the rows whose ``self_teacher_mask`` is set (all rows
    without a mask): the :class:`TeacherSide` the worker's teacher forward would return."""
    from scgrpo_verl.teacher.engine_forward import TeacherSide, TeacherTerm

    hidden = data["teacher_hidden"].values()
    lengths = data["responses"].offsets().diff()
    mask = data["self_teacher_mask"].reshape(-1) > 0 if "self_teacher_mask" in data.keys() else torch.ones(len(lengths), dtype=torch.bool)
    owner = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    index = mask[owner].nonzero(as_tuple=True)[0]
    return TeacherSide((TeacherTerm(hidden[index], TEACHER_HEAD),), index)


def teacher_loss(model, micro_batch, loss_fn, teacher_fn=stored_teacher):
    """``engine_loss`` with the self-teacher for the plugin's loss (verl's own ``ppo_loss`` runs without one)."""
    from scgrpo_verl.losses import self_teacher_loss

    if getattr(loss_fn, "func", None) is self_teacher_loss and (teacher_fn is not stored_teacher
                                                                 or "teacher_hidden" in micro_batch.keys()):
        return engine_loss(model, micro_batch, loss_fn, teacher_fn=teacher_fn)
    return engine_loss(model, micro_batch, loss_fn)


# --------------------------------------------------------------------------- teacher contexts (tests/teacher/)

HEADER = "<|im_start|>assistant\n"  # ChatML's generation header
QUESTION = "What is 2 + 3?"
LONG = " ".join(f"step {i}: add the numbers carefully." for i in range(60))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """A real local fast byte-level BPE tokenizer with ChatML (tests/tokenizer_utils.py)."""
    from tokenizer_utils import build_byte_level_tokenizer

    return build_byte_level_tokenizer(tmp_path_factory.mktemp("tok"))


def make(tok, uid, text, score, question=QUESTION, system=None, feedback="", privileged=None):
    """A :class:`~scgrpo_verl.teacher.Rollout` answering ``question`` with ``text``."""
    from scgrpo_verl.teacher import Rollout

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


def build_contexts(rollouts, tok, method, seed=0, templates=None, **teacher):
    """``build_teacher_contexts`` with a ``TeacherConfig(**teacher)`` and a generator seeded with ``seed``."""
    from scgrpo_verl.settings import TeacherConfig
    from scgrpo_verl.teacher import build_teacher_contexts

    gen = torch.Generator().manual_seed(seed)
    return build_teacher_contexts(rollouts, tok, get_method(method), TeacherConfig(**teacher), templates, generator=gen)


# --------------------------------------------------------------------------- memory for the slow verl runs

SLOW_RUN_MEMORY_GIB = 6  # one cpu-run at its peak (~5 GB) plus headroom; the miniature sizes its own parallelism
MEMORY_WAIT_S = 600


def pytest_runtest_setup(item):
    """A slow test starts a real multi-process verl run: wait (up to MEMORY_WAIT_S) until the host has the memory
    one run needs, saying so, and skip with the numbers if it never does -- instead of Ray killing workers midway
    (``ray.exceptions.OutOfMemoryError``) on a host that other jobs keep busy."""
    if item.get_closest_marker("slow") is None:
        return
    import time

    from scgrpo_verl.cpu_backend.run import free_memory_gib

    deadline = time.monotonic() + MEMORY_WAIT_S
    said = False
    while (free := free_memory_gib()) < SLOW_RUN_MEMORY_GIB:
        if time.monotonic() > deadline:
            pytest.skip(f"needs {SLOW_RUN_MEMORY_GIB} GiB of available memory for a verl run; the host has had "
                        f"{free:.1f} GiB for {MEMORY_WAIT_S} s (other jobs)")
        if not said:
            message = (f"{item.nodeid}: {free:.1f} GiB available, a verl run needs {SLOW_RUN_MEMORY_GIB}: waiting up "
                       f"to {MEMORY_WAIT_S} s for memory")
            terminal = item.config.pluginmanager.get_plugin("terminalreporter")
            terminal.write_line(message) if terminal else print(message, flush=True)
            said = True
        time.sleep(10)
