"""The teacher forward through verl's engine path (packed and padded) on a tiny random Qwen2, against
naive separate forwards of each sequence; SC-GRPO's D from verl's log-prob pass."""

import copy

import pytest
import torch

from conftest import VOCAB
from scgrpo_verl.engine_path import StandInEngine, build_micro_batch, sc_grpo_divergence
from scgrpo_verl.teacher.engine_forward import teacher_response_hidden
from scgrpo_verl.teacher.passes import ema_update_


def rollouts(seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts, teacher_prompts, responses = [], [], []
    for prompt_len, teacher_len, response_len in ((3, 7, 4), (2, 9, 6), (5, 5, 1), (4, 3, 3)):
        responses.append(torch.randint(VOCAB, (response_len,), generator=g).tolist())
        prompts.append(torch.randint(VOCAB, (prompt_len,), generator=g).tolist())
        teacher_prompts.append(torch.randint(VOCAB, (teacher_len,), generator=g).tolist())
    return prompts, teacher_prompts, responses


@torch.no_grad()
def naive_response_logits(model, sequences, lengths):
    """Full (r, V) logits per rollout from an ordinary forward of that one sequence."""
    out = []
    for ids, n in zip(sequences, lengths):
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        out.append(logits[len(ids) - n - 1 : len(ids) - 1])
    return torch.cat(out)


def naive_forward_kl(p_logits, q_logits):
    log_p, log_q = p_logits.double().log_softmax(-1), q_logits.double().log_softmax(-1)
    return (log_q.exp() * (log_q - log_p)).sum(-1)


class CountingModel(torch.nn.Module):
    """Counts forwards and the positions whose logits were asked for."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def get_decoder(self):
        return self.model.get_decoder()

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()

    def forward(self, **kwargs):
        keep = kwargs.get("logits_to_keep", 0)
        self.calls.append((tuple(kwargs["input_ids"].shape), keep.numel() if torch.is_tensor(keep) else keep))
        return self.model(**kwargs)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_teacher_logits_one_forward_on_teacher_rows_only(tiny_model, packed, temperature):
    prompts, teacher_prompts, responses = rollouts()
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0])
    micro_batch = build_micro_batch(
        prompts, responses, temperature=temperature, use_remove_padding=packed,
        fields={"teacher_input_ids": [torch.tensor(t + r) for t, r in zip(teacher_prompts, responses)],
                "self_teacher_mask": mask},
    )
    counting = CountingModel(tiny_model)
    side = teacher_response_hidden(StandInEngine(counting), micro_batch, counting)
    index = side.token_index
    rows = [i for i in range(4) if mask[i] > 0]
    expected = naive_response_logits(
        tiny_model, [teacher_prompts[i] + responses[i] for i in rows], [len(responses[i]) for i in rows]
    )  # the temperature is applied by the divergence kernel, on both sides
    (term,) = side.terms
    assert term.weight is None and term.hidden.shape == (len(expected), tiny_model.config.hidden_size)
    torch.testing.assert_close(term.hidden @ tiny_model.lm_head.weight.T, expected, rtol=1e-4, atol=1e-5)
    owner = torch.repeat_interleave(torch.arange(4), torch.tensor([len(r) for r in responses]))
    assert torch.equal(owner[index], torch.repeat_interleave(torch.tensor(rows), torch.tensor([len(responses[i]) for i in rows])))
    assert len(counting.calls) == 1  # one forward for the micro-batch, not one per rollout
    shape, kept = counting.calls[0]
    assert shape[0] == (1 if packed else 3)  # the row without a teacher is not forwarded
    assert kept == 1  # hidden states are read before the head: the head runs on one position only


def test_trust_region_teacher_mixes_logits(tiny_model):
    prompts, teacher_prompts, responses = rollouts(1)
    frozen = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for param in frozen.parameters():
            param.mul_(0.8)
    micro_batch = build_micro_batch(
        prompts, responses,
        fields={"teacher_input_ids": [torch.tensor(t + r) for t, r in zip(teacher_prompts, responses)],
                "self_teacher_mask": torch.ones(4)},
    )
    side = teacher_response_hidden(StandInEngine(tiny_model), micro_batch, tiny_model,
                                   frozen=(frozen, (frozen.lm_head.weight, None)), trust_region_mix=0.3)
    logits = sum(t.coef * (t.hidden @ (tiny_model.lm_head.weight if t.weight is None else t.weight).T)
                 for t in side.terms)
    sequences, lengths = [t + r for t, r in zip(teacher_prompts, responses)], [len(r) for r in responses]
    live, old = naive_response_logits(tiny_model, sequences, lengths), naive_response_logits(frozen, sequences, lengths)
    torch.testing.assert_close(logits, old + 0.3 * (live - old), rtol=1e-4, atol=1e-5)


def test_sc_grpo_divergence_from_the_log_prob_pass_matches_separate_forwards(tiny_model):
    prompts, teacher_prompts, responses = rollouts(2)
    teacher_prompts[1] = None  # no teacher: D = 0, no forward
    values, model_output = sc_grpo_divergence(tiny_model, prompts, teacher_prompts, responses, temperature=0.9)
    for i, (prompt, teacher, response) in enumerate(zip(prompts, teacher_prompts, responses)):
        if teacher is None:
            assert torch.equal(values[i], torch.zeros(len(response)))
            continue
        p = naive_response_logits(tiny_model, [prompt + response], [len(response)]) / 0.9
        q = naive_response_logits(tiny_model, [teacher + response], [len(response)]) / 0.9
        torch.testing.assert_close(values[i].double(), naive_forward_kl(p, q), rtol=1e-4, atol=1e-6)
    assert "log_probs" in model_output  # the student's log-probs come from the same pass


def test_ema_update_closed_form_in_place(tiny_model):
    teacher = copy.deepcopy(tiny_model)
    student = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for param in student.parameters():
            param.add_(1.0)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    storage = {name: param.data_ptr() for name, param in teacher.named_parameters()}
    ema_update_(teacher, student, 0.05)
    for name, param in teacher.named_parameters():
        torch.testing.assert_close(param, 0.95 * before[name] + 0.05 * dict(student.named_parameters())[name])
        assert param.data_ptr() == storage[name]  # in place: FSDP / the ref engine keep referring to these tensors
    with pytest.raises(ValueError, match="rate"):
        ema_update_(teacher, student, 0.0)


def test_ema_update_to_the_teachers_dtype_and_its_checks():
    """A bf16 teacher blended with an fp32 student, on values whose blend is exact in bf16 (hand-computed); rate 1
    copies the student; a rate outside (0, 1], a missing parameter or a shape mismatch is an error naming it."""
    student = torch.nn.Linear(3, 1)
    teacher = torch.nn.Linear(3, 1).to(torch.bfloat16)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[3.0, -1.0, 0.5]]))
        student.bias.fill_(-2.0)
        teacher.weight.copy_(torch.tensor([[1.0, 1.0, -0.5]]))
        teacher.bias.fill_(2.0)
    ema_update_(teacher, student, 0.25)  # 0.75 * teacher + 0.25 * student
    assert teacher.weight.dtype == torch.bfloat16
    assert teacher.weight.tolist() == [[1.5, 0.5, -0.25]] and teacher.bias.tolist() == [1.0]
    ema_update_(teacher, student, 1.0)
    assert teacher.weight.tolist() == [[3.0, -1.0, 0.5]] and teacher.bias.tolist() == [-2.0]
    with pytest.raises(ValueError, match="rate"):
        ema_update_(teacher, student, 1.5)
    with pytest.raises(KeyError, match="bias"):
        ema_update_(torch.nn.Linear(3, 1, bias=False), student, 0.5)
    with pytest.raises(ValueError, match="'weight'"):
        ema_update_(torch.nn.Linear(4, 1), student, 0.5)
