"""scgrpo-verl eval: a real end-to-end evaluation of the tiny model (HF folder and a verl FSDP checkpoint), its options
and one-line errors. The metrics and verl's logs are tested in tests/evaluation/ (test_metrics.py,
test_verl_logs.py)."""

from __future__ import annotations

import json
import os

import pytest
from conftest import enumerated_pass_at_k, verl_history

from scgrpo_verl import eval as ev
from scgrpo_verl.cli import main as cli_main

# ---------------------------------------------------------------------------------------------------------------
# end to end on the tiny parity model


@pytest.fixture(scope="module")
def parity_assets(tmp_path_factory):
    from scgrpo_verl.cpu_backend.assets import prepare_assets

    return prepare_assets(tmp_path_factory.mktemp("eval_assets"), n_train=4, n_val=4, task="parity")


REWARD = os.path.join(os.path.dirname(ev.__file__), "cpu_backend", "reward.py")


def _records(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


@pytest.mark.timeout(240)
def test_eval_end_to_end_hf_folder(parity_assets, tmp_path, capsys):
    import pandas as pd

    from scgrpo_verl.cpu_backend.reward import grade_parity

    out = tmp_path / "eval"
    rc = cli_main(["eval", "--model-path", parity_assets.model, "--data", parity_assets.val_file, "--n", "4",
                   "--temperature", "1.0", "--top-p", "1.0", "--max-new-tokens", "16", "--out", str(out),
                   "--backend", "hf", "--reward-path", REWARD, "--limit", "3"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "tiny_parity" in printed and "pass@4" in printed
    records = _records(out / "samples.jsonl")
    frame = pd.read_parquet(parity_assets.val_file)
    assert len(records) == 3 * 4
    assert [(r["row"], r["sample"]) for r in records] == [(row, s) for row in range(3) for s in range(4)]
    for rec in records:
        truth = frame.iloc[rec["row"]]["reward_model"]["ground_truth"]
        assert rec["ground_truth"] == truth and rec["data_source"] == "tiny_parity"
        assert rec["index"] == frame.iloc[rec["row"]]["extra_info"]["index"]
        graded = grade_parity(rec["response"], truth)  # the same reward, recomputed
        assert (rec["score"], rec["acc"], rec["feedback"]) == (graded["score"], graded["acc"], graded["feedback"])
        assert 0 <= rec["num_tokens"] <= 16
    # metrics.json against an independent computation from the records
    metrics = json.loads((out / "metrics.json").read_text())
    m = metrics["data_sources"]["tiny_parity"]
    by_q = {}
    for rec in records:
        by_q.setdefault(rec["row"], []).append(rec["acc"])
    assert m["num_questions"] == 3 and m["num_samples"] == 12 and m["n"] == 4
    assert m["avg@4"] == pytest.approx(sum(r["acc"] for r in records) / 12)
    assert m["mean@4"] == pytest.approx(sum(sum(v) / 4 for v in by_q.values()) / 3)
    for k in (1, 2, 4):
        expected = sum(float(enumerated_pass_at_k(v, k)) for v in by_q.values()) / 3
        assert m[f"pass@{k}"] == pytest.approx(expected)
    assert metrics["backend"] == "hf" and metrics["sampling"]["n"] == 4


@pytest.mark.timeout(240)
def test_eval_merges_a_verl_fsdp_checkpoint(parity_assets, tmp_path):
    """A verl FSDP checkpoint (world size 1: model_world_size_1_rank_0.pt + fsdp_config.json + huggingface/) is
    merged with verl's model merger; the merged weights are the checkpoint's (bf16, as verl's merger writes them)."""
    import shutil

    import torch
    from safetensors.torch import load_file

    actor = tmp_path / "global_step_3" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    weights = load_file(os.path.join(parity_assets.model, "model.safetensors"))
    moved = {k: v + 0.01 for k, v in weights.items()}  # not the initial model
    torch.save(moved, actor / "model_world_size_1_rank_0.pt")
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 1}))
    for name in os.listdir(parity_assets.model):
        if not name.endswith(".safetensors"):
            shutil.copy(os.path.join(parity_assets.model, name), actor / "huggingface")
    merged = ev.resolve_model(str(actor.parent), str(tmp_path / "work"))  # global_step_X finds actor/
    got = load_file(os.path.join(merged, "model.safetensors"))
    assert set(got) == set(moved)
    for key in moved:
        assert torch.equal(got[key], moved[key].bfloat16()), key
    result = ev.evaluate(str(actor), [parity_assets.val_file], ev.Sampling(2, 1.0, 1.0, 8), str(tmp_path / "out"),
                         backend="hf", reward_path=REWARD, limit=2)
    assert result.metrics["data_sources"]["tiny_parity"]["num_samples"] == 4


@pytest.mark.timeout(120)
def test_eval_reads_the_runs_in_loop_validation(parity_assets, tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s, "data": d}) + "\n" for s, d in verl_history().items()))
    result = ev.evaluate(parity_assets.model, [parity_assets.val_file], ev.Sampling(1, 0.0, 1.0, 4),
                         str(tmp_path / "out"), backend="hf", reward_path=REWARD, limit=1, verl_log=str(log))
    assert result.metrics["verl_validation"]["tiny_parity"] == {"acc/mean@4": {"0": 0.4, "2": 0.45}}


