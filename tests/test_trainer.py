"""The self_teacher trainer mode: start-up validation, sync behaviour, and the advantage step
against a mocked TransferQueue."""

import numpy as np
import pytest
import torch
from transfer_queue import KVBatchMeta

from fake_tq import FakeTransferQueue
from scgrpo_verl.algos.sc_grpo import ROUTE_PLAIN, ROUTE_SOLVE_NONE, ROUTE_WEIGHTED, solve_none_pseudo_advantage
from scgrpo_verl.compose import compose_config
from scgrpo_verl.config import SelfTeacherConfig
from scgrpo_verl.trainer import TRAINER_MODE, apply_solve_none_advantages, validate_self_teacher_config


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
])
def test_bad_plugin_config_is_rejected_before_the_first_rollout(name, overrides, key):
    with pytest.raises(ValueError) as error:
        validate_self_teacher_config(compose_config(name, overrides))
    assert key in str(error.value)


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
    apply_solve_none_advantages(batch, SelfTeacherConfig(), metrics)

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
