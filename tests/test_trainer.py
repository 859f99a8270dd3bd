"""The self_teacher trainer mode: start-up validation, sync behaviour, and the advantage step
against a mocked TransferQueue."""

import functools

import numpy as np
import pytest
import torch
from transfer_queue import KVBatchMeta

from fake_tq import FakeTransferQueue
from scgrpo_verl.algos.sc_grpo import ROUTE_PLAIN, ROUTE_SOLVE_NONE, ROUTE_WEIGHTED, solve_none_pseudo_advantage
from scgrpo_verl.compose import compose_config
from scgrpo_verl.settings import SelfTeacherConfig
from scgrpo_verl.losses import self_teacher_loss
from scgrpo_verl.methods import get_method
from scgrpo_verl.trainer import TRAINER_MODE, apply_method_advantages, validate_self_teacher_config


def test_trainer_mode_is_registered_with_verl():
    from verl.trainer.ppo.v1 import get_trainer_cls

    assert get_trainer_cls(TRAINER_MODE).__name__ == "SelfTeacherTrainer"


@pytest.mark.parametrize("name", ["sc_grpo", "sdpo", "sdpg"])
def test_method_configs_pass_the_trainer_validation(name):
    settings, actor = validate_self_teacher_config(compose_config(name))
    assert settings.enable and actor.policy_loss.loss_mode == name


@pytest.mark.parametrize("name,overrides,key", [
    ("sdpo", ["actor_rollout_ref.actor.use_kl_loss=true"], "self_teacher.teacher.weights"),
    ("sdpg", ["actor_rollout_ref.actor.policy_loss.loss_mode=vanilla"], "policy_loss.loss_mode"),
    ("sc_grpo", ["self_teacher.teacher.weights=nope"], "self_teacher.teacher.weights"),
    ("sdpo", ["actor_rollout_ref.ref.fsdp_config.model_dtype=bf16"], "ref.fsdp_config.model_dtype"),
    ("sdpg", ["actor_rollout_ref.actor.ulysses_sequence_parallel_size=2"], "actor.ulysses_sequence_parallel_size"),
    ("sdpo", ["actor_rollout_ref.ref.ulysses_sequence_parallel_size=2"], "ref.ulysses_sequence_parallel_size"),
])
def test_bad_plugin_config_is_rejected_before_the_first_rollout(name, overrides, key):
    from scgrpo_verl.trainer import SelfTeacherTrainer

    with pytest.raises(ValueError) as error:
        SelfTeacherTrainer(compose_config(name, overrides))  # the constructor validates before verl's set-up
    assert key in str(error.value)


def test_verls_fused_kernels_are_accepted():
    """The self-teacher reads hidden states, so verl's use_fused_kernels (no logits built) passes the validation."""
    settings, _ = validate_self_teacher_config(compose_config("sdpo", ["actor_rollout_ref.model.use_fused_kernels=true"]))
    assert settings.enable


def test_grpo_config_without_the_section_is_rejected():
    with pytest.raises(ValueError, match="self_teacher section"):
        validate_self_teacher_config(compose_config("grpo"))


