"""SelfTeacherWorker on a tiny random Qwen2 with stand-in engines running verl's own forward step: the
teacher inside verl's log-prob pass (SC-GRPO's D) and inside the actor update (SDPG / SDPO), the ref-engine
teacher's load / offload, the global teacher-token counts, the EMA teacher."""

import copy
import functools
from contextlib import contextmanager

import pytest
import torch

from conftest import VOCAB, engine_loss, make_micro_batch, nested, stored_teacher_logits
from scgrpo_verl.engine_path import StandInEngine, sc_grpo_divergence
from scgrpo_verl.losses import DIVERGENCE_KEY, PASS_OPTION, TEACHER_ROWS_KEY, TEACHER_TOKENS_KEY, self_teacher_loss
from scgrpo_verl.worker import EMA_CHECKPOINT_DIR, SelfTeacherWorker

PROMPTS, RESPONSES = [3, 2, 4], [4, 5, 3]


class FakeEngine(StandInEngine):
    """verl's forward step on a plain model, plus the engine methods the worker touches."""

    def __init__(self, model):
        super().__init__(model)
        self.loaded = 0
        self.batches = []

    @contextmanager
    def eval_mode(self, **kwargs):
        self.loaded += 1
        yield

    def get_data_parallel_group(self):
        return None

    def forward_backward_batch(self, data, loss_function, forward_only=False):
        self.batches.append(data)
        return [self.forward_step(data, loss_function)[1]]


class FakeTrainingWorker:
    """verl's TrainingWorker as the actor worker calls it: infer_batch runs self.loss_fn as the pass's loss."""

    def __init__(self, model):
        self.engine = FakeEngine(model)
        self.loss_fn = None

    def set_loss_fn(self, loss_fn):
        self.loss_fn = loss_fn

    def infer_batch(self, data):
        from verl.utils import tensordict_utils as tu

        compute_loss = tu.get_non_tensor_data(data=data, key="compute_loss", default=True)
        from tensordict import TensorDict

        with torch.no_grad():
            output = self.engine.forward_step(data, self.loss_fn if compute_loss else (lambda **kw: (torch.zeros(()), {})))[1]
        return TensorDict(output, batch_size=[len(data)])

    def train_mini_batch(self, data):
        return self.engine.forward_backward_batch(data, self.loss_fn)


def make_worker(model, ref=None, weights="live"):
    worker = SelfTeacherWorker.__new__(SelfTeacherWorker)  # no Ray / distributed set-up
    worker.actor = FakeTrainingWorker(model)
    worker.ref = None if ref is None else FakeTrainingWorker(ref)
    worker.role = "actor_rollout_ref"
    worker.enable_routing_replay = False
    worker.configure_self_teacher(weights, 0.2)
    return worker


def teacher_batch(seed=0, mask=(1.0, 0.0, 1.0)):
    g = torch.Generator().manual_seed(seed)
    td = make_micro_batch(PROMPTS, RESPONSES, seed=seed)
    teacher_inputs = [torch.cat([torch.randint(VOCAB, (5,), generator=g), r]) for r in td["responses"].unbind()]
    td["teacher_input_ids"] = nested(teacher_inputs)
    td["self_teacher_mask"] = torch.tensor(mask)
    return td


def actor_config(name, *overrides):
    from scgrpo_verl.compose import compose_config
    from verl.utils.config import omega_conf_to_dataclass

    return omega_conf_to_dataclass(compose_config(name, list(overrides)).actor_rollout_ref.actor)


@pytest.mark.parametrize("weights", ["live", "frozen", "trust_region"])
def test_log_prob_pass_with_the_option_returns_sc_grpo_divergence(tiny_model, weights):
    from verl.utils import tensordict_utils as tu

    ref = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(0.9)
    worker = make_worker(tiny_model, ref, weights)
    config = actor_config("sc_grpo")
    worker.set_loss_fn(functools.partial(self_teacher_loss, config=config))
    installed = worker.actor.loss_fn
    td = teacher_batch()
    tu.assign_non_tensor(td, **{PASS_OPTION: True}, compute_loss=False)
    out = worker.compute_log_prob(td)
    assert worker.actor.loss_fn is installed  # the pass's processor was only borrowed
    assert worker.ref.engine.loaded == (0 if weights == "live" else 1)  # a ref teacher is loaded for the pass

    prompts = [p.tolist() for p in td["prompts"].unbind()]
    responses = [r.tolist() for r in td["responses"].unbind()]
    teacher_prompts = [t.tolist()[: len(t) - len(r)] if m > 0 else None
                       for t, r, m in zip(td["teacher_input_ids"].unbind(), responses, td["self_teacher_mask"])]
    expected, _ = sc_grpo_divergence(tiny_model, prompts, teacher_prompts, responses,
                                     teacher_model=ref if weights == "frozen" else None,
                                     frozen_model=ref if weights == "trust_region" else None, trust_region_mix=0.2)
    got = [row[len(p) - 1 : len(p) - 1 + len(r)] for row, p, r in zip(out[DIVERGENCE_KEY].unbind(), prompts, responses)]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    assert torch.equal(got[1], torch.zeros(RESPONSES[1]))

    plain = teacher_batch()
    tu.assign_non_tensor(plain, compute_loss=False)  # as verl's trainer calls its log-prob pass
    assert DIVERGENCE_KEY not in worker.compute_log_prob(plain)  # without the option: verl's pass as it is


