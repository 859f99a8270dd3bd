"""SelfTeacherWorker's registered passes on a tiny random Qwen2 with stand-in engines, and the
in-update teacher forward that the SDPG / SDPO-full losses use."""

import copy
import functools
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch

from conftest import VOCAB, engine_loss, make_micro_batch, nested
from scgrpo_verl.losses import self_teacher_loss
from scgrpo_verl.teacher.passes import teacher_pass, teacher_response_logits
from scgrpo_verl.worker import EMA_CHECKPOINT_DIR, SelfTeacherWorker

PROMPTS, RESPONSES = [3, 2, 4], [4, 5, 3]


def fake_engine(model):
    return SimpleNamespace(engine=SimpleNamespace(module=model, eval_mode=lambda: nullcontext()),
                           saved=[], loaded=[],
                           set_loss_fn=lambda loss_fn: None)


def make_worker(model, ref=None):
    worker = SelfTeacherWorker.__new__(SelfTeacherWorker)  # no Ray / distributed set-up
    worker.actor = fake_engine(model)
    worker.ref = None if ref is None else fake_engine(ref)
    worker.role = "actor_rollout_ref"
    return worker


def teacher_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    td = make_micro_batch(PROMPTS, RESPONSES, seed=seed)
    teacher_inputs = [torch.cat([torch.randint(VOCAB, (5,), generator=g), r]) for r in td["responses"].unbind()]
    td["teacher_input_ids"] = nested(teacher_inputs)
    return td


@pytest.mark.parametrize("weights", ["live", "frozen", "trust_region"])
def test_compute_self_teacher_matches_teacher_pass(tiny_model, weights):
    ref = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(0.9)
    worker = make_worker(tiny_model, ref)
    td = teacher_batch()
    from verl.utils import tensordict_utils as tu

    tu.assign_non_tensor(td, self_teacher_pass={"weights": weights, "divergence_kind": "forward_kl", "topk": 3,
                                                "trust_region_mix": 0.2, "chunk_size": 4})
    out = worker.compute_self_teacher(td)
    expected = teacher_pass(
        tiny_model, [r.tolist() for r in td["input_ids"].unbind()], [r.tolist() for r in td["teacher_input_ids"].unbind()],
        RESPONSES, teacher_model=ref if weights == "frozen" else None,
        frozen_model=ref if weights == "trust_region" else None, trust_region_mix=0.2, topk=3,
    )
    torch.testing.assert_close(out["self_teacher_pass_divergence"].values(), expected.divergence)
    torch.testing.assert_close(out["teacher_log_probs"].values(), expected.teacher_log_probs)
    assert out["teacher_topk_log_probs"].values().shape == (sum(RESPONSES), 4)
    assert out["self_teacher_pass_divergence"].offsets().diff().tolist() == RESPONSES


def test_in_update_teacher_forward_equals_stored_teacher_logits(tiny_model):
    """SDPG through verl's engine path: teacher logits computed inside the loss (worker-bound) give
    the same loss and gradients as the same logits stored in the micro-batch."""
    from scgrpo_verl.compose import compose_config
    from verl.utils.config import omega_conf_to_dataclass

    config = omega_conf_to_dataclass(compose_config("sdpg", ["self_teacher.sdpg.beta_base=0.7"]).actor_rollout_ref.actor)
    td = teacher_batch(1)
    extra = {"ref_log_prob": nested(-torch.rand(r) for r in RESPONSES), "self_teacher_mask": torch.ones(3)}
    for key, value in extra.items():
        td[key] = value
    from verl.utils import tensordict_utils as tu

    tu.assign_non_tensor(td, distillation_use_topk=True, global_steps=100)
    worker = make_worker(tiny_model)
    worker.configure_self_teacher("live", 0.05)
    bound = functools.partial(self_teacher_loss, config=config, teacher_logits_fn=worker.micro_batch_teacher_logits)
    loss, metrics = engine_loss(tiny_model, td, bound)
    loss.backward()
    grads = [p.grad.clone() for p in tiny_model.parameters()]
    tiny_model.zero_grad()

    stored = teacher_response_logits(tiny_model, [r.tolist() for r in td["teacher_input_ids"].unbind()], RESPONSES)
    td["teacher_logits"] = nested(stored.split(RESPONSES))
    plain = functools.partial(self_teacher_loss, config=config)
    expected, _ = engine_loss(tiny_model, td, plain)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    for p, g in zip(tiny_model.parameters(), grads):
        torch.testing.assert_close(p.grad, g)
    tiny_model.zero_grad()
    assert metrics["self_teacher/sdpg_beta"] > 0


def test_ema_teacher_update_and_checkpoint_round_trip(tiny_model, tmp_path):
    student = copy.deepcopy(tiny_model)
    teacher = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.5)
    worker = make_worker(student, teacher)

    def save(path, hdfs, step, keep):
        import os

        os.makedirs(path, exist_ok=True)
        torch.save(teacher.state_dict(), f"{path}/model.pt")

    restored = copy.deepcopy(tiny_model)

    def load(path, hdfs, delete):
        restored.load_state_dict(torch.load(f"{path}/model.pt"))

    worker.ref.save_checkpoint, worker.ref.load_checkpoint = save, load
    worker.actor.save_checkpoint = lambda *args: None
    worker.actor.load_checkpoint = lambda *args: None
    worker.configure_self_teacher("ema", 0.05)
    before = [p.clone() for p in teacher.parameters()]
    worker.update_ema_teacher(0.1)
    for p, b, s in zip(teacher.parameters(), before, student.parameters()):
        torch.testing.assert_close(p, 0.9 * b + 0.1 * s)
    worker.save_checkpoint(str(tmp_path), None, 3, None)
    assert (tmp_path / EMA_CHECKPOINT_DIR / "model.pt").exists()
    worker.load_checkpoint(str(tmp_path), None, False)
    for a, b in zip(restored.parameters(), teacher.parameters()):
        assert torch.equal(a, b)
