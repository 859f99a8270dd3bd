"""SelfTeacherWorker on a tiny random Qwen2 with stand-in engines running verl's own forward step: the
teacher in verl's log-prob pass (SC-GRPO's D) and in the actor update (SDPG / SDPO), the ref-engine
teacher's moves between host and device (counted per step), the global teacher-token counts, the EMA teacher."""

import copy
import functools
from contextlib import contextmanager

import pytest
import torch

from conftest import VOCAB, make_micro_batch, nested, teacher_loss
from scgrpo_verl.engine_path import StandInEngine, sc_grpo_divergence
from scgrpo_verl.batch_keys import DIVERGENCE_KEY, PASS_OPTION, TEACHER_ROWS_KEY, TEACHER_TOKENS_KEY
from scgrpo_verl.losses import self_teacher_loss
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
        return [self.forward_step(data, loss_function, forward_only)[1]]


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
            output = self.engine.forward_step(data, self.loss_fn if compute_loss else (lambda **kw: (torch.zeros(()), {})),
                                              True)[1]
        return TensorDict(output, batch_size=[len(data)])

    def train_mini_batch(self, data):
        return self.engine.forward_backward_batch(data, self.loss_fn)


def make_worker(model, ref=None, weights="live", in_update=False, ema_rate=0.05, param_offload=True):
    from types import SimpleNamespace

    worker = SelfTeacherWorker.__new__(SelfTeacherWorker)  # no Ray / distributed set-up
    worker.actor = FakeTrainingWorker(model)
    worker.ref = None if ref is None else FakeTrainingWorker(ref)
    worker.role = "actor_rollout_ref"
    worker.enable_routing_replay = False
    worker.config = SimpleNamespace(ref=SimpleNamespace(fsdp_config=SimpleNamespace(param_offload=param_offload)))
    worker.configure_self_teacher(weights, 0.2, in_update, ema_rate)
    worker.placements = []
    worker._place_ref = worker.placements.append  # count the host <-> device moves (both are the CPU here)
    return worker


def call_update(worker):
    """verl's update_actor as the worker's parent runs it: one mini-batch through forward_backward_batch."""
    from tensordict import TensorDict

    def train_mini_batch(data):
        worker.actor.engine.forward_backward_batch(data, worker.actor.loss_fn or (lambda **kw: (torch.zeros(()), {})))
        return TensorDict({}, batch_size=[])

    worker.actor.train_mini_batch = train_mini_batch


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
    # a ref teacher goes to the device for the pass and back (its param_offload is on)
    assert worker.placements == ([] if weights == "live" else [True, False])

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