def test_in_update_teacher_forward_equals_stored_teacher_logits(tiny_model):
    """SDPG through verl's engine path: the teacher forward inside the loss (worker-bound) gives the same loss
    and gradients as the same teacher's logits handed in directly."""
    from verl.utils import tensordict_utils as tu

    from test_teacher_pass import naive_response_logits

    config = actor_config("sdpg", "self_teacher.sdpg.beta_base=0.7")
    td = teacher_batch(1, mask=(1.0, 1.0, 0.0))
    td["ref_log_prob"] = nested(-torch.rand(r) for r in RESPONSES)
    td["advantages"] = nested(torch.full((r,), 0.5) for r in RESPONSES)
    tu.assign_non_tensor(td, distillation_use_topk=True, global_steps=100)
    worker = make_worker(tiny_model)
    worker.set_loss_fn(functools.partial(self_teacher_loss, config=config))
    loss, metrics = engine_loss(tiny_model, td, worker.actor.loss_fn)
    loss.backward()
    grads = [p.grad.clone() for p in tiny_model.parameters()]
    tiny_model.zero_grad()

    teacher = naive_response_logits(tiny_model, [t.tolist() for t in td["teacher_input_ids"].unbind()], RESPONSES)
    td["teacher_logits"] = nested(teacher.split(RESPONSES))
    stored = functools.partial(self_teacher_loss, config=config, teacher_logits_fn=stored_teacher_logits)
    expected, _ = engine_loss(tiny_model, td, stored)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    for p, g in zip(tiny_model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    tiny_model.zero_grad()
    assert float(metrics["self_teacher/opd_loss"].values[0]) > 0


def test_update_loads_a_ref_teacher_and_counts_teacher_tokens(tiny_model):
    worker = make_worker(tiny_model, copy.deepcopy(tiny_model), "ema")
    seen = []
    def train_mini_batch(data):
        seen.append(worker.ref.engine.loaded)
        worker.actor.engine.forward_backward_batch(data, lambda **kw: (torch.zeros(()), {}))
        from tensordict import TensorDict

        return TensorDict({}, batch_size=[])

    worker.actor.train_mini_batch = train_mini_batch
    td = teacher_batch()
    worker.update_actor(td)
    assert seen == [1]  # the EMA teacher was loaded for the whole update
    data = worker.actor.engine.batches[-1]
    from verl.utils import tensordict_utils as tu

    assert tu.get_non_tensor_data(data=data, key=TEACHER_TOKENS_KEY, default=None) == RESPONSES[0] + RESPONSES[2]
    assert tu.get_non_tensor_data(data=data, key=TEACHER_ROWS_KEY, default=None) == 2


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


@pytest.mark.parametrize("name", ["sc_grpo", "sdpg"])
def test_micro_batch_without_teacher_rows(tiny_model, name):
    """A micro-batch where no row has a teacher (dynamic batching makes them): D is 0 and no teacher forward."""
    from verl.utils import tensordict_utils as tu

    worker = make_worker(tiny_model)
    config = actor_config(name)
    worker.set_loss_fn(functools.partial(self_teacher_loss, config=config))
    td = teacher_batch(mask=(0.0, 0.0, 0.0))
    if name == "sc_grpo":
        tu.assign_non_tensor(td, **{PASS_OPTION: True}, compute_loss=False)
        out = worker.compute_log_prob(td)
        assert torch.equal(out[DIVERGENCE_KEY].values(), torch.zeros(sum(PROMPTS) + sum(RESPONSES)))
    else:
        td["ref_log_prob"] = nested(-torch.rand(r) for r in RESPONSES)
        tu.assign_non_tensor(td, distillation_use_topk=True, global_steps=100)
        loss, metrics = engine_loss(tiny_model, td, worker.actor.loss_fn)
        loss.backward()
        tiny_model.zero_grad()
        assert float(metrics["self_teacher/opd_loss"].values[0]) == 0.0
