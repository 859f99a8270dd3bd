"""examples/cpu_miniature.sh end to end (slow: four real verl main_ppo runs on the CPU backend, eval, report).

Checks that every mechanism fired in the logged metrics (SC-GRPO's KL weighting on groups with verified rollouts,
SDPO's sibling reprompting, SDPG's advantage-gated teacher term) and that the reports hold the logged numbers.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from scgrpo_verl.evaluation.verl_logs import read_verl_metrics, validation_series

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("grpo", "sc_grpo", "sdpo", "sdpg")
STEPS = 2


def _csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
@pytest.mark.timeout(2500)
def test_cpu_miniature(tmp_path):
    out = tmp_path / "mini"
    env = {**os.environ, "STEPS": str(STEPS)}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # this venv's scgrpo-verl
    proc = subprocess.run(["bash", os.path.join(REPO, "examples", "cpu_miniature.sh"), str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    printed = proc.stdout

    history = {m: read_verl_metrics(str(out / "runs" / m)) for m in METHODS}
    for method, hist in history.items():
        assert sorted(hist) == list(range(STEPS + 1)), (method, sorted(hist))  # step 0: validation before training
        assert (out / "runs" / method / "metrics.jsonl").is_file()  # verl's file logger

    def logged(method, key):
        return [history[method][s][key] for s in range(1, STEPS + 1)]

    # GRPO: stock verl, no plugin metrics
    assert not [k for k in history["grpo"][1] if "self_teacher/" in k]
    # SC-GRPO: groups with a verified rollout, the KL weight on their tokens
    assert max(logged("sc_grpo", "self_teacher/frac_groups_with_success")) > 0
    assert max(logged("sc_grpo", "actor/self_teacher/sc_weight_mean")) > 0
    assert max(logged("sc_grpo", "actor/self_teacher/sc_weighted_token_frac")) > 0
    assert max(logged("sc_grpo", "self_teacher/divergence_p95")) > 0
    # SDPO: teachers for rollouts, some from a verified sibling (feedback is used only without one)
    with_teacher = logged("sdpo", "self_teacher/frac_rollouts_with_teacher")
    feedback = logged("sdpo", "self_teacher/frac_feedback_used")
    assert max(with_teacher) > 0
    assert max(t - f for t, f in zip(with_teacher, feedback)) > 0, (with_teacher, feedback)
    assert all(v > 0 for v in logged("sdpo", "actor/self_teacher/distill_loss"))
    # SDPG: beta > 0 and the OPD term computed
    assert min(logged("sdpg", "actor/self_teacher/sdpg_beta")) > 0
    assert "actor/self_teacher/opd_loss" in history["sdpg"][1]

    # eval: the records hold the metrics
    for method in METHODS:
        metrics = json.loads((out / "eval" / method / "metrics.json").read_text())
        with open(out / "eval" / method / "samples.jsonl") as handle:
            records = [json.loads(line) for line in handle]
        parity = [r for r in records if r["data_source"] == "tiny_parity"]
        assert len(parity) == 8 * 8
        assert metrics["data_sources"]["tiny_parity"]["avg@8"] == pytest.approx(
            sum(r["acc"] for r in parity) / len(parity))

    # the sc_grpo-layout table holds the eval numbers, the sdpo-layout table the best logged validation value
    rows = _csv(out / "report" / "sc_grpo" / "table.csv")
    for method in METHODS:
        metrics = json.loads((out / "eval" / method / "metrics.json").read_text())["data_sources"]
        for ds, column, key in (("tiny_parity", "Avg@8", "avg@8"), ("tiny_parity", "Pass@8", "pass@8"),
                                ("gsm8k", "Avg@8", "avg@8")):
            row = next(r for r in rows if r["method"] == method and r["benchmark"] == ds and r["metric"] == column)
            assert float(row["ours"]) == metrics[ds][key], (method, ds, column)
    rows = _csv(out / "report" / "sdpo" / "table.csv")
    for method in METHODS:
        val = validation_series(history[method])["tiny_parity"]["acc/mean@4"]
        row = next(r for r in rows if r["method"] == method and r["benchmark"] == "tiny_parity"
                   and r["metric"] == "avg@16 ≤1h")
        # a few minutes: every step is within 1 h; step 0 (before any update) does not count
        assert float(row["ours"]) == max(v for s, v in val.items() if s > 0), method
        plots = json.loads((out / "report" / "sdpo" / "plots.json").read_text())
        line = plots["val_vs_step"]["val-core/tiny_parity"][f"{method} acc/mean@4"]
        assert line == {"x": [0, 1, 2], "y": [val[s] for s in range(3)]}
    for name in ("val_vs_step", "val_vs_time", "divergence", "teacher_coverage"):
        assert (out / "report" / "sc_grpo" / f"{name}.png").stat().st_size > 1000
        assert (out / "report" / "sc_grpo" / f"{name}.svg").stat().st_size > 1000
    # the tables were printed
    assert "### SC-GRPO" in printed and "| SC-GRPO |" in printed and "| Chemistry |" in printed


# ---------------------------------------------------------------------------------------------------------------
# the miniature's task (fast)


def test_parity_reward_reads_the_first_binary_digit():
    from scgrpo_verl.cpu_backend.reward import compute_score, grade_parity

    assert grade_parity("x1 0", "1") == {"score": 1.0, "acc": True, "feedback": ""}
    wrong = grade_parity("ab0 1", "1")
    assert wrong["score"] == 0.0 and not wrong["acc"] and "Wrong answer 0" in wrong["feedback"]
    none = grade_parity("abc 7", "0")
    assert none["score"] == 0.0 and "No answer" in none["feedback"]
    # dispatched by data_source, without the dense term (verified means right)
    assert compute_score("tiny_parity", "1", "1")["score"] == 1.0
    assert compute_score("tiny_parity", "0123456789", "1")["score"] == 0.0
    # other sources keep the shaped reward; the plugin grades sources verl does not know (data_prep's gsm8k)
    assert compute_score("gsm8k", "#### 5", "5")["acc"]
    assert not compute_score("gsm8k", "#### 4", "5")["acc"]


@pytest.mark.timeout(300)
def test_parity_assets_give_groups_with_some_verified_rollouts(tmp_path):
    """The biased tiny model answers the parity prompts right about half of the time, so that groups of 6 mostly hold
    both verified and failed rollouts (SC-GRPO's weighting route, SDPO's sibling teachers)."""
    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scgrpo_verl.cpu_backend.assets import PARITY_SOURCE, prepare_assets
    from scgrpo_verl.cpu_backend.reward import compute_score

    paths = prepare_assets(tmp_path, n_train=8, n_val=2, task="parity")
    frame = pd.read_parquet(paths.train_file)
    assert set(frame["data_source"]) == {PARITY_SOURCE}
    truths = [r["ground_truth"] for r in frame["reward_model"]]
    assert truths.count("1") == truths.count("0") == 4  # balanced: a constant answer scores 0.5
    tok = AutoTokenizer.from_pretrained(paths.model)
    model = AutoModelForCausalLM.from_pretrained(paths.model).eval()
    torch.manual_seed(0)
    mixed, right, total = 0, 0, 0
    for messages, truth in zip(frame["prompt"], truths):
        ids = tok.apply_chat_template(list(messages), add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, do_sample=True, max_new_tokens=32, num_return_sequences=6, top_k=0,
                                 pad_token_id=tok.pad_token_id)
        scores = [compute_score(PARITY_SOURCE, tok.decode(o[ids["input_ids"].shape[1]:], skip_special_tokens=True),
                                truth)["score"] for o in out]
        right += sum(scores)
        total += len(scores)
        mixed += 2 <= sum(scores) < len(scores)
    assert 0.25 <= right / total <= 0.75, right / total
    assert mixed >= 4, mixed  # of 8 groups