def test_in_update_teacher_forward_equals_a_naive_teacher(tiny_model):
    """SDPG through the worker's wrapped forward step (teacher forward first, packed, then verl's student forward)
    gives the loss and gradients of the same teacher's hidden states taken from one plain forward per row."""
    from verl.utils import tensordict_utils as tu

    from scgrpo_verl.teacher.engine_forward import TeacherSide, TeacherTerm

    config = actor_config("sdpg", "self_teacher.sdpg.beta_base=0.7")
    td = teacher_batch(1, mask=(1.0, 1.0, 0.0))
    td["ref_log_prob"] = nested(-torch.rand(r) for r in RESPONSES)
    td["advantages"] = nested(torch.full((r,), 0.5) for r in RESPONSES)
    tu.assign_non_tensor(td, global_steps=100)
    worker = make_worker(tiny_model, in_update=True)
    worker.set_loss_fn(functools.partial(self_teacher_loss, config=config))
    with worker._teacher_pass():
        (loss, metrics), _ = worker.actor.engine.forward_step(td, worker.actor.loss_fn, False)
    loss.backward()
    grads = [p.grad.clone() for p in tiny_model.parameters()]
    tiny_model.zero_grad()

    with torch.no_grad():  # the teacher's last hidden states, one forward per row with a teacher
        rows = []
        for t, r in zip(td["teacher_input_ids"].unbind()[:2], RESPONSES[:2]):
            hidden = tiny_model.model(input_ids=t.unsqueeze(0)).last_hidden_state[0]
            rows.append(hidden[len(t) - r - 1 : len(t) - 1])
    naive = TeacherSide((TeacherTerm(torch.cat(rows)),), torch.arange(RESPONSES[0] + RESPONSES[1]))
    expected, _ = teacher_loss(tiny_model, td, functools.partial(self_teacher_loss, config=config),
                               teacher_fn=lambda data: naive)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    for p, g in zip(tiny_model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    tiny_model.zero_grad()
    assert float(metrics["self_teacher/opd_loss"].values[0]) > 0


def test_update_counts_teacher_tokens_over_the_mini_batch(tiny_model):
    worker = make_worker(tiny_model, copy.deepcopy(tiny_model), "ema")
    call_update(worker)
    worker.update_actor(teacher_batch())
    data = worker.actor.engine.batches[-1]
    from verl.utils import tensordict_utils as tu

    assert tu.get_non_tensor_data(data=data, key=TEACHER_TOKENS_KEY, default=None) == RESPONSES[0] + RESPONSES[2]
    assert tu.get_non_tensor_data(data=data, key=TEACHER_ROWS_KEY, default=None) == 2


@pytest.mark.parametrize("method,weights,param_offload,expected", [
    # SC-GRPO, EMA teacher: to the device for the log-prob pass, kept there for the blend after the update, back
    ("sc_grpo", "ema", True, [True, False]),
    ("sc_grpo", "frozen", True, [True, False]),
    ("sdpo", "frozen", True, [True, False]),  # SDPO: the teacher runs in the update only
    ("sdpo", "ema", False, [True]),  # the ref's param_offload off: it moves once and stays
])
def test_ref_teacher_moves_at_most_once_per_step(tiny_model, method, weights, param_offload, expected):
    """A ref-engine teacher crosses host <-> device at most once each way per training step (not per micro-batch
    or per pass): two steps, each with the passes the method runs."""
    from verl.utils import tensordict_utils as tu

    in_update = method == "sdpo"
    worker = make_worker(tiny_model, copy.deepcopy(tiny_model), weights, in_update=in_update,
                         param_offload=param_offload)
    config = actor_config(method, "self_teacher.sdpo.distillation=full") if method == "sdpo" else actor_config(method)
    worker.set_loss_fn(functools.partial(self_teacher_loss, config=config))
    call_update(worker)
    for step in range(2):
        worker.placements.clear()
        if method == "sc_grpo":  # verl's old-log-prob pass with the teacher in it, then the update without
            td = teacher_batch(step)
            tu.assign_non_tensor(td, **{PASS_OPTION: True}, compute_loss=False)
            worker.compute_log_prob(td)
            worker.actor.set_loss_fn(lambda **kw: (torch.zeros((), requires_grad=True), {}))
        worker.update_actor(teacher_batch(step))
        worker.actor.set_loss_fn(functools.partial(self_teacher_loss, config=config))
        assert worker.placements == (expected if step == 0 or param_offload else [])
    assert worker._ref_moves == (4 if param_offload else 1)


def test_ema_teacher_update_and_checkpoint_round_trip(tiny_model, tmp_path):
    student = copy.deepcopy(tiny_model)
    teacher = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.5)
    worker = make_worker(student, teacher, "ema", ema_rate=0.1)
    call_update(worker)
    worker.actor.set_loss_fn(lambda **kw: (torch.zeros(()), {}))

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
    before = [p.clone() for p in teacher.parameters()]
    worker.update_actor(teacher_batch())  # the EMA blend follows the actor update, where the ref shards are
    for p, b, s in zip(teacher.parameters(), before, student.parameters()):
        torch.testing.assert_close(p, 0.9 * b + 0.1 * s)
    worker.save_checkpoint(str(tmp_path), None, 3, None)
    assert (tmp_path / EMA_CHECKPOINT_DIR / "model.pt").exists()
    worker.load_checkpoint(str(tmp_path), None, False)
    for a, b in zip(restored.parameters(), teacher.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("distributed", [False, True])
@pytest.mark.parametrize("name", ["sc_grpo", "sdpg"])
def test_micro_batch_without_teacher_rows(tiny_model, name, distributed, monkeypatch):
    """A micro-batch where no row has a teacher (dynamic batching makes them): D is 0. A single process runs no
    teacher forward and no head; under torch.distributed the rank still runs one (one-token) teacher forward and
    the lm_head once, on 0 rows, so the other ranks' FSDP gathers (and reductions) never wait on it."""
    from verl.utils import tensordict_utils as tu

    from scgrpo_verl.teacher import engine_forward

    monkeypatch.setattr(engine_forward, "_distributed", lambda: distributed)
    heads, forwards = [], []
    original_head, original_forward = engine_forward.through_module, engine_forward._forward_hidden
    monkeypatch.setattr(engine_forward, "through_module", lambda *a: heads.append(1) or original_head(*a))
    monkeypatch.setattr(engine_forward, "_forward_hidden", lambda *a: forwards.append(1) or original_forward(*a))
    worker = make_worker(tiny_model, in_update=name == "sdpg")
    worker.set_loss_fn(functools.partial(self_teacher_loss, config=actor_config(name)))
    td = teacher_batch(mask=(0.0, 0.0, 0.0))
    if name == "sc_grpo":
        tu.assign_non_tensor(td, **{PASS_OPTION: True}, compute_loss=False)
        out = worker.compute_log_prob(td)
        assert torch.equal(out[DIVERGENCE_KEY].values(), torch.zeros(sum(PROMPTS) + sum(RESPONSES)))
    else:
        td["ref_log_prob"] = nested(-torch.rand(r) for r in RESPONSES)
        tu.assign_non_tensor(td, global_steps=100)
        with worker._teacher_pass():
            (loss, metrics), _ = worker.actor.engine.forward_step(td, worker.actor.loss_fn, False)
        loss.backward()
        tiny_model.zero_grad()
        assert float(metrics["self_teacher/opd_loss"].values[0]) == 0.0
    assert forwards == heads == ([1] if distributed else [])
