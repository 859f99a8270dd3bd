"""CPU debugging backend: asset builders, activation, and one real verl main_ppo GRPO run.

The end-to-end test (``test_e2e_grpo_cpu_run``, marked ``slow``) launches ``python -m verl.trainer.main_ppo`` with the
shipped ``grpo`` config on the CPU backend for 2 steps (about 70 s and 4-5 GB on a 2-core machine) and checks the
step metrics and that the actor's weights moved. Deselect it with ``-m "not slow"``.
"""

import math
import os
import subprocess
import sys
import textwrap

import pytest

from scgrpo_verl.cpu_backend import assets as cpu_assets
from scgrpo_verl.cpu_backend import run as cpu_run_mod


# ---------------------------------------------------------------------------------------------------------------
# asset builders
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def asset_paths(tmp_path_factory):
    return cpu_assets.prepare_assets(tmp_path_factory.mktemp("cpu_assets"), n_train=16, n_val=4)


def test_tokenizer_is_byte_level_chatml(asset_paths):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(asset_paths.model)
    assert len(tok) == 256 + len(cpu_assets.SPECIAL_TOKENS)
    for special in cpu_assets.SPECIAL_TOKENS:
        ids = tok.encode(special, add_special_tokens=False)
        assert len(ids) == 1 and ids[0] >= 256, special
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    text = "Héllo 12 + 3 = ? ✓ #### 15"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte, no merges
    assert tok.decode(ids) == text
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert tok.decode(ids) == rendered