def test_chat_template_kwargs_reach_the_template(parity_assets):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(parity_assets.model)
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                         "{% if enable_thinking is defined and not enable_thinking %}<no-think>{% endif %}")
    messages = [{"role": "user", "content": "q"}]
    off = tok.decode(ev.chat_prompt_ids(tok, messages, {"enable_thinking": False}))
    on = tok.decode(ev.chat_prompt_ids(tok, messages, {}))
    assert off == "q<no-think>" and on == "q"
    parser = __import__("argparse").ArgumentParser()
    ev.add_arguments(parser)
    base = ["--model-path", "m", "--data", "d", "--n", "1", "--temperature", "0", "--top-p", "1",
            "--max-new-tokens", "4", "--out", "o"]
    assert ev.template_kwargs_from_args(parser.parse_args(base + ["--disable-thinking"])) == {"enable_thinking": False}
    assert ev.template_kwargs_from_args(parser.parse_args(
        base + ["--chat-template-kwargs", '{"a": 1}', "--enable-thinking"])) == {"a": 1, "enable_thinking": True}


@pytest.mark.parametrize("extra, message", [
    (["--n", "0"], "--n must be >= 1"),
    (["--temperature", "0", "--n", "2"], "--temperature 0 is greedy"),
    (["--top-p", "1.5"], "--top-p must be in"),
    (["--backend", "vllm"], "vllm is not installed"),
    (["--model-path", "/nonexistent"], "is not a folder"),
    (["--data", "/nonexistent.parquet"], "does not exist"),
    (["--limit", "0"], "--limit must be >= 1"),
    (["--reward-path", "/nonexistent.py"], "--reward-path"),
    (["--pass-k", "9"], "--pass-k"),
    (["--reward-path", None], "unknown data_source 'tiny_parity'"),  # the plugin's reward does not grade it
    (["--tensor-parallel-size", "0"], "--tensor-parallel-size must be >= 1"),
])
def test_eval_errors_are_one_line_naming_the_option(parity_assets, tmp_path, capsys, extra, message):
    if "vllm" in message and ev.vllm_available():
        pytest.skip("vllm is installed here")
    args = {"--model-path": parity_assets.model, "--data": parity_assets.val_file, "--n": "2", "--temperature": "1",
            "--top-p": "1", "--max-new-tokens": "4", "--out": str(tmp_path / "o"), "--backend": "hf"}
    args["--reward-path"] = REWARD
    for key, value in zip(extra[::2], extra[1::2]):
        if value is None:
            del args[key]
        else:
            args[key] = value
    argv = ["eval"] + [x for kv in args.items() for x in kv]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_eval_rejects_a_parquet_without_verl_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "q"}]), path)
    with pytest.raises(ev.EvalError, match=r"missing column\(s\) \['prompt', 'data_source', 'reward_model'\]"):
        ev.load_questions(str(path))
    pq.write_table(pa.Table.from_pylist([{"prompt": "hi", "data_source": "x", "reward_model": {"style": "rule"}}]), path)
    with pytest.raises(ev.EvalError, match="row 0: 'reward_model' has no 'ground_truth'"):
        ev.load_questions(str(path))


@pytest.mark.timeout(120)
def test_a_failing_reward_function_is_named_with_its_row(parity_assets, tmp_path):
    reward = tmp_path / "bad_reward.py"
    reward.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
                      "    raise KeyError('no grader')\n")
    with pytest.raises(ev.EvalError, match=r"row 0: the reward function failed on sample 0: KeyError: 'no grader'"):
        ev.evaluate(parity_assets.model, [parity_assets.val_file], ev.Sampling(1, 0.0, 1.0, 2), str(tmp_path / "o"),
                    backend="hf", reward_path=str(reward), limit=1)
    assert not (tmp_path / "o" / "metrics.json").exists()


@pytest.mark.timeout(120)
def test_hf_batches_of_left_padded_prompts_decode_as_one_prompt_at_a_time(tmp_path):
    """Greedy decoding: the batched generation (prompts of different lengths, left padding) gives exactly the
    responses of prompts generated alone. The unbiased random model: near-uniform logits, so any leak of the padding
    into attention or positions would flip some argmax."""
    from transformers import AutoTokenizer

    from scgrpo_verl.cpu_backend.assets import prepare_assets

    model = prepare_assets(tmp_path / "math", n_train=1, n_val=1).model
    tok = AutoTokenizer.from_pretrained(model)
    messages = [[{"role": "user", "content": text}] for text in ("Is 7 odd?", "Is 1234 odd? Answer 1 or 0 please.",
                                                                 "x")]
    ids = [ev.chat_prompt_ids(tok, m, {}) for m in messages]
    assert len({len(i) for i in ids}) == 3
    greedy = ev.Sampling(1, 0.0, 1.0, 12)
    batched = ev.generate_hf(model, ids, greedy, tok, batch_sequences=8)
    alone = ev.generate_hf(model, ids, greedy, tok, batch_sequences=1)
    assert batched == alone
    assert len({s[0]["text"] for s in alone}) >= 2  # the prompts matter
