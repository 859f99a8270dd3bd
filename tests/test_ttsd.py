"""``scgrpo-verl ttsd``: SDPO's test-time self-distillation, with best-of-k and multi-turn baselines.

The end-to-end test runs the command on a tiny random Qwen2 and a task it sometimes solves (a response containing a
digit), then recomputes every curve of the report from the per-attempt log with code of its own: brute-force
subset enumeration for best-of-k, plain counting for the sequential methods.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import enumerated_pass_at_k

from scgrpo_verl import ttsd

REWARD = '''
def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    ok = any(ch.isdigit() for ch in solution_str)
    return {"score": float(ok), "acc": ok, "feedback": "" if ok else "no digit"}
'''


def test_pass_at_k_and_best_of_k_curve_match_subset_enumeration():
    samples = [True, False, False, True, False, False, False]
    for k in range(1, len(samples) + 1):
        assert ttsd.pass_at_k(len(samples), sum(samples), k) == pytest.approx(float(enumerated_pass_at_k(samples, k)))
    curve = ttsd.best_of_k_curve([(2, 7), (0, 7)], budget=10)
    for k in range(1, 8):
        assert curve[k - 1] == pytest.approx((float(enumerated_pass_at_k(samples, k)) + 0.0) / 2)
    assert curve[9] == pytest.approx((1 - (5 / 7) ** 10) / 2)  # beyond m: the closed form


def test_discovery_curve_and_attempts_to_reach():
    first = [[1, None], [3, 5]]  # question 0: run 0 solved at 1, run 1 never; question 1 at 3 and 5
    curve = ttsd.discovery_curve(first, budget=6)
    assert curve == pytest.approx([0.25, 0.25, 0.5, 0.5, 0.75, 0.75])
    assert ttsd.attempts_to_reach(curve, 0.5) == 3 and ttsd.attempts_to_reach(curve, 0.8) is None
    assert ttsd.first_success([False, False, True, True]) == 3 and ttsd.first_success([False]) is None


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="ttsd.batch_size"):
        ttsd.TTSDConfig(batch_size=6, group_size=4)
    with pytest.raises(ValueError, match="ttsd.teacher"):
        ttsd.TTSDConfig(teacher="ref")


def test_multiturn_prompt_carries_all_feedback():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "Q?"}]
    out = ttsd.multiturn_messages(messages, ["f1", "f2"])
    assert out[0] == messages[0] and out[1]["content"].startswith("Q?\n\n")
    assert out[1]["content"].index("f1") < out[1]["content"].index("f2") and messages[1]["content"] == "Q?"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one intra-op thread is fastest, and much faster on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from scgrpo_verl.cpu_backend.assets import build_model, build_tokenizer, write_parquet

    root = tmp_path_factory.mktemp("ttsd")
    model_dir = root / "model"
    model_dir.mkdir()
    tokenizer = build_tokenizer(model_dir)
    build_model(model_dir, vocab_size=len(tokenizer), eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"), seed=0)
    rows = [{"data_source": "toy", "prompt": [{"role": "user", "content": f"Say a number ({i})."}],
             "ability": "toy", "reward_model": {"style": "rule", "ground_truth": "digit"}, "extra_info": {"index": i}}
            for i in range(3)]
    data = write_parquet(rows, root / "questions.parquet")
    reward = root / "reward.py"
    reward.write_text(REWARD)
    return root, str(model_dir), data, str(reward)


def test_ttsd_command_discovery_bookkeeping(tiny, capsys):
    from scgrpo_verl.cli import main

    root, model, data, reward = tiny
    out = root / "out"
    budget, batch = 12, 4
    assert main(["ttsd", "--model-path", model, "--data", data, "--questions", "0,2", "--out", str(out),
                 "--budget", str(budget), "--batch-size", str(batch), "--group-size", "2", "--lr", "0.05",
                 "--topk", "8", "--max-new-tokens", "3", "--runs", "2", "--baseline-samples", "6",
                 "--reward-path", reward, "--device", "cpu", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    records = [json.loads(line) for line in (out / "attempts.jsonl").read_text().splitlines()]
    assert report["questions"] == [0, 2] and (out / "discovery.png").stat().st_size > 0

    attempts = [r for r in records if "attempt" in r]
    assert any(r["success"] for r in attempts), "the tiny model never solved the toy task: the test proves nothing"
    assert not all(r["success"] for r in attempts)

    # sequential methods: per (question, run) the attempts are 1, 2, ... and stop at the first success
    for method in ("ttsd", "multiturn"):
        expected_first = []
        for q in (0, 2):
            runs = []
            for run in (0, 1):
                mine = [r for r in attempts if r["method"] == method and r["question"] == q and r["run"] == run]
                assert [r["attempt"] for r in mine] == list(range(1, len(mine) + 1))
                hits = [r["attempt"] for r in mine if r["success"]]
                assert hits[:1] == hits and (not hits or hits[0] == len(mine))  # stops right after the first success
                assert hits or len(mine) == budget
                runs.append(hits[0] if hits else None)
            expected_first.append(runs)
        assert report["first_success"][method] == expected_first
        curve = [sum(sum(1 for t in runs if t is not None and t <= k) / 2 for runs in expected_first) / 2
                 for k in range(1, budget + 1)]
        assert report["curves"][method] == pytest.approx(curve)

    # test-time SDPO rounds: batch_size attempts per round, an SDPO update after every failed round
    for q in (0, 2):
        for run in (0, 1):
            mine = [r for r in records if r["method"] == "ttsd" and r["question"] == q and r["run"] == run]
            tries = [r for r in mine if "attempt" in r]
            assert all(r["round"] == (r["attempt"] - 1) // batch + 1 for r in tries)
            updates = [r for r in mine if r.get("update")]
            failed_rounds = {r["round"] for r in tries} - {r["round"] for r in tries if r["success"]}
            assert {u["round"] for u in updates} == failed_rounds
            assert all(u["loss"] and all(math.isfinite(x) for x in u["loss"]) for u in updates)

    # best-of-k: from the logged base-model samples, by subset enumeration
    curve = []
    per_question = {q: [r["success"] for r in attempts if r["method"] == "best_of_k" and r["question"] == q]
                    for q in (0, 2)}
    assert all(len(s) == 6 for s in per_question.values())
    for k in range(1, budget + 1):
        values = [float(enumerated_pass_at_k(s, k)) if k <= 6 else 1 - (1 - sum(s) / 6) ** k
                  for s in per_question.values()]
        curve.append(sum(values) / 2)
    assert report["curves"]["best_of_k"] == pytest.approx(curve)
    assert report["best_of_k_counts"] == [[sum(s), 6] for s in per_question.values()]
    assert "discovery@1=" in printed and "test-time SDPO" in printed


def test_ttsd_updates_move_the_policy_and_the_driver_restores_it(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scgrpo_verl.evaluation.data import load_questions, load_reward_fn
    from scgrpo_verl.ttsd import TTSDConfig, evaluate_discovery, run_ttsd

    root, model_dir, data, reward = tiny
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    score = load_reward_fn(reward, "compute_score")
    never = lambda **kw: {"score": 0.0, "feedback": "wrong, try a different answer"}  # noqa: E731
    question = load_questions(data, indices=[1])[0]
    cfg = TTSDConfig(budget=4, batch_size=2, group_size=2, lr=0.05, topk=8, max_new_tokens=3, teacher="live")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    log = []
    assert run_ttsd(model, tokenizer, question, never, cfg, 0, log.append) is None
    assert sum(1 for r in log if r.get("update")) == 2
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the driver starts every run from the base weights and gives them back
    model.load_state_dict(before)
    evaluate_discovery(model, tokenizer, [question], score, TTSDConfig(budget=3, batch_size=2, group_size=1,
                       lr=0.05, topk=8, max_new_tokens=3, baseline_samples=2), str(root / "restore"),
                       progress=lambda s: None)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_discovery_is_a_score_at_the_threshold_not_the_rewards_acc():
    from scgrpo_verl.evaluation.data import Question

    question = Question(file="f", row=0, data_source="toy", index=0, messages=[], ground_truth="1")
    cfg = ttsd.TTSDConfig(success_threshold=1.0)
    half = {"score": 0.5, "acc": True, "feedback": "f"}  # the reward says correct, the score is under the threshold
    assert ttsd.judge(lambda **kw: half, question, "x", cfg) == (False, 0.5, "f")
    assert ttsd.judge(lambda **kw: 1.0, question, "x", cfg) == (True, 1.0, "")
