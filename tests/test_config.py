"""Composition of every shipped config, verl's own validation, defaults as one source of truth,
and clear errors for invalid plugin options."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from scgrpo_verl.compose import METHOD_CONFIGS, compose_config, validate
from scgrpo_verl.settings import SelfTeacherConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "scgrpo_verl" / "configs"


def test_yaml_defaults_equal_dataclass_defaults():
    shipped = yaml.safe_load((CONFIG_DIR / "self_teacher_defaults.yaml").read_text())["self_teacher"]
    assert shipped == dataclasses.asdict(SelfTeacherConfig())


def test_defaults_are_the_papers():
    """Spot values from ALGORITHMS.md."""
    d = SelfTeacherConfig()
    assert (d.sc_grpo.c_min, d.sc_grpo.quantile, d.sc_grpo.solve_none_alpha, d.sc_grpo.renormalize) == (1e-4, 0.75, 0.1, False)
    assert (d.sdpo.topk, d.sdpo.alpha, d.sdpo.is_clip, d.sdpo.add_tail) == (100, 0.5, 2.0, True)
    assert (d.sdpg.beta_base, d.sdpg.warmup_steps, d.sdpg.decay_steps, d.sdpg.total_steps, d.sdpg.opd_clamp) == (
        1e-3, 50, 350, 400, 20.0)
    assert (d.teacher.ema_rate, d.teacher.trust_region_mix, d.teacher.max_reprompt_len) == (0.05, 0.05, 10240)


@pytest.mark.parametrize("name", METHOD_CONFIGS)
def test_every_config_composes_and_passes_verl_validation(name):
    config = compose_config(name)
    actor = validate(config)
    expected = {"grpo": ("grpo", "vanilla"), "dapo": ("grpo", "vanilla"), "sc_grpo": ("sc_grpo", "sc_grpo"),
                "sdpo": ("grpo", "sdpo"), "sdpg": ("grpo", "sdpg"), "opsd": ("grpo", "opsd")}[name]
    assert (config.algorithm.adv_estimator, actor.policy_loss.loss_mode) == expected
    if name in ("sc_grpo", "sdpo", "sdpg", "opsd"):
        assert actor.policy_loss.self_teacher.enable
        # the estimator sees the same section through the algorithm interpolation
        assert SelfTeacherConfig.from_mapping(config.algorithm.self_teacher) == actor.policy_loss.self_teacher


def test_paper_setups_in_method_configs():
    sdpg = compose_config("sdpg")
    assert sdpg.actor_rollout_ref.actor.clip_ratio_high == 0.28 and sdpg.actor_rollout_ref.actor.clip_ratio_c == 10.0
    assert sdpg.actor_rollout_ref.actor.kl_loss_coef == 1e-3 and sdpg.actor_rollout_ref.actor.optim.weight_decay == 0.1
    sdpo = compose_config("sdpo")
    assert sdpo.self_teacher.teacher.weights == "ema" and sdpo.actor_rollout_ref.actor.optim.lr == 1e-5
    sc = compose_config("sc_grpo")
    assert sc.actor_rollout_ref.rollout.n == 8 and sc.data.train_batch_size == 8 and sc.data.max_response_length == 12288


@pytest.mark.parametrize("name,override,key", [
    ("sdpo", "self_teacher.sdpo.alpha=1.5", "self_teacher.sdpo.alpha"),
    ("sc_grpo", "self_teacher.sc_grpo.c_min=-1", "self_teacher.sc_grpo.c_min"),
    ("sdpo", "+self_teacher.sdpo.alpah=1", "self_teacher.sdpo.alpah"),
    ("sdpo", "self_teacher.sdpo.distillation=sampled_token", "self_teacher.sdpo.alpha"),
    ("sdpg", "self_teacher.sdpg.ref_kl=k9", "self_teacher.sdpg.ref_kl"),
    ("sc_grpo", "algorithm.adv_estimator=no_such_estimator", "algorithm.adv_estimator"),
    ("sc_grpo", "algorithm.adv_estimator=grpo", "algorithm.adv_estimator"),
    ("sdpo", "self_teacher.enable=false", "self_teacher.enable"),
    ("sdpo", "actor_rollout_ref.actor.policy_loss.loss_mode=nope", "policy_loss.loss_mode"),
    ("opsd", "self_teacher.teacher.weights=ema", "self_teacher.teacher.weights: OPSD's teacher is frozen or live"),
    ("opsd", "self_teacher.opsd.divergence=tv", "self_teacher.opsd.divergence"),
    ("opsd", "self_teacher.opsd.template='{prompt} only'", "self_teacher.opsd.template: missing required placeholder"),
    ("opsd", "algorithm.adv_estimator=sc_grpo", "algorithm.adv_estimator"),
])
def test_invalid_options_fail_at_start_up_naming_the_key(name, override, key):
    with pytest.raises(Exception) as error:
        validate(compose_config(name, [override]))
    assert key in str(error.value)


def test_unknown_key_without_plus_fails_at_composition():
    with pytest.raises(Exception, match="alpah"):
        compose_config("sdpo", ["self_teacher.sdpo.alpah=1"])


def test_main_ppo_prints_the_composed_config():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "verl.trainer.main_ppo", "--config-path=pkg://scgrpo_verl.configs",
         "--config-name=sc_grpo", "--cfg", "job"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    composed = yaml.safe_load(result.stdout)
    assert composed["algorithm"]["adv_estimator"] == "sc_grpo"
    assert composed["self_teacher"]["sc_grpo"]["c_min"] == 1e-4


@pytest.mark.parametrize("override,message", [
    ("self_teacher.sc_grpo.c_min=abc", "self_teacher.sc_grpo.c_min: must be a number, got 'abc' (str)"),
    ("self_teacher.sdpo.topk=2.5", "self_teacher.sdpo.topk: must be an integer, got 2.5 (float)"),
    ("self_teacher.sdpo.is_clip=off", "self_teacher.sdpo.is_clip: must be a number or null, got 'off' (str)"),
    ("self_teacher.teacher.exclude_self=1", "self_teacher.teacher.exclude_self: must be true or false, got 1 (int)"),
    ("self_teacher.sdpg.warmup_steps=null", "self_teacher.sdpg.warmup_steps: must be an integer, got null"),
    ("self_teacher.enable=yes", "self_teacher.enable: must be true or false, got 'yes' (str)"),
])
def test_option_types_are_checked_in_post_init_naming_the_key(override, message):
    from scgrpo_verl.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        validate(compose_config("sdpo", [override]))
    assert str(error.value) == message


def test_ints_pass_for_float_options_and_null_for_optional_ones():
    settings = SelfTeacherConfig.from_mapping({"sc_grpo": {"c_min": 1}, "sdpo": {"is_clip": None}})
    assert settings.sc_grpo.c_min == 1 and settings.sdpo.is_clip is None
