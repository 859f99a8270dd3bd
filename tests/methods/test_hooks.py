"""Each method's hooks on their own: SC-GRPO's advantage hook after GRPO's estimator, OPSD's reference solution
and its plan, and the routes only SC-GRPO takes (the losses are in tests/test_losses.py, the registry in
test_registry.py)."""

import numpy as np
import pytest
import torch

from conftest import group, make
from scgrpo_verl.algos.sc_grpo import ROUTE_SOLVE_NONE, ROUTE_WEIGHTED, solve_none_pseudo_advantage
from scgrpo_verl.errors import ConfigError
from scgrpo_verl.methods import get_method
from scgrpo_verl.settings import SelfTeacherConfig


def _algorithm_config():
    from omegaconf import OmegaConf

    return OmegaConf.create({"norm_adv_by_std_in_grpo": True})


def test_trainer_step_replaces_only_solve_none_groups():
    """The estimator is GRPO's; the trainer step's advantage hook (the method's) then swaps in the pseudo-advantages
    of the solve-none group and leaves every other row's GRPO advantage alone."""
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, get_adv_estimator_fn

    from scgrpo_verl import step
    from scgrpo_verl.methods import get_method
    from scgrpo_verl.settings import SelfTeacherConfig

    B, T = 8, 4
    mask = torch.ones(B, T)
    rewards = torch.zeros(B, T)
    rewards[4:6, -1] = 1.0  # group "b": n_c = 2 of 4 -> weighted (advantage unchanged here)
    index = np.array(["a"] * 4 + ["b"] * 4, dtype=object)
    divergence = torch.rand(B, T, generator=torch.Generator().manual_seed(1))
    reference = torch.tensor([True] + [False] * 7)
    route = torch.tensor([ROUTE_SOLVE_NONE] * 4 + [ROUTE_WEIGHTED] * 4)
    estimated, _ = get_adv_estimator_fn("sc_grpo")(rewards, mask, index, config=_algorithm_config())
    grpo, _ = compute_grpo_outcome_advantage(rewards, mask, index)
    torch.testing.assert_close(estimated, grpo)
    fields = {"sc_divergence": divergence, "sc_route": route, "sc_reference": reference.long()}
    metrics = {}
    adv = step.adjust_advantages(get_method("sc_grpo"), SelfTeacherConfig(), estimated, mask, list(index), fields,
                                 metrics)
    torch.testing.assert_close(adv[4:], grpo[4:])
    pseudo, _ = solve_none_pseudo_advantage(divergence, mask, list(index), route, reference)
    torch.testing.assert_close(adv[:4], pseudo[:4].unsqueeze(-1).expand(4, T))
    assert adv[0].abs().sum() == 0 and adv[1:4].abs().sum() > 0
    assert metrics["self_teacher/frac_solve_none"] == 0.5
    no_solve_none = dict(fields, sc_route=torch.full((B,), ROUTE_WEIGHTED))
    assert step.adjust_advantages(get_method("sc_grpo"), SelfTeacherConfig(), estimated, mask, list(index),
                                  no_solve_none, {}) is None



def test_opsd_reads_the_reference_solution_from_extra_info():
    opsd, settings = get_method("opsd"), SelfTeacherConfig()
    assert opsd.context_fields(settings) == ("extra_info",)
    assert opsd.privileged_text(settings, {"extra_info": {"reference_solution": "2 + 2 = 4"}}) == "2 + 2 = 4"
    for row in ({"extra_info": {"reference_solution": "  "}}, {"extra_info": {}}, {"extra_info": None}, {}):
        assert opsd.privileged_text(settings, row) is None
    renamed = SelfTeacherConfig.from_mapping({"opsd": {"reference_key": "solution"}})
    assert opsd.privileged_text(renamed, {"extra_info": {"solution": "s"}}) == "s"
    assert opsd.required_extra_info(renamed)["solution"][0] == "self_teacher.opsd.reference_key"


def test_opsd_plan_puts_the_reference_after_the_question(tok):
    from scgrpo_verl.teacher.rollouts import GroupedBatch

    rollouts = [make(tok, "g", "3", 1, privileged="x = 3, so the answer is 3."), make(tok, "g", "4", 0),
                make(tok, "g", "5", 0, privileged="x = 3.")]
    settings = SelfTeacherConfig()
    planned = get_method("opsd").plan_contexts(GroupedBatch(rollouts, 1.0, True), settings)
    assert [p.kind if p else None for p in planned.plans] == ["reference", None, "reference"]
    messages = planned.plans[0].template(rollouts[0].prompt, ["x = 3, so the answer is 3."], None)
    question = rollouts[0].prompt[-1]["content"]
    assert messages[-1]["content"] == settings.opsd.template.format(prompt=question,
                                                                     reference="x = 3, so the answer is 3.")
    assert messages[:-1] == [dict(m) for m in rollouts[0].prompt[:-1]]
    with pytest.raises(ConfigError, match="self_teacher.opsd.reference_key: no row of this batch"):
        get_method("opsd").plan_contexts(GroupedBatch(group(tok, "g", [1, 0]), 1.0, True), settings)


@pytest.mark.parametrize("name", ["sdpo", "sdpg", "opsd"])
def test_only_sc_grpo_takes_routes(tok, name):
    from scgrpo_verl.teacher.rollouts import GroupedBatch

    batch = GroupedBatch(group(tok, "g", [1, 0]), 1.0, True)
    with pytest.raises(ValueError, match="SC-GRPO inputs"):
        get_method(name).plan_contexts(batch, SelfTeacherConfig(), routes=torch.zeros(2))
