"""scgrpo_verl.compose: the config names offered (against the YAML files read independently), the nearest-name
suggestion (hand-computed difflib ratios), and the one-line errors of composition; verl's success banner hidden."""

import difflib
import os
from pathlib import Path

import pytest
import yaml

from scgrpo_verl.compose import CONFIG_DIR, METHOD_CONFIGS, available_configs, compose_config, nearest, validate
from scgrpo_verl.errors import ConfigError


def test_available_configs_are_the_yaml_files_with_a_defaults_list():
    """Every YAML whose top level has a ``defaults`` key (parsed, not grepped), except methods/*, recipe fragments
    (recipes/_*) and self_teacher_defaults."""
    expected = set()
    for folder, _, files in os.walk(CONFIG_DIR):
        for file in files:
            path = Path(folder) / file
            name = path.relative_to(CONFIG_DIR).with_suffix("").as_posix()
            if path.suffix != ".yaml" or name.startswith("methods/") or file.startswith("_"):
                continue
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
            if isinstance(document, dict) and "defaults" in document and name != "self_teacher_defaults":
                expected.add(name)
    names = available_configs()
    assert len(names) == len(set(names)) and set(names) == expected
    assert set(METHOD_CONFIGS) <= set(names) and "recipes/sdpg_math_urkl" in names
    for fragment in ("setup_math", "gpu_launch", "self_teacher_defaults", "methods/sdpo", "recipes/_sdpo_setup"):
        assert fragment not in names


def test_nearest_hand_computed():
    assert nearest("sc-grpo", METHOD_CONFIGS) == "sc_grpo"  # ratio 2 * 6 / 14
    assert nearest("beta_bas", ["beta_base", "warmup_steps"]) == "beta_base"
    assert nearest("xyz", METHOD_CONFIGS) is None  # nothing reaches a ratio of 0.6
    assert nearest("12", [12, 100]) == "12"  # choices are compared as strings
    # a tie: "sdgp" matches 3 of 4 characters of both (ratio 2 * 3 / 8 = 0.75); the transposition wins, where
    # difflib alone would answer "sdpo"
    assert difflib.SequenceMatcher(None, "sdgp", "sdpo").ratio() == difflib.SequenceMatcher(None, "sdgp", "sdpg").ratio() == 0.75
    assert difflib.get_close_matches("sdgp", ["sdpo", "sdpg"])[0] == "sdpo"
    assert nearest("sdgp", ["sdpo", "sdpg"]) == "sdpg"


def test_unknown_config_name_lists_the_valid_ones():
    valid = ", ".join(available_configs())
    with pytest.raises(ConfigError) as error:
        compose_config("sc-grpo")
    assert str(error.value) == f"--config-name 'sc-grpo': no such config; did you mean sc_grpo? valid names: {valid}"
    with pytest.raises(ConfigError) as error:
        compose_config("zzz")
    assert str(error.value) == f"--config-name 'zzz': no such config; valid names: {valid}"


@pytest.mark.parametrize("override, typo, expected", [
    ("self_teachr.sdpo.alpha=1", "self_teachr", "(did you mean self_teacher?) (config 'sdpo')"),  # at the root
    ("trainer.total_epoch=1", "total_epoch", "(did you mean trainer.total_epochs?) (config 'sdpo')"),
    ("self_teacher.sdpo.alpah=1", "alpah", "(did you mean self_teacher.sdpo.alpha?) (config 'sdpo')"),
    ("trainer.qqqqqqqq=1", "qqqqqqqq", "(config 'sdpo')"),  # no key near it: no suggestion
])
def test_key_typos_name_the_nearest_key_in_one_line(override, typo, expected):
    with pytest.raises(ConfigError) as error:
        compose_config("sdpo", [override])
    message = str(error.value)
    assert "\n" not in message and message.endswith(expected) and typo in message
    assert ("did you mean" in message) == ("did you mean" in expected)


def test_override_syntax_error_names_the_override():
    with pytest.raises(ConfigError) as error:
        compose_config("sdpo", ["self_teacher.sdpo.alpha=[1"])
    assert str(error.value).startswith("override 'self_teacher.sdpo.alpha=[1': ") and "\n" not in str(error.value)


def test_validate_hides_verls_success_banner(capsys):
    actor = validate(compose_config("sdpo"))
    assert actor.policy_loss.loss_mode == "sdpo"
    assert "All configuration checks passed" not in capsys.readouterr().out  # verl prints it on success
