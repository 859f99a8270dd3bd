"""The self-teacher method registry: every shipped method is registered with verl, a method added in one class runs
through the trainer step, the contexts and the loss without touching another file, and no module outside
``scgrpo_verl/methods/`` branches on a method's name."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import torch

from conftest import make_micro_batch, teacher_loss
from scgrpo_verl.errors import ConfigError
from scgrpo_verl.methods import (
    METHOD_REGISTRY,
    UPDATE_PASS,
    SelfTeacherMethod,
    get_method,
    method_estimators,
    method_names,
    register_method,
)
from scgrpo_verl.settings import SelfTeacherConfig

PACKAGE = Path(__file__).resolve().parents[2] / "scgrpo_verl"


def test_shipped_methods_are_registered_with_verl():
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, POLICY_LOSS_REGISTRY

    import scgrpo_verl.estimator  # noqa: F401
    import scgrpo_verl.losses  # noqa: F401

    assert set(method_names()) == {"sc_grpo", "sdpo", "sdpg", "opsd"}
    assert all(name in POLICY_LOSS_REGISTRY for name in method_names())
    assert method_estimators() == ("sc_grpo",) and "sc_grpo" in ADV_ESTIMATOR_REGISTRY
    assert {m.name: m.options for m in METHOD_REGISTRY.values()} == {
        "sc_grpo": "sc_grpo", "sdpo": "sdpo", "sdpg": "sdpg", "opsd": "opsd"}


def test_unknown_method_is_one_line_naming_the_key():
    with pytest.raises(ConfigError) as error:
        get_method("sdpx")
    assert str(error.value) == ("actor_rollout_ref.actor.policy_loss.loss_mode: 'sdpx' is not a self-teacher method; "
                                "registered: ['opsd', 'sc_grpo', 'sdpg', 'sdpo']")


def test_a_name_cannot_be_registered_twice_by_another_class():
    with pytest.raises(ValueError, match="already registered"):
        register_method("sdpo")(type("Other", (SelfTeacherMethod,), {}))


@pytest.mark.parametrize("name,teacher_pass", [("sc_grpo", "log_prob"), ("sdpo", "update"), ("sdpg", "update"),
                                               ("opsd", "update")])
def test_which_pass_runs_each_teacher(name, teacher_pass):
    assert get_method(name).teacher_pass(SelfTeacherConfig()) == teacher_pass
    # SDPO with lambda = 1 has no distillation term: its teacher runs nowhere
    assert get_method("sdpo").teacher_pass(SelfTeacherConfig.from_mapping({"sdpo": {"pg_coef": 1.0}})) is None


@pytest.mark.parametrize("name,estimator,ok", [
    ("sc_grpo", "sc_grpo", True), ("sc_grpo", "grpo", False), ("sdpo", "sc_grpo", False), ("opsd", "grpo", True),
    ("vanilla", "sc_grpo", False), ("vanilla", "grpo", True), ("opsd", None, True),
])
def test_estimator_pairing_comes_from_the_methods(name, estimator, ok):
    from scgrpo_verl.config import check_method_pairing

    if ok:
        check_method_pairing(name, estimator)
    else:
        with pytest.raises(ValueError, match="^algorithm.adv_estimator and actor_rollout_ref"):
            check_method_pairing(name, estimator)


@pytest.fixture
def toy_method():
    """A fifth method defined in one class here: the teacher (conditioned on the row's privileged text) runs in the
    update and the loss is pg_loss + 3 * sum_t c_t KL(p || q) over the rows with a teacher."""
    from scgrpo_verl.teacher.plans import privileged_plans
    from scgrpo_verl.teacher.templates import sdpg_teacher_messages

    def hint(prompt, pieces, templates):
        return sdpg_teacher_messages(prompt, pieces[0], templates)

    @register_method("toy_reverse_kl")
    class Toy(SelfTeacherMethod):
        loss_metric = "toy_loss"

        def context_fields(self, settings):
            return ("reward_model",)

        def privileged_text(self, settings, row):
            return str(row["reward_model"]["ground_truth"])

        def plan_contexts(self, batch, settings, generator=None, routes=None, references=None):
            return privileged_plans(batch, "privileged", hint)

        def loss(self, inputs, pg_loss):
            teacher = inputs.require_teacher(self.name)
            term, _ = teacher.divergence(inputs.token_weights(inputs.response_mask) * inputs.teacher_mask,
                                         "reverse_kl")
            inputs.log_metric("self_teacher/toy_loss", term.detach())
            return pg_loss + 3.0 * term

    import scgrpo_verl.plugin

    scgrpo_verl.plugin.register()  # verl's loss registry learns the new name
    yield METHOD_REGISTRY["toy_reverse_kl"]
    del METHOD_REGISTRY["toy_reverse_kl"]


def test_a_method_in_one_class_runs_through_the_step_contexts_and_loss(toy_method, tiny_model, tok):
    """The trainer step's functions, the context builder and the actor loss pick the new method up from the
    registry: nothing else was edited."""
    from verl.utils.config import omega_conf_to_dataclass

    from conftest import HIDDEN, nested, stored_teacher, teacher_states
    from scgrpo_verl import step
    from scgrpo_verl.compose import compose_config
    from scgrpo_verl.losses import self_teacher_loss

    settings = SelfTeacherConfig.from_mapping({"enable": True})
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    from scgrpo_verl.teacher.templates import chat_prompt_ids

    prompt = chat_prompt_ids(tok, messages)
    responses = [torch.tensor(tok.encode(text, add_special_tokens=False)) for text in ("5", "six", "4 or 5")]
    rows = {"uid": ["u"] * 3, "raw_prompt": [messages] * 3, "responses": responses,
            "input_ids": [torch.cat([torch.tensor(prompt), r]) for r in responses],
            "rm_scores": [torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.0])],
            "reward_model": [{"ground_truth": "5"}, {"ground_truth": "5"}, {"ground_truth": ""}]}
    assert step.context_fields(toy_method, settings)[-1] == "reward_model"
    rollouts = step.rollouts_from_rows(toy_method, settings, rows, ["u_0_0", "u_1_0", "u_2_0"])
    contexts = step.build_contexts(toy_method, settings, rollouts, tok, torch.Generator().manual_seed(0))
    assert contexts.mask.tolist() == [1.0, 1.0, 0.0] and contexts.method == "toy_reverse_kl"
    assert "Hint (the reference answer to this question):\n5" in contexts.teacher_messages[0][-1]["content"]
    staged = step.stage_teacher_inputs(toy_method, contexts, responses, rows["input_ids"])
    assert set(staged) == {"teacher_input_ids", "self_teacher_mask"}
    assert step.teacher_pass(toy_method, settings) == UPDATE_PASS
    assert step.update_options(toy_method, settings, 4, None) == {"global_steps": 4}

    config = omega_conf_to_dataclass(compose_config(
        "sdpg", ["actor_rollout_ref.actor.policy_loss.loss_mode=toy_reverse_kl",
                 "actor_rollout_ref.actor.use_kl_loss=false"]).actor_rollout_ref.actor)
    lengths = [4, 6, 3, 5]
    hidden, _ = teacher_states(lengths, seed=3)
    assert hidden[0].shape[-1] == HIDDEN
    td = make_micro_batch([3, 2, 4, 3], lengths, extra={"teacher_hidden": nested(hidden),
                                                        "self_teacher_mask": torch.tensor([1.0, 1.0, 0.0, 1.0])})
    loss, metrics = teacher_loss(tiny_model, td, functools.partial(self_teacher_loss, config=config), stored_teacher)
    term = metrics["self_teacher/toy_loss"].aggregate()
    assert float(term) > 0
    assert float(loss) == pytest.approx(float(metrics["actor/pg_loss"].aggregate()) + 3.0 * float(term), rel=1e-5)


def _method_name_comparisons(text: str, names) -> list[str]:
    """Lines comparing something to a method name (``== "sdpo"``, ``!= 'sc_grpo'``, ``in ("sdpo", ...)``) or
    keying a dict by method names."""
    alternatives = "|".join(map(re.escape, names))
    pattern = re.compile(rf"""(==|!=)\s*["']({alternatives})["']|["']({alternatives})["']\s*(==|!=)|"""
                         rf"""\bin\s*[(\[{{]\s*["']({alternatives})["']|[{{,]\s*["']({alternatives})["']\s*:""")
    return [line.strip() for line in text.splitlines() if pattern.search(line)]


#: data keyed by config names, not dispatch on a method (and why)
NOT_DISPATCH = {
    "cpu_backend/learning.py": ['TASK_OVERRIDES = {"sdpg": ("self_teacher.sdpg.warmup_steps=0", '
                                '"self_teacher.sdpg.decay_steps=0")}'],  # the learning task's per-config overrides
}


def test_no_method_dispatch_outside_the_methods_package():
    found = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("methods/"):
            continue
        text = path.read_text(encoding="utf-8")
        lines = [line.strip() for line in text.splitlines() if re.search(r"\bloss_mode\s*(==|!=)", line)]
        lines += _method_name_comparisons(text, method_names())
        if lines:
            found[relative] = lines
    assert found == NOT_DISPATCH


def test_the_dispatch_finder_finds_dispatch():
    """The finder above is not blind: it sees each form of dispatch it looks for."""
    names = ("sc_grpo", "sdpo")
    assert _method_name_comparisons('if mode == "sdpo":', names)
    assert _method_name_comparisons("if 'sc_grpo' != loss_mode:", names)
    assert _method_name_comparisons('if name in ("sc_grpo", "x"):', names)
    assert _method_name_comparisons('STAGE = {"sdpo": "update_actor"}', names)
    assert not _method_name_comparisons('get_method("sdpo")', names)