def test_tiny_model_matches_tokenizer(asset_paths):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(asset_paths.model)
    config = AutoConfig.from_pretrained(asset_paths.model)
    assert config.model_type == "qwen2" and config.num_hidden_layers == 2 and config.hidden_size == 64
    assert config.vocab_size == len(tok)
    model = AutoModelForCausalLM.from_pretrained(asset_paths.model, dtype=torch.float32)
    ids = torch.tensor([tok.encode("1 + 1 =", add_special_tokens=False)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    assert eos in model.generation_config.eos_token_id


def test_math_parquet_in_verl_format(asset_paths):
    import pandas as pd
    from transformers import AutoTokenizer

    df = pd.read_parquet(asset_paths.train_file)
    assert len(df) == 16
    assert set(df.columns) >= {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    row = df.iloc[0]
    assert row["data_source"] == "openai/gsm8k"
    assert row["prompt"][0]["role"] == "user"
    assert row["reward_model"]["style"] == "rule" and row["reward_model"]["ground_truth"].isdigit()
    assert row["extra_info"]["split"] == "train" and row["extra_info"]["index"] == 0
    # prompts fit the run's max_prompt_length (byte-level: one token per byte)
    tok = AutoTokenizer.from_pretrained(asset_paths.model)
    max_len = max(
        len(tok.apply_chat_template(list(p), add_generation_prompt=True, tokenize=False).encode()) for p in df["prompt"]
    )
    assert max_len <= 96
    # verl's default reward scores a correct answer 1
    from verl.utils.reward_score import default_compute_score

    truth = row["reward_model"]["ground_truth"]
    assert default_compute_score("openai/gsm8k", f"so #### {truth}", truth) == 1.0


def test_prepare_assets_is_reused(asset_paths):
    model_file = os.path.join(asset_paths.model, "model.safetensors")
    before = os.path.getmtime(model_file)
    again = cpu_assets.prepare_assets(asset_paths.root, n_train=16, n_val=4)
    assert again == asset_paths and os.path.getmtime(model_file) == before


def test_shaped_reward_varies_with_digits():
    from scgrpo_verl.cpu_backend import reward

    low = reward.compute_score("openai/gsm8k", "abc", "5")
    high = reward.compute_score("openai/gsm8k", "a12", "5")
    right = reward.compute_score("openai/gsm8k", "#### 5", "5")
    assert low["score"] == 0.0 and 0.0 < high["score"] < 1.0 and right["score"] > 1.0
    assert right["acc"] and right["feedback"] == ""
    assert not low["acc"] and "expected final answer is 5" in low["feedback"]


# ---------------------------------------------------------------------------------------------------------------
# the hf rollout server and adapter (in-process, no Ray)
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_server(asset_paths):
    from verl.workers.config import RolloutConfig

    from scgrpo_verl.cpu_backend.hf_rollout import HFRolloutServer

    config = RolloutConfig(name="hf", prompt_length=96, response_length=12)
    return HFRolloutServer(config=config, model_config={"path": asset_paths.model})


def _generate(server, prompt_ids, **sampling):
    import asyncio

    params = dict(temperature=1.0, top_p=1.0, top_k=-1, repetition_penalty=1.0, logprobs=True)
    params.update(sampling)
    return asyncio.run(server.generate(prompt_ids=prompt_ids, sampling_params=params, request_id="r"))


def test_hf_server_generates_token_outputs(hf_server):
    out = _generate(hf_server, [257, 84, 82, 68, 81, 198])
    assert 1 <= len(out.token_ids) <= 12 and out.stop_reason == "completed"
    assert len(out.log_probs) == len(out.token_ids) and all(lp <= 0 for lp in out.log_probs)
    greedy = [_generate(hf_server, [257, 84], temperature=0, logprobs=False).token_ids for _ in range(2)]
    assert greedy[0] == greedy[1]
    assert len(_generate(hf_server, [257, 84], max_tokens=3).token_ids) <= 3


def test_hf_server_weight_sync_changes_generation(asset_paths):
    import asyncio

    import torch
    from verl.workers.config import RolloutConfig

    from scgrpo_verl.cpu_backend.hf_rollout import HFRolloutServer, HFServerAdapter

    config = RolloutConfig(name="hf", prompt_length=96, response_length=8)
    server = HFRolloutServer(config=config, model_config={"path": asset_paths.model})
    state = {k: v.clone() for k, v in server.model.state_dict().items()}
    # an all-zero head gives all-zero logits: greedy decoding then picks token 0 at every position
    state["lm_head.weight"].zero_()

    class FakeHandle:
        def __init__(self):
            self.update_weights = self

        async def remote(self, state_dict, global_steps):
            return server.update_weights(state_dict, global_steps)

    from verl.workers.config import HFModelConfig

    adapter = HFServerAdapter(config=config, model_config=HFModelConfig(path=asset_paths.model))
    adapter.server_handle = FakeHandle()
    asyncio.run(adapter.update_weights(iter(state.items()), global_steps=7))
    assert server.weight_version == 1 and server.global_steps == 7
    out = _generate(server, [257, 84, 82], temperature=0, logprobs=False)
    assert out.token_ids == [0] * 8 and out.extra_fields["global_steps"] == 7
    assert torch.equal(server.model.lm_head.weight, torch.zeros_like(server.model.lm_head.weight))


# ---------------------------------------------------------------------------------------------------------------
# launcher pieces
# ---------------------------------------------------------------------------------------------------------------
def test_cpu_overrides_carry_the_required_settings(asset_paths):
    overrides = cpu_run_mod.cpu_overrides(asset_paths, steps=2, checkpoint_dir="/x/ckpt", ray_tmp="/tmp/r")
    joined = "\n".join(overrides)
    for needed in (
        "actor_rollout_ref.rollout.name=hf",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.ref.strategy=fsdp2",
        "actor_rollout_ref.model.use_remove_padding=False",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        "+ray_kwargs.ray_init.num_gpus=1",
        "ray_kwargs.ray_init.num_cpus=16",
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
        "actor_rollout_ref.rollout.agent.num_workers=1",
        "data.dataloader_num_workers=0",
        "trainer.total_training_steps=2",
        "trainer.n_gpus_per_node=1",
        "+ray_kwargs.ray_init.runtime_env.env_vars.SCGRPO_VERL_CPU_BACKEND='1'",
        "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_ENGINE_DEVICE='cuda'",
        f"actor_rollout_ref.model.path={asset_paths.model}",
    ):
        assert needed in overrides, needed
    assert "scgrpo_verl.cpu_backend.autoload" in joined


def test_overrides_compose_with_the_shipped_grpo_config(asset_paths):
    """Every CPU override is a valid key of the composed grpo config (hydra would reject typos at launch)."""
    from hydra import compose, initialize_config_module

    overrides = cpu_run_mod.cpu_overrides(asset_paths, steps=2, checkpoint_dir="/x/ckpt", ray_tmp="/tmp/r")
    with initialize_config_module(config_module="scgrpo_verl.configs", version_base=None):
        cfg = compose(config_name="grpo", overrides=overrides)
    assert cfg.actor_rollout_ref.rollout.name == "hf"
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    assert cfg.ray_kwargs.ray_init.num_gpus == 1
    assert cfg.ray_kwargs.ray_init.runtime_env.env_vars.VERL_PLATFORM == "cpu"
    assert cfg.trainer.total_training_steps == 2


# ---------------------------------------------------------------------------------------------------------------
# activation (in a subprocess: it changes verl's process-wide platform and registries)
# ---------------------------------------------------------------------------------------------------------------
def _python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("SCGRPO_VERL_CPU_BACKEND", "VERL_PLATFORM")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-W", "ignore", "-c", textwrap.dedent(code)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_activation_registers_platform_and_rollout():
    code = """
        import verl
        import torch
        from verl.utils.device import get_device_name, get_device_id, get_nccl_backend, get_torch_device
        from verl.workers.rollout.base import get_rollout_class
        from verl.workers.rollout.replica import get_rollout_replica_class
        from verl.utils import distributed
        assert get_device_name() == "cpu" and get_device_id() == "cpu" and get_nccl_backend() == "gloo"
        assert torch.ones(2).to(get_device_id()).device.type == "cpu"
        dev = get_torch_device()
        dev.empty_cache(); dev.synchronize(); assert dev.is_available()
        free, total = dev.mem_get_info(); assert 0 < free <= total
        assert get_rollout_class("hf", "async").__name__ == "HFServerAdapter"
        assert get_rollout_replica_class("hf").__name__ == "HFReplica"
        assert getattr(distributed.initialize_global_process_group_ray, "_scgrpo_cpu", False)
        print("OK")
    """
    proc = _python(
        code, SCGRPO_VERL_CPU_BACKEND="1", VERL_USE_EXTERNAL_MODULES="scgrpo_verl.cpu_backend.autoload"
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_autoload_is_inert_without_the_flag():
    code = """
        import verl
        from verl.workers.rollout.replica import RolloutReplicaRegistry
        import scgrpo_verl.cpu_backend as cb
        assert not cb.is_enabled() and not cb._activated
        assert "hf" not in RolloutReplicaRegistry._registry
        print("OK")
    """
    proc = _python(code, VERL_USE_EXTERNAL_MODULES="scgrpo_verl.cpu_backend.autoload")
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_activate_refuses_untested_verl(monkeypatch):
    import verl

    import scgrpo_verl.cpu_backend as cb

    monkeypatch.setattr(cb, "_activated", False)
    monkeypatch.setattr(verl, "__version__", "0.0.1")
    with pytest.raises(RuntimeError, match="tested only on verl"):
        cb.activate()
    assert not cb._activated
    assert "0.9.1" in cb.TESTED_VERL_VERSIONS


# ---------------------------------------------------------------------------------------------------------------
# the real run
# ---------------------------------------------------------------------------------------------------------------
def _actor_weights(path):
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    return {k: (v.to_local() if hasattr(v, "to_local") else v).float() for k, v in state.items()}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_e2e_grpo_cpu_run(tmp_path):
    """verl 0.9.1 main_ppo, shipped grpo config, CPU backend: 2 GRPO steps, finite metrics, the actor moved."""
    steps = 2
    result = cpu_run_mod.cpu_run("grpo", steps=steps, workdir=str(tmp_path), timeout=240, save_freq=steps, echo=False)
    assert result.ok, f"rc={result.returncode} timed_out={result.timed_out}\n{result.tail(80)}"
    assert sorted(result.metrics) == list(range(1, steps + 1)), result.tail(40)
    for step, metrics in result.metrics.items():
        for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy", "critic/score/mean", "response_length/mean"):
            assert key in metrics, (step, key, sorted(metrics))
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        assert not bad, (step, bad)
        assert metrics["actor/grad_norm"] > 0
        assert 0 < metrics["response_length/mean"] <= 32
        assert metrics["training/global_step"] == step
        # rollout (hf server, fp32) and actor (FSDP2, bf16) see the same weights after each sync
        assert metrics["training/rollout_probs_diff_max"] < 0.05

    # the actor's weights changed: compare the final FSDP checkpoint to the initial safetensors
    from safetensors.torch import load_file

    ckpt = os.path.join(result.checkpoint_dir, f"global_step_{steps}", "actor", "model_world_size_1_rank_0.pt")
    assert os.path.exists(ckpt), os.listdir(result.checkpoint_dir)
    final = _actor_weights(ckpt)
    initial = load_file(os.path.join(result.assets.model, "model.safetensors"))
    assert set(final) == set(initial)
    deltas = {k: (final[k] - initial[k].float()).abs().max().item() for k in initial}
    assert all(math.isfinite(d) for d in deltas.values())
    # lr 1e-6, 2 Adam steps: every tensor moves by ~1e-6 (weight decay alone would be ~1e-10)
    assert max(deltas.values()) > 1e-7, deltas
    assert sum(d > 0 for d in deltas.values()) >= len(deltas) // 2, deltas


TEACHER_METRICS = (
    "self_teacher/frac_groups_with_success",
    "self_teacher/frac_rollouts_with_teacher",
    "self_teacher/frac_feedback_used",
    "self_teacher/frac_contexts_shortened",
    "self_teacher/mean_teacher_prompt_len",
)
METHOD_METRICS = {
    "sc_grpo": ("self_teacher/frac_solve_none", "actor/self_teacher/sc_c", "actor/self_teacher/sc_weight_mean"),
    "sdpo": ("actor/self_teacher/distill_loss",),
    "sdpg": ("actor/self_teacher/opd_loss", "actor/self_teacher/sdpg_beta"),
    "opsd": ("actor/self_teacher/distill_loss",),
}


def _check_step(metrics: dict, method: str) -> None:
    for key in TEACHER_METRICS + METHOD_METRICS[method] + ("actor/pg_loss", "actor/grad_norm"):
        assert key in metrics, (key, sorted(metrics))
        assert math.isfinite(metrics[key]), (key, metrics[key])
    assert metrics["actor/grad_norm"] > 0


def _checkpoint(result, step: int, *parts: str) -> dict:
    return _actor_weights(os.path.join(result.checkpoint_dir, f"global_step_{step}", "actor", *parts,
                                       "model_world_size_1_rank_0.pt"))


def _max_delta(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("method", ["sc_grpo", "sdpg", "opsd"])
def test_e2e_self_teacher_cpu_run(tmp_path, method):
    """verl 0.9.1 main_ppo with the shipped method config (trainer mode self_teacher) on the CPU backend: one
    step with the teacher step, the plugin loss and the method's metrics, and the actor moved."""
    # the shaped CPU reward is ~0-0.03 for a random model: a low threshold makes some rollouts "verified"
    overrides = ["self_teacher.teacher.success_threshold=0.02"]
    if method == "sdpg":
        overrides.append("self_teacher.sdpg.warmup_steps=0")  # beta(1) > 0 on the first step
    result = cpu_run_mod.cpu_run(method, steps=1, overrides=overrides, workdir=str(tmp_path), timeout=360,
                                 save_freq=1, echo=False)
    assert result.ok, f"rc={result.returncode} timed_out={result.timed_out}\n{result.tail(80)}"
    metrics = result.metrics[1]
    _check_step(metrics, method)
    if method == "sdpg":
        assert metrics["self_teacher/frac_rollouts_with_teacher"] == 1.0  # the answer hint for every rollout
        assert metrics["actor/self_teacher/sdpg_beta"] > 0
    if method == "opsd":  # every row's worked solution reached the frozen teacher through extra_info
        assert metrics["self_teacher/frac_rollouts_with_teacher"] == 1.0
        assert metrics["actor/self_teacher/distill_loss"] > 0
    from safetensors.torch import load_file

    initial = load_file(os.path.join(result.assets.model, "model.safetensors"))
    assert _max_delta(_checkpoint(result, 1), initial) > 1e-7


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_e2e_sdpo_feedback_and_ema_teacher_across_resume(tmp_path):
    """SDPO on the CPU backend: the reward's feedback reaches the teacher prompts through verl's reward loop; the
    EMA teacher is blended after each update, saved with the checkpoint, and a resumed run continues from it:
    EMA_k = lerp(EMA_{k-1}, actor_k, rate) with EMA_1 taken from the checkpoint the resume loaded."""
    from safetensors.torch import load_file

    rate = 0.5  # large, so that restarting from the initial weights is far from the fp32 rounding of the EMA step
    ema = [f"self_teacher.teacher.ema_rate={rate}"]
    first = cpu_run_mod.cpu_run("sdpo", steps=1, overrides=ema, workdir=str(tmp_path), timeout=360, save_freq=1,
                                echo=False)
    assert first.ok, f"rc={first.returncode} timed_out={first.timed_out}\n{first.tail(80)}"
    metrics = first.metrics[1]
    _check_step(metrics, "sdpo")
    # nothing reaches the success threshold (1.0) with a random model: every rollout's teacher gets its feedback
    assert metrics["self_teacher/frac_feedback_used"] == 1.0
    assert metrics["self_teacher/frac_rollouts_with_teacher"] == 1.0
    initial = {k: v.float() for k, v in load_file(os.path.join(first.assets.model, "model.safetensors")).items()}
    actor1, ema1 = _checkpoint(first, 1), _checkpoint(first, 1, "self_teacher_ema")
    assert _max_delta(actor1, initial) > 1e-7
    assert _max_delta(ema1, {k: torch_lerp(initial[k], actor1[k], rate) for k in initial}) < 5e-7

    second = cpu_run_mod.cpu_run("sdpo", steps=2, overrides=ema + ["trainer.resume_mode=auto"], workdir=str(tmp_path),
                                 timeout=360, save_freq=1, echo=False)
    assert second.ok, f"rc={second.returncode} timed_out={second.timed_out}\n{second.tail(80)}"
    assert sorted(second.metrics) == [2]  # resumed after step 1
    actor2, ema2 = _checkpoint(second, 2), _checkpoint(second, 2, "self_teacher_ema")
    resumed = _max_delta(ema2, {k: torch_lerp(ema1[k], actor2[k], rate) for k in ema1})
    restarted = _max_delta(ema2, {k: torch_lerp(initial[k], actor2[k], rate) for k in initial})
    assert resumed < 5e-7 and restarted > 2e-6, (resumed, restarted)


def torch_lerp(start, end, weight):
    return start + weight * (end - start)


def test_cli_passes_cpu_run_options_through(monkeypatch):
    """``scgrpo-verl cpu-run --config-name X ...`` (the README's main command) reaches the runner unchanged."""
    from scgrpo_verl import cli

    seen = []
    monkeypatch.setattr(cpu_run_mod, "main", lambda argv: seen.append(list(argv)) or 0)
    argv = ["--config-name", "sc_grpo", "--steps", "1", "self_teacher.sc_grpo.seed=3"]
    assert cli.main(["cpu-run", *argv]) == 0
    assert seen == [argv]
