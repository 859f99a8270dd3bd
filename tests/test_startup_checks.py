"""Start-up checks (``scgrpo_verl.startup_checks``): each names its key, before any worker starts."""

import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scgrpo_verl.compose import compose_config
from scgrpo_verl.startup_checks import (ATTENTION_KEY, MODEL_KEY, StartupCheckError, check_attention,
                                        check_data_files, check_data_sources, check_gpus, check_model_path,
                                        check_rollout_name, find_problems, read_data_sources, run_startup_checks,
                                        verl_default_can_grade)

PLUGIN_REWARD = ["reward.custom_reward_function.path=pkg://scgrpo_verl.rewards",
                 "reward.custom_reward_function.name=compute_score"]


def write_parquet(path, sources, extra_column=True):
    columns = {"data_source": sources}
    if extra_column:
        columns["prompt"] = ["x" * 50] * len(sources)
    pq.write_table(pa.table(columns), path)
    return str(path)


@pytest.fixture
def data(tmp_path):
    train = write_parquet(tmp_path / "train.parquet", ["dapo_math"] * 3 + ["gsm8k"])
    val = write_parquet(tmp_path / "val.parquet", ["aime2024"] * 2)
    return train, val


def compose(name="sc_grpo", *overrides):
    return compose_config(name, list(overrides))


def keys(problems):
    return [p.key for p in problems]


def test_missing_data_file_is_named_with_its_key(data, tmp_path):
    train, val = data
    config = compose("sc_grpo", f"data.train_files={tmp_path / 'nope.parquet'}", f"data.val_files={val}")
    problems = check_data_files(config)
    assert keys(problems) == ["data.train_files"]
    assert str(tmp_path / "nope.parquet") in str(problems[0]) and "does not exist" in str(problems[0])
    config = compose("sc_grpo", f"data.train_files=[{train},{tmp_path}]", f"data.val_files={tmp_path / 'v.csv'}")
    messages = [str(p) for p in check_data_files(config)]
    assert any("is a folder" in m for m in messages) and any(".parquet" in m and "v.csv" in m for m in messages)


def test_existing_files_pass(data):
    train, val = data
    assert check_data_files(compose("sc_grpo", f"data.train_files={train}", f"data.val_files={val}")) == []


def test_data_sources_the_plugin_reward_cannot_grade(tmp_path, data):
    train, val = data
    bad = write_parquet(tmp_path / "bad.parquet", ["dapo_math", "my_private_set", "my_private_set"])
    config = compose("sc_grpo", f"data.train_files={bad}", f"data.val_files={val}", *PLUGIN_REWARD)
    problems = check_data_sources(config)
    assert keys(problems) == ["data.train_files"]
    assert "'my_private_set' (2 rows)" in str(problems[0]) and "dapo_math'" not in str(problems[0])
    assert check_data_sources(compose("sc_grpo", f"data.train_files={train}", f"data.val_files={val}",
                                      *PLUGIN_REWARD)) == []


def test_verl_default_reward_cannot_grade_the_plugin_sources(data):
    """With reward.custom_reward_function unset (the shipped configs set it), verl's default raises
    NotImplementedError for 'dapo_math' at the first reward. The check says so, and how to wire the plugin's reward."""
    train, val = data
    problems = check_data_sources(compose("sc_grpo", f"data.train_files={train}", f"data.val_files={val}",
                                          "reward.custom_reward_function.path=null"))
    assert keys(problems) == ["data.train_files"]
    text = str(problems[0])
    assert "'dapo_math' (3 rows)" in text and "verl's default reward function" in text
    assert "reward.custom_reward_function.path=pkg://scgrpo_verl.rewards" in text
    assert "gsm8k'" in text and "aime2024" not in text  # 'gsm8k' is the plugin's name; verl knows 'openai/gsm8k'


def test_verl_default_predicate_matches_verl():
    """Independent of the table: whatever verl's default_compute_score raises NotImplementedError for is rejected."""
    from verl.utils.reward_score import default_compute_score

    for source in ["dapo_math", "gsm8k", "sciknoweval", "my_set", "aime2024", "math_dapo", "openai/gsm8k"]:
        try:
            default_compute_score(source, "The answer is \\boxed{1}", "1")
            knows = True
        except NotImplementedError:
            knows = False
        assert verl_default_can_grade(source) == knows, source


def test_a_custom_reward_function_with_can_grade_is_asked(tmp_path, data):
    train, val = data
    module = tmp_path / "my_reward.py"
    module.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kw):\n"
                      "    return 0.0\n"
                      "def can_grade(source):\n    return source == 'gsm8k'\n")
    config = compose("sc_grpo", f"data.train_files={train}", f"data.val_files={val}",
                     f"reward.custom_reward_function.path={module}")
    problems = check_data_sources(config)
    assert len(problems) == 2 and "'dapo_math' (3 rows)" in str(problems[0]) and "aime2024" in str(problems[1])
    config = compose("sc_grpo", f"data.train_files={train}", f"data.val_files={val}",
                     f"reward.custom_reward_function.path={tmp_path / 'missing.py'}")
    assert keys(check_data_sources(config)) == ["reward.custom_reward_function"]