def test_solve_none_advantages_written_back_to_transfer_queue(monkeypatch):
    from verl.trainer.ppo.v1 import trainer_base

    fake = FakeTransferQueue()
    monkeypatch.setattr(trainer_base, "tq", fake)
    lengths = [3, 5, 2, 4, 4, 1, 3, 2]
    keys = [f"k{i}" for i in range(8)]
    g = torch.Generator().manual_seed(0)
    grpo = [torch.full((n,), float(torch.randn(1, generator=g))) for n in lengths]
    divergence = [torch.rand(n, generator=g) for n in lengths]
    route = torch.tensor([ROUTE_SOLVE_NONE] * 4 + [ROUTE_WEIGHTED] * 2 + [ROUTE_PLAIN] * 2)
    reference = torch.tensor([0, 1, 0, 0, 0, 0, 0, 0])
    from tensordict import TensorDict

    nested = lambda xs: torch.nested.as_nested_tensor(xs, layout=torch.jagged)  # noqa: E731
    fake.kv_batch_put(keys, "train", TensorDict({
        "advantages": nested(grpo), "response_mask": nested([torch.ones(n) for n in lengths]),
        "sc_divergence": nested(divergence), "sc_route": route, "sc_reference": reference,
    }, batch_size=[8]))
    for i, key in enumerate(keys):
        fake.rows[("train", key)]["uid"] = "a" if i < 4 else ("b" if i < 6 else "c")
    batch = KVBatchMeta(keys=keys, tags=[{}] * 8, partition_id="train")
    metrics = {}
    apply_method_advantages(batch, get_method("sc_grpo"), SelfTeacherConfig(), metrics)

    width = max(lengths)
    padded = torch.zeros(8, width)
    mask = torch.zeros(8, width)
    for i, d in enumerate(divergence):
        padded[i, : lengths[i]] = d
        mask[i, : lengths[i]] = 1
    expected, _ = solve_none_pseudo_advantage(padded, mask, ["a"] * 4 + ["b"] * 2 + ["c"] * 2, route, reference.bool())
    for i, key in enumerate(keys):
        got = fake.rows[("train", key)]["advantages"]
        if i < 4:
            torch.testing.assert_close(got, torch.full((lengths[i],), expected[i].item()))
        else:
            torch.testing.assert_close(got, grpo[i])  # other groups keep verl's GRPO advantage
    assert metrics["self_teacher/frac_solve_none"] == 0.5


class FakeWorkerGroup:
    """The actor worker group as the trainer sees it: reads the fields a batch meta lists from the
    (fake) TransferQueue, runs SelfTeacherWorker.compute_log_prob, writes its output back (as verl's
    tqbridge does) and returns the updated meta."""

    def __init__(self, tq, worker):
        self.tq, self.worker, self.seen_fields = tq, worker, None

    def compute_log_prob(self, meta):
        from tensordict import TensorDict

        from verl.utils import tensordict_utils as tu

        assert meta.fields is not None and "teacher_input_ids" in meta.fields, meta.fields
        self.seen_fields = list(meta.fields)
        self.options = dict(meta.extra_info)
        td = self.tq.kv_batch_get(meta.keys, meta.partition_id, [f for f in meta.fields if f != "raw_prompt"])
        tu.assign_non_tensor(td, use_remove_padding=False, pad_token_id=0, **meta.extra_info)
        out = self.worker.compute_log_prob(td)
        out = TensorDict({k: out[k] for k in out.keys() if k in ("log_probs", "self_teacher_divergence")},
                         batch_size=[len(meta.keys)])
        return self.tq.kv_batch_put(meta.keys, meta.partition_id, out)


