"""The teacher pass on a tiny random Qwen2 against two naive separate full-logit forwards."""

import copy

import pytest
import torch

from conftest import VOCAB
from scgrpo_verl.teacher.passes import ema_update_, teacher_pass


def rollouts(seed=0):
    g = torch.Generator().manual_seed(seed)
    students, teachers, lengths = [], [], []
    for prompt_len, teacher_len, response_len in ((3, 7, 4), (2, 9, 6), (5, 5, 1)):
        response = torch.randint(VOCAB, (response_len,), generator=g).tolist()
        students.append(torch.randint(VOCAB, (prompt_len,), generator=g).tolist() + response)
        teachers.append(torch.randint(VOCAB, (teacher_len,), generator=g).tolist() + response)
        lengths.append(response_len)
    return students, teachers, lengths


@torch.no_grad()
def naive_response_logits(model, sequences, lengths):
    """Full (r, V) logits per rollout from an ordinary forward."""
    out = []
    for ids, n in zip(sequences, lengths):
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        out.append(logits[len(ids) - n - 1 : len(ids) - 1])
    return torch.cat(out)


def naive_kl(log_a, log_b):
    return torch.stack([sum(a.exp() * (a - b) for a, b in zip(ra, rb)) for ra, rb in zip(log_a, log_b)])


@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
def test_live_teacher_matches_two_naive_forwards(tiny_model, chunk_size):
    students, teachers, lengths = rollouts()
    out = teacher_pass(tiny_model, students, teachers, lengths, topk=5, chunk_size=chunk_size)
    p = naive_response_logits(tiny_model, students, lengths).log_softmax(-1)
    q = naive_response_logits(tiny_model, teachers, lengths).log_softmax(-1)
    sampled = torch.tensor([t for s, n in zip(students, lengths) for t in s[len(s) - n :]])
    torch.testing.assert_close(out.teacher_log_probs, q.gather(-1, sampled.unsqueeze(-1)).squeeze(-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.divergence, naive_kl(q, p), rtol=1e-4, atol=1e-6)  # SC-GRPO's D = KL(q || p)
    ids = p.topk(5, -1).indices
    assert torch.equal(out.teacher_topk_ids, ids)
    picked = q.gather(-1, ids)
    tail = torch.log1p(-picked.exp().sum(-1, keepdim=True))
    torch.testing.assert_close(out.teacher_topk_log_probs, torch.cat([picked, tail], -1), rtol=1e-4, atol=1e-5)
    assert [x.shape[0] for x in out.split(out.divergence)] == lengths


def test_separate_and_trust_region_teachers(tiny_model):
    students, teachers, lengths = rollouts(1)
    frozen = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for param in frozen.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    p = naive_response_logits(tiny_model, students, lengths).log_softmax(-1)

    separate = teacher_pass(tiny_model, students, teachers, lengths, teacher_model=frozen, divergence_kind="reverse_kl")
    q = naive_response_logits(frozen, teachers, lengths).log_softmax(-1)
    torch.testing.assert_close(separate.divergence, naive_kl(p, q), rtol=1e-4, atol=1e-6)

    mixed = teacher_pass(tiny_model, students, teachers, lengths, frozen_model=frozen, trust_region_mix=0.3)
    live_logits = naive_response_logits(tiny_model, teachers, lengths)
    frozen_logits = naive_response_logits(frozen, teachers, lengths)
    q_mix = torch.lerp(frozen_logits, live_logits, 0.3).log_softmax(-1)
    torch.testing.assert_close(mixed.divergence, naive_kl(q_mix, p), rtol=1e-4, atol=1e-6)


def test_teacher_pass_rejects_mismatched_responses(tiny_model):
    students, teachers, lengths = rollouts()
    teachers[0] = teachers[0][:-1] + [(teachers[0][-1] + 1) % VOCAB]
    with pytest.raises(ValueError, match="same response ids"):
        teacher_pass(tiny_model, students, teachers, lengths)


def test_ema_update_closed_form_and_state_dict_round_trip(tiny_model, tmp_path):
    teacher = copy.deepcopy(tiny_model)
    student = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for param in student.parameters():
            param.add_(1.0)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update_(teacher, student, 0.05)
    for name, param in teacher.named_parameters():
        torch.testing.assert_close(param, 0.95 * before[name] + 0.05 * dict(student.named_parameters())[name])
    torch.save(teacher.state_dict(), tmp_path / "ema.pt")
    restored = copy.deepcopy(tiny_model)
    restored.load_state_dict(torch.load(tmp_path / "ema.pt"))
    for a, b in zip(restored.parameters(), teacher.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="rate"):
        ema_update_(teacher, student, 0.0)