def test_reading_the_column_takes_seconds_on_a_large_file(tmp_path):
    n = 2_000_000
    path = write_parquet(tmp_path / "big.parquet", ["dapo_math", "gsm8k"] * (n // 2))
    start = time.monotonic()
    counts = read_data_sources(path)
    elapsed = time.monotonic() - start
    assert counts == {"dapo_math": n // 2, "gsm8k": n // 2}
    print(f"read the data_source column of {n} rows in {elapsed:.2f} s")


def test_unset_rollout_name_is_named():
    problems = check_rollout_name(compose("sc_grpo", "actor_rollout_ref.rollout.name=???"))  # shipped: vllm
    assert keys(problems) == ["actor_rollout_ref.rollout.name"] and "not set (???)" in str(problems[0])
    assert "vllm" in str(problems[0])
    assert check_rollout_name(compose("sc_grpo", "actor_rollout_ref.rollout.name=vllm")) == []
    assert "unknown rollout 'vlm'" in str(check_rollout_name(compose("sc_grpo", "actor_rollout_ref.rollout.name=vlm"))[0])


def test_a_local_model_path_must_be_a_checkpoint_folder(tmp_path):
    missing = check_model_path(compose("sc_grpo", f"{MODEL_KEY}=/models/Qwen3-4B"))
    assert [str(p) for p in missing] == [f"{MODEL_KEY}: /models/Qwen3-4B does not exist (a local checkpoint folder; "
                                         "a hub model is named org/name, e.g. Qwen/Qwen3-8B)"]
    assert check_model_path(compose("sc_grpo", f"{MODEL_KEY}=Qwen/Qwen3-4B")) == []  # a hub id: downloaded later
    assert "no config.json" in str(check_model_path(compose("sc_grpo", f"{MODEL_KEY}={tmp_path}"))[0])
    (tmp_path / "config.json").write_text("{}")
    assert check_model_path(compose("sc_grpo", f"{MODEL_KEY}={tmp_path}")) == []


def test_flash_attention_without_flash_attn_on_a_gpu_machine(monkeypatch):
    import importlib.util

    import torch

    monkeypatch.delenv("SCGRPO_VERL_CPU_BACKEND", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else object())
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    problems = check_attention(compose("sc_grpo"))  # verl's default: flash_attention_2
    assert keys(problems) == [ATTENTION_KEY] and len(str(problems[0]).splitlines()) == 1
    assert "pip install -e '.[flash-attn]'" in str(problems[0]) and f"+{ATTENTION_KEY}=sdpa" in str(problems[0])
    assert check_attention(compose("sc_grpo", f"+{ATTENTION_KEY}=sdpa")) == []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # a GPU recipe checked on a CPU machine
    assert check_attention(compose("sc_grpo")) == []


def test_gpus_asked_for_but_absent(monkeypatch):
    import torch

    monkeypatch.delenv("SCGRPO_VERL_CPU_BACKEND", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    problems = check_gpus(compose("sc_grpo", "trainer.n_gpus_per_node=8"))
    assert keys(problems) == ["trainer.n_gpus_per_node"]
    assert "8 x trainer.nnodes=1 = 8 GPU(s)" in str(problems[0]) and "has 2" in str(problems[0])
    assert check_gpus(compose("sc_grpo", "trainer.n_gpus_per_node=2")) == []
    # a run that joins an existing cluster cannot be counted from here
    assert check_gpus(compose("sc_grpo", "trainer.n_gpus_per_node=8", "+ray_kwargs.ray_init.address=auto")) == []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert "cpu-run" in str(check_gpus(compose("sc_grpo", "trainer.n_gpus_per_node=1"))[0])


def test_gpu_check_does_not_trigger_on_the_cpu_backend(monkeypatch):
    """cpu-run fakes one GPU: +ray_kwargs.ray_init.num_gpus=1 in its overrides and SCGRPO_VERL_CPU_BACKEND=1 in
    every process of the run."""
    import torch

    from scgrpo_verl.cpu_backend import ENV_FLAG

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv(ENV_FLAG, raising=False)
    assert check_gpus(compose("grpo", "trainer.n_gpus_per_node=1", "+ray_kwargs.ray_init.num_gpus=1")) == []
    monkeypatch.setenv(ENV_FLAG, "1")
    assert check_gpus(compose("grpo", "trainer.n_gpus_per_node=4")) == []


def test_all_problems_at_once_and_skips(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("SCGRPO_VERL_CPU_BACKEND", raising=False)
    config = compose("sc_grpo", f"data.train_files={tmp_path / 'a.parquet'}", "data.val_files=null",
                     "actor_rollout_ref.rollout.name=???")  # the shipped configs set vllm
    with pytest.raises(StartupCheckError) as error:
        run_startup_checks(config)
    assert keys(error.value.problems) == ["data.train_files", "actor_rollout_ref.rollout.name",
                                          "trainer.n_gpus_per_node"]
    assert len(str(error.value).splitlines()) == 3
    assert keys(find_problems(config, skip=["gpus", "rollout_name"])) == ["data.train_files"]
    monkeypatch.setenv("SCGRPO_VERL_SKIP_CHECKS", "gpus,data_files,attention")
    assert keys(find_problems(config)) == ["actor_rollout_ref.rollout.name"]
    with pytest.raises(Exception, match="unknown start-up check 'gpu'"):
        find_problems(config, skip=["gpu"])


def test_the_trainer_runs_the_checks_before_any_worker(tmp_path):
    from scgrpo_verl.trainer import SelfTeacherTrainer

    config = compose("sc_grpo", f"data.train_files={tmp_path / 'missing.parquet'}")
    with pytest.raises(StartupCheckError, match="data.train_files: file .*missing.parquet does not exist"):
        SelfTeacherTrainer(config)


@pytest.mark.timeout(300)
def test_main_ppo_driver_fails_before_ray_init(tmp_path):
    """verl's own launcher, plugin config: the driver's validate_config (wrapped by the plugin) names the missing
    file before ray.init, instead of a worker failing minutes later."""
    result = subprocess.run(
        [sys.executable, "-m", "verl.trainer.main_ppo", "--config-path=pkg://scgrpo_verl.configs",
         "--config-name=sc_grpo", f"data.train_files={tmp_path / 'missing.parquet'}",
         "actor_rollout_ref.rollout.name=vllm", "trainer.n_gpus_per_node=1"],
        capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert result.returncode != 0
    assert f"data.train_files: file {tmp_path / 'missing.parquet'} does not exist" in result.stderr
    assert "ray init kwargs" not in result.stdout  # failed before ray.init


def test_the_driver_hook_checks_plugin_configs_only(tmp_path):
    """The plugin wraps verl's validate_config (what main_ppo calls before ray.init): plugin configs get the start-up
    checks, stock verl configs (grpo / dapo: no self_teacher section) are left as verl validates them."""
    import verl.utils.config as verl_config
    from verl.trainer.ppo.utils import need_critic, need_reference_policy

    import scgrpo_verl.plugin  # noqa: F401  (installs the hook, as `import verl` does through the entry point)

    wrapped = verl_config.validate_config
    assert getattr(wrapped, "_scgrpo_startup_checks", False) and wrapped.__wrapped__ is not wrapped

    def validate(config):
        wrapped(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))

    missing = f"data.train_files={tmp_path / 'missing.parquet'}"
    validate(compose("grpo", missing))  # stock config: no plugin checks
    with pytest.raises(StartupCheckError, match="data.train_files: file .*missing.parquet does not exist"):
        validate(compose("sc_grpo", missing))


def test_opsd_train_files_must_carry_the_reference_solution(tmp_path):
    """OPSD reads extra_info[opsd.reference_key]: a train file where no row has one fails at start-up naming the
    option and which data_prep sets write it; one row is enough (the others get no teacher, counted per step)."""
    from scgrpo_verl.startup_checks import check_method_data

    answers_only = tmp_path / "dapo.parquet"
    pq.write_table(pa.table({"data_source": ["dapo_math"] * 2,
                             "extra_info": [{"index": 0, "reference_answer": "3"}, {"index": 1, "reference_answer": "4"}]}),
                   answers_only)
    worked = tmp_path / "gsm8k.parquet"
    pq.write_table(pa.table({"data_source": ["gsm8k"] * 2,
                             "extra_info": [{"index": 0, "reference_solution": "2 + 1 = 3\n#### 3"},
                                            {"index": 1, "reference_solution": ""}]}), worked)
    no_column = write_parquet(tmp_path / "bare.parquet", ["gsm8k"])
    problems = check_method_data(compose("opsd", f"data.train_files=[{answers_only},{worked},{no_column}]"))
    assert keys(problems) == ["self_teacher.opsd.reference_key"] * 2
    assert str(problems[0]) == (
        f"self_teacher.opsd.reference_key: {answers_only}: none of its 2 rows has extra_info['reference_solution'], "
        "which loss_mode 'opsd' reads (data_prep's gsm8k, math500 and aime2024 write it; dapo_math, aime2025 and "
        "amc23 keep only the final answer)")
    assert f"{no_column}: none of its 1 rows" in str(problems[1])
    renamed = compose("opsd", f"data.train_files={worked}", "self_teacher.opsd.reference_key=solution")
    assert keys(check_method_data(renamed)) == ["self_teacher.opsd.reference_key"]
    assert check_method_data(compose("opsd", f"data.train_files={worked}")) == []
    assert check_method_data(compose("sdpg", f"data.train_files={answers_only}")) == []  # SDPG reads no extra_info