def test_teacher_step_and_advantage_step_through_transfer_queue(monkeypatch, tmp_path):
    """The trainer's teacher step on a mocked TransferQueue and worker group with a real tokenizer and a
    tiny random Qwen2: contexts from TQ fields, the teacher pass on the worker, SC-GRPO fields written
    back and listed in the batch meta, then the solve-none advantage step."""
    from omegaconf import OmegaConf
    from tensordict import TensorDict
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    from scgrpo_verl.engine_path import sc_grpo_divergence
    from scgrpo_verl.trainer import SelfTeacherTrainer
    from tokenizer_utils import build_byte_level_tokenizer
    from test_worker import actor_config, make_worker
    from verl.trainer.ppo.v1 import trainer_base

    fake = FakeTransferQueue()
    monkeypatch.setattr(trainer_base, "tq", fake)
    tokenizer = build_byte_level_tokenizer(tmp_path)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                         max_position_embeddings=512, tie_word_embeddings=False)).eval()
    questions = {"a": "What is 2 + 3?", "b": "What is 7 * 6?"}
    answers = [("a", "2 + 3 = 5. #### 5", 1.0), ("a", "It is 5. #### 5", 1.0), ("a", "#### 6", 0.0),
               ("b", "#### 40", 0.0), ("b", "7 * 6 = 41 #### 41", 0.0), ("b", "#### 13", 0.0)]
    keys = [f"k{i}" for i in range(len(answers))]
    prompts, responses, scores = [], [], []
    for uid, text, score in answers:
        messages = [{"role": "user", "content": questions[uid]}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
        prompts.append(prompt)
        responses.append(tokenizer.encode(text, add_special_tokens=False))
        scores.append(score)
    nested = lambda xs: torch.nested.as_nested_tensor(list(xs), layout=torch.jagged)  # noqa: E731
    rm_scores = [torch.zeros(len(r)) for r in responses]
    for row, score in zip(rm_scores, scores):
        row[-1] = score
    meta = fake.kv_batch_put(keys, "train", TensorDict({
        "input_ids": nested(torch.tensor(p + r) for p, r in zip(prompts, responses)),
        "position_ids": nested(torch.arange(len(p) + len(r)) for p, r in zip(prompts, responses)),
        "responses": nested(torch.tensor(r) for r in responses),
        "response_mask": nested(torch.ones(len(r)) for r in responses),
        "rm_scores": nested(rm_scores),
    }, batch_size=[len(keys)]))
    for key, (uid, _, _) in zip(keys, answers):
        fake.rows[("train", key)].update(uid=uid, raw_prompt=[{"role": "user", "content": questions[uid]}])
    batch = KVBatchMeta(keys=keys, tags=[{}] * len(keys), partition_id="train", fields=meta.fields + ["uid", "raw_prompt"])

    trainer = SelfTeacherTrainer.__new__(SelfTeacherTrainer)  # no Ray: only what the teacher step reads
    trainer.self_teacher = SelfTeacherConfig.from_mapping({"enable": True})
    trainer.loss_mode, trainer.method, trainer._method_state = "sc_grpo", get_method("sc_grpo"), {}
    trainer.tokenizer = tokenizer
    trainer.teacher_generator = torch.Generator().manual_seed(0)
    trainer.config = OmegaConf.create({"actor_rollout_ref": {"rollout": {"temperature": 1.0}}, "algorithm": {}})
    worker = make_worker(model)
    worker.set_loss_fn(functools.partial(self_teacher_loss, config=actor_config("sc_grpo")))
    trainer.actor_rollout_wg = FakeWorkerGroup(fake, worker)

    def verl_old_log_prob(self, batch, metrics):  # verl's pass as the trainer calls it (its bookkeeping aside)
        batch.extra_info.update(calculate_entropy=False, compute_loss=False, temperature=1.0)
        self.actor_rollout_wg.compute_log_prob(batch)
        return batch

    monkeypatch.setattr(PPOTrainerSync, "_compute_old_log_prob", verl_old_log_prob)
    metrics = {}
    batch = trainer._compute_old_log_prob(batch, metrics)
    assert trainer.actor_rollout_wg.options["self_teacher_pass"] is True  # verl's pass also ran the teacher
    assert "self_teacher_pass" not in batch.extra_info  # and only that pass (not the ref pass after it)

    rows = [fake.rows[("train", key)] for key in keys]
    assert [int(r["sc_route"]) for r in rows] == [ROUTE_WEIGHTED] * 3 + [ROUTE_SOLVE_NONE] * 3
    assert sum(int(r["sc_reference"]) for r in rows[3:]) == 1 and not any(int(r["sc_reference"]) for r in rows[:3])
    mask = [float(r["self_teacher_mask"]) for r in rows]
    reference = next(i for i in (3, 4, 5) if int(rows[i]["sc_reference"]))
    assert mask == [1.0, 1.0, 1.0] + [0.0 if i == reference else 1.0 for i in (3, 4, 5)]
    for i, row in enumerate(rows):
        teacher_ids = row["teacher_input_ids"].tolist()
        assert teacher_ids[len(teacher_ids) - len(responses[i]):] == responses[i]  # response reused verbatim
        if mask[i]:
            assert len(teacher_ids) > len(prompts[i]) + len(responses[i])  # the demonstration is in the prompt
            teacher_prompt = teacher_ids[: len(teacher_ids) - len(responses[i])]
            expected, _ = sc_grpo_divergence(model, [prompts[i]], [teacher_prompt], [responses[i]])
            torch.testing.assert_close(row["sc_divergence"], expected[0])
            assert (expected[0] > 0).all()
        else:
            assert torch.equal(row["sc_divergence"], torch.zeros(len(responses[i])))
    for name in ("teacher_input_ids", "self_teacher_mask", "sc_divergence", "sc_route", "sc_reference"):
        assert name in batch.fields  # listed for the actor update, which reads only listed fields
    assert metrics["self_teacher/frac_groups_with_success"] == 0.5
    assert metrics["self_teacher/frac_rollouts_with_teacher"] == 5 / 6
    assert np.isfinite(metrics["self_teacher/divergence_p75"])

    # advantage step: verl's GRPO gives the all-wrong group b zero advantages; SC-GRPO replaces them
    fake.kv_batch_put(keys, "train", TensorDict({"advantages": nested(torch.zeros(len(r)) for r in responses)},
                                                batch_size=[len(keys)]))
    batch = apply_method_advantages(batch, trainer.method, trainer.self_teacher, metrics)
    advantages = [fake.rows[("train", key)]["advantages"] for key in keys]
    assert all(torch.equal(a, torch.zeros_like(a)) for a in advantages[:3])
    assert any(a.abs().sum() > 0 for a in advantages[3:])
    assert float(advantages[reference].abs().sum()) == 0.0  # the reference rollout itself gets advantage 0
    assert "advantages" in batch.fields


@pytest.mark.parametrize("loss_mode, distillation, expected", [
    ("sdpg", "topk", True), ("sdpo", "topk", True), ("sdpo", "full", True), ("sdpo", "sampled_token", True),
    ("sc_grpo", "topk", False),
])
def test_update_options_reach_the_workers_after_verls_own(loss_mode, distillation, expected):
    """verl's _update_actor writes its own options into the batch meta; the plugin's are added at the call, and
    its flag is untouched (the teacher runs in the workers' forward step, not as verl's logits processor).
    ``expected``: whether the method runs its teacher in the update."""
    from types import SimpleNamespace

    from scgrpo_verl.trainer import SelfTeacherTrainer

    calls = []

    class WorkerGroup:
        def update_actor(self, batch):
            calls.append(dict(batch.extra_info))
            return "metrics"

    trainer = SelfTeacherTrainer.__new__(SelfTeacherTrainer)
    alpha = 1.0 if distillation == "sampled_token" else 0.5
    trainer.self_teacher = SelfTeacherConfig.from_mapping({"enable": True, "sdpo": {"distillation": distillation, "alpha": alpha}})
    trainer.loss_mode, trainer.global_steps = loss_mode, 7
    trainer.method, trainer._method_state = get_method(loss_mode), {}
    trainer.actor_loss_config = SimpleNamespace(policy_loss=SimpleNamespace(loss_mode=loss_mode))
    assert trainer._teacher_in_update() is expected
    trainer.actor_rollout_wg = WorkerGroup()
    trainer._install_update_options()
    batch = KVBatchMeta(keys=["a"], tags=[{}], extra_info={"distillation_use_topk": False, "temperature": 1.0})
    assert trainer.actor_rollout_wg.update_actor(batch) == "metrics"
    assert calls == [{"distillation_use_topk": False, "temperature": 1.0, "global_steps": 7}]


def test_disabled_self_teacher_leaves_every_step_to_verl(monkeypatch):
    """self_teacher.enable=false: the old log-prob, advantage and update steps are verl's, with no plugin fields."""
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    from scgrpo_verl.trainer import SelfTeacherTrainer

    seen = []
    for name in ("_compute_old_log_prob", "_compute_advantage", "_update_actor"):
        monkeypatch.setattr(PPOTrainerSync, name, lambda self, batch, metrics, name=name: seen.append(name) or batch)

    class NoCalls:
        def __getattr__(self, name):
            raise AssertionError(f"the disabled self-teacher called the worker group's {name}")

    trainer = SelfTeacherTrainer.__new__(SelfTeacherTrainer)
    trainer.self_teacher = SelfTeacherConfig()  # enable: false
    trainer.loss_mode, trainer.method = "vanilla", None
    trainer.actor_rollout_wg = NoCalls()
    batch = KVBatchMeta(keys=["a"], tags=[{}], extra_info={"temperature": 1.0})
    metrics = {}
    for step in (trainer._compute_old_log_prob, trainer._compute_advantage, trainer._update_actor):
        assert step(batch, metrics) is batch
    assert seen == ["_compute_old_log_prob", "_compute_advantage", "_update_actor"]
    assert metrics == {} and batch.extra_info == {"temperature": 1.0}


def test_rollout_indices_from_verl_keys():
    """verl's TransferQueue keys are {uid}_{session_id}_{output} (uids may hold underscores); the teacher draws
    follow (uid, index), so they are the same whatever order verl puts the batch in."""
    from scgrpo_verl.step import rollout_indices

    assert rollout_indices(["3f_a_2_0", "3f_a_0_0", "b_1_1"]) == [(2, 0), (0, 0), (1, 1)]
    assert rollout_indices(["3f_a_2_0", "k0"]) == [None, None]  # not verl's format: batch order for all


def test_canonical_keys_follow_content_not_uids_or_sessions():
    """Two runs with other uids and another session assignment give the same sort order of groups and rollouts."""
    from scgrpo_verl.step import canonical_keys

    prompts = {"a": [5, 6, 7], "b": [9, 9]}
    rows = [("a", [1, 2]), ("a", [3]), ("b", [4, 4, 4]), ("b", [2])]

    def run(uid_of, order, sessions):
        picked = [rows[i] for i in order]
        uids = [uid_of[g] for g, _ in picked]
        input_ids = [torch.tensor(prompts[g] + r) for g, r in picked]
        keys = [f"{uid_of[g]}_{s}_0" for (g, _), s in zip(picked, sessions)]
        groups, indices = canonical_keys(uids, input_ids, [r for _, r in picked], keys)
        ranked = sorted(range(len(picked)), key=lambda i: (groups[i][0], indices[i][0]))
        return [rows.index(picked[i]) for i in ranked]

    first = run({"a": "u1", "b": "u2"}, [0, 1, 2, 3], [0, 1, 0, 1])
    second = run({"a": "zz", "b": "aa"}, [3, 1, 2, 0], [0, 0, 1, 1])
    assert first == second


def test_teacher_input_tensor_is_prompt_plus_own_response_and_placeholders():
    from scgrpo_verl.teacher.engine_forward import jagged
    from scgrpo_verl.step import teacher_input_tensor

    g = torch.Generator().manual_seed(0)
    responses = [torch.randint(100, (n,), generator=g) for n in (5, 0, 3, 4)]
    students = [torch.randint(100, (n,), generator=g) for n in (7, 2, 6, 9)]
    prompts = [[1, 2, 3], [4], None, list(range(50, 80))]
    got = teacher_input_tensor(prompts, jagged(responses), jagged(students))
    expected = [
        (prompt + response.tolist()) if prompt is not None else student.tolist()  # the builder's own list form
        for prompt, response, student in zip(prompts, responses, students)
    ]
    assert got.is_nested and got.dtype == torch.long
    assert [row.tolist() for row in got.unbind()] == expected
    assert torch.equal(got.offsets(), torch.nested.as_nested_tensor(
        [torch.tensor(e, dtype=torch.long) for e in expected], layout=torch.jagged).offsets())
    with pytest.raises(ValueError, match="3 teacher prompts for 4 responses"):
        teacher_input_tensor(prompts[:3], jagged(responses), jagged(students))
