"""Rewards: every data-source branch, feedback content, the length cap, and verl 0.9.1's call path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scgrpo_verl import rewards
from scgrpo_verl.rewards import code_exec, common, compute_score, sandbox
from scgrpo_verl.rewards.choice import extract_choice
from scgrpo_verl.rewards.math_answers import extract_final_answer, last_boxed
from scgrpo_verl.rewards.tool_use import parse_action

pytestmark = pytest.mark.timeout(120)

KEYS = {"score", "acc", "feedback", "pass_rate"}
FAST = sandbox.SandboxLimits(wall_time_s=1.0, cpu_time_s=1, memory_mb=512)


def py(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\n"


# ----------------------------------------------------------------------------- dispatch


@pytest.mark.parametrize("source", list(rewards.DATA_SOURCES) + list(rewards.ALIASES))
def test_every_source_dispatches(source):
    assert rewards.canonical_source(source) in rewards.TASK_OF


def test_unknown_source_raises_naming_it():
    with pytest.raises(ValueError, match="'my/dataset'"):
        compute_score("my/dataset", "\\boxed{1}", "1")


def test_bad_types_raise():
    with pytest.raises(TypeError):
        compute_score("gsm8k", None, "1")
    with pytest.raises(TypeError):
        compute_score("gsm8k", "#### 1", "1", extra_info="x")


# ----------------------------------------------------------------------------- math


@pytest.mark.parametrize("source, response, gt", [
    ("gsm8k", "She pays 3 * 4 = 12 dollars.\n#### 12", "12"),
    ("openai/gsm8k", "#### 1,000", "Rationale ... #### 1000"),
    ("math500", "So the result is $\\boxed{\\frac{1}{2}}$.", "0.5"),
    ("HuggingFaceH4/MATH-500", "\\boxed{\\dfrac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}"),
    ("aime2024", "The answer is \\boxed{033}.", 33),
    ("aime2025", "\\boxed{ 70 }", "$70$"),
    ("amc23", "first \\boxed{3} then corrected \\boxed{4}", "\\boxed{4}"),
    ("dapo_math", "\\boxed{x^2+2x+1}", "(x+1)^2"),
    ("math_dapo", "\\boxed{5}", "5"),
])
def test_math_correct(source, response, gt):
    out = compute_score(source, response, gt)
    assert set(out) == KEYS
    assert out == {"score": 1.0, "acc": 1.0, "feedback": "", "pass_rate": 1.0}


def test_math_wrong_answer_feedback():
    out = compute_score("math500", "\\boxed{\\frac{1}{3}}", "\\frac{1}{2}")
    assert out["score"] == 0.0 and out["acc"] == 0.0
    assert out["feedback"] == "Your final answer \\frac{1}{3} is incorrect."


def test_math_no_answer_feedback():
    out = compute_score("aime2025", "I think it is about seventy.", "70")
    assert out["score"] == 0.0
    assert out["feedback"] == "No final answer found in \\boxed{}."


def test_math_truncated_is_mentioned():
    out = compute_score("math500", "Let me think \\boxed{\\frac{1", "1", extra_info={"truncated": True})
    assert out["feedback"].startswith("Your response was truncated")
    assert "No final answer found" in out["feedback"]


def test_math_feedback_caps_long_answer():
    out = compute_score("gsm8k", "\\boxed{" + "9" * 5000 + "}", "1")
    assert out["score"] == 0.0
    assert len(out["feedback"]) < 400 and out["feedback"].endswith("is incorrect.")


def test_math_bad_ground_truth_raises():
    with pytest.raises(ValueError):
        compute_score("gsm8k", "#### 1", "")
    with pytest.raises(ValueError):
        compute_score("gsm8k", "#### 1", None)


def test_last_boxed_nested_and_unbalanced():
    assert last_boxed("\\boxed{\\frac{a}{b}} and \\boxed{x") == "\\frac{a}{b}"
    assert extract_final_answer("no answer") is None
    assert extract_final_answer("#### 7\n") == "7"


# ----------------------------------------------------------------------------- multiple choice


@pytest.mark.parametrize("response, letter", [
    ("Reasoning...\nAnswer: B", "B"),
    ("The answer is (c).", None),  # lower-case prose letter is not a choice
    ("The answer is (C).", "C"),
    ("\\boxed{\\text{D}}", "D"),
    ("\\boxed{(A)}", "A"),
    ("the answer is a mixture", None),
])
def test_extract_choice(response, letter):
    assert extract_choice(response) == letter


def test_choice_grading():
    assert compute_score("sciknoweval", "Answer: B", "B")["score"] == 1.0
    assert compute_score("sciknoweval", "\\boxed{B}", "(B)")["score"] == 1.0
    wrong = compute_score("sciknoweval", "\\boxed{C}", "B")
    assert wrong["score"] == 0.0 and wrong["feedback"] == "Your answer C is incorrect."
    none = compute_score("sciknoweval", "I am not sure.", "B")
    assert none["score"] == 0.0 and none["feedback"].startswith("No answer letter found")
    with pytest.raises(ValueError, match="option letter"):
        compute_score("sciknoweval", "Answer: B", "Water")


# ----------------------------------------------------------------------------- tool use

GT_TOOL = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}


def test_tool_correct_react_and_hermes():
    react = 'Thought: need weather\nAction: get_weather\nAction Input: {"unit": "celsius", "city": "Paris"}'
    assert compute_score("tooluse", react, json.dumps(GT_TOOL))["score"] == 1.0
    hermes = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}</tool_call>'
    out = compute_score("tooluse", hermes, GT_TOOL)
    assert out == {"score": 1.0, "acc": 1.0, "feedback": "", "pass_rate": 1.0}
    alt_gt = {"action": "get_weather", "action_input": json.dumps(GT_TOOL["arguments"])}
    assert compute_score("tooluse", react, alt_gt)["score"] == 1.0


def test_tool_argument_mismatch_feedback():
    resp = 'Action: get_weather\nAction Input: {"city": "London", "days": 3}'
    out = compute_score("tooluse", resp, GT_TOOL)
    assert out["score"] == 0.0
    fb = out["feedback"]
    assert "'get_weather' is correct" in fb and "wrong value for 'city'" in fb
    assert "missing 'unit'" in fb and "unexpected 'days'" in fb
    assert "Paris" not in fb  # the expected value is not revealed
    assert out["pass_rate"] == pytest.approx(1 / 3)


def test_tool_wrong_name_and_bad_json():
    out = compute_score("tooluse", 'Action: search\nAction Input: {"city": "Paris", "unit": "celsius"}', GT_TOOL)
    assert out["score"] == 0.0 and "Wrong action 'search'" in out["feedback"]
    bad = compute_score("tooluse", "Action: get_weather\nAction Input: {city: Paris}", GT_TOOL)
    assert bad["score"] == 0.0 and "not valid JSON" in bad["feedback"]
    none = compute_score("tooluse", "I would check the weather.", GT_TOOL)
    assert none["feedback"].startswith("No action found")
    assert parse_action("Action: a\nAction Input: [1]")[1] is None
    with pytest.raises(ValueError):
        compute_score("tooluse", "Action: x", {"arguments": {}})
    with pytest.raises(ValueError):
        compute_score("tooluse", "Action: x", "not json")


# ----------------------------------------------------------------------------- code

ADD_TESTS = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5\n", "output": "10"}, {"input": "0 0", "output": "0"}]
ADD = "a, b = map(int, input().split())\nprint(a + b)"


def test_extract_code_prefers_last_python_block():
    text = "```python\nprint(1)\n```\nthen\n```\nplain\n```\n```py\nprint(2)\n```"
    assert code_exec.extract_code(text).strip() == "print(2)"
    assert code_exec.extract_code("```\nprint(3)\n```").strip() == "print(3)"
    assert code_exec.extract_code("```python\nprint(1)\n") is None  # unterminated


def test_code_all_pass_stdin():
    out = compute_score("codeforces", py(ADD), json.dumps(ADD_TESTS))
    assert out == {"score": 1.0, "acc": 1.0, "feedback": "", "pass_rate": 1.0}


def test_code_wrong_answer_shows_two_failures():
    out = compute_score("codeforces", py("a, b = map(int, input().split())\nprint(a * b + 100)"), ADD_TESTS)
    assert out["score"] == 0.0 and out["pass_rate"] == 0.0
    fb = out["feedback"]
    assert fb.startswith("Passed 0/3 tests.")
    assert "Wrong answer on test 1.\nInput:\n1 2\nExpected:\n3\nGot:\n102" in fb
    assert "Wrong answer on test 2." in fb and "Wrong answer on test 3." not in fb
    assert "(1 more failing tests not shown.)" in fb


def test_code_partial_pass_rate():
    out = compute_score("codeforces", py("a, b = map(int, input().split())\nprint(a + b if a else 7)"), ADD_TESTS)
    assert out["score"] == 0.0 and out["pass_rate"] == pytest.approx(2 / 3)


def test_code_compile_error():
    out = compute_score("livecodebench", py("def f(:\n    pass"), ADD_TESTS)
    assert out["score"] == 0.0
    assert out["feedback"].startswith("Compilation error:") and "SyntaxError" in out["feedback"]


def test_code_runtime_error_traceback_tail():
    out = compute_score("codeforces", py("x = int(input().split()[0])\nprint(10 // (x - x))"), ADD_TESTS)
    fb = out["feedback"]
    assert "Runtime error on test 1 (exit code 1)" in fb and "ZeroDivisionError" in fb
    # the traceback names the program as `python main.py` would, with no host path and no boot-code frame
    assert 'File "main.py", line 2, in <module>' in fb and "/tmp/" not in fb and "<string>" not in fb


def test_code_time_limit_skips_rest():
    out = compute_score("codeforces", py("while True:\n    pass"), ADD_TESTS, code_time_limit_s=0.5)
    fb = out["feedback"]
    assert out["score"] == 0.0
    assert "Time limit exceeded on test 1 (limit 0.5s)" in fb
    assert "(2 remaining tests were not run after the time limit.)" in fb


def test_code_no_code_and_truncated():
    none = compute_score("codeforces", "I would use a for loop.", ADD_TESTS)
    assert none["feedback"] == code_exec.NO_CODE_FEEDBACK and none["pass_rate"] == 0.0
    trunc = compute_score("codeforces", "```python\nfor i in range(", ADD_TESTS,
                          extra_info={"response_length": 4096, "max_response_length": 4096})
    assert trunc["feedback"].startswith("Your response was truncated at the maximum length before a complete")
    kw = compute_score("codeforces", "```python\nfor i in range(", ADD_TESTS, truncated=True)
    assert kw["feedback"] == trunc["feedback"]


def test_code_functional_leetcode_style():
    gt = {"fn_name": "twoSum", "tests": [
        {"input": "[2,7,11,15]\n9", "output": "[0, 1]"},
        {"input": "[3,2,4]\n6", "output": "[1,2]"},
    ]}
    good = py("class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"
              "        seen = {}\n        for i, x in enumerate(nums):\n"
              "            if target - x in seen:\n                return [seen[target - x], i]\n"
              "            seen[x] = i\n")
    assert compute_score("livecodebench", good, json.dumps(gt))["score"] == 1.0
    bad = py("class Solution:\n    def twoSum(self, nums, target):\n        print('debug')\n        return [0, 1]\n")
    out = compute_score("livecodebench", bad, gt)
    assert out["pass_rate"] == 0.5
    assert "Wrong answer on test 2." in out["feedback"] and "Got:\n[0, 1]" in out["feedback"]
    missing = compute_score("livecodebench", py("def twoSum(nums, target):\n    return []"), gt)
    assert "class Solution is not defined" in missing["feedback"]


def test_code_apps_layout_and_float_tolerance():
    gt = {"inputs": ["3\n"], "outputs": ["0.3333333\n"]}
    assert compute_score("codeforces", py("print(1 / int(input()))"), gt)["score"] == 1.0
    assert compute_score("codeforces", py("print(1)"), {"inputs": ["1"], "outputs": ["1.0"]})["score"] == 1.0
    assert not code_exec.outputs_match("1", "2")


@pytest.mark.parametrize("bad", ["not json", "[]", '{"foo": 1}', '[{"input": "1"}]', '{"inputs": ["1"], "outputs": []}',
                                 '{"tests": [{"input": "1", "output": "1"}], "fn_name": "a b"}', "42"])
def test_code_bad_ground_truth_raises(bad):
    with pytest.raises(ValueError):
        compute_score("codeforces", py("print(1)"), bad)


def test_feedback_length_cap():
    long_out = "print('x' * 5000)"
    gt = [{"input": "", "output": "y"}] * 3
    out = compute_score("codeforces", py(long_out), gt)
    assert len(out["feedback"]) <= common.MAX_FEEDBACK_CHARS
    small = compute_score("codeforces", py(long_out), gt, max_feedback_chars=120)
    assert len(small["feedback"]) == 120 and small["feedback"].endswith(common.TRUNCATION_MARK)
    assert common.cap("short") == "short"
    with pytest.raises(ValueError):
        common.cap("x", 0)


def _reference_token_match(expected: str, got: str) -> bool:
    """Independent statement of the judging rule: equal strings; otherwise only when ``expected`` is a decimal
    literal with a fractional part or exponent: plain-decimal ``got`` within 1e-6 (absolute or relative) if the
    value is non-integral, exactly equal if it is integral."""
    import decimal
    import re

    if expected == got:
        return True
    num = r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"
    if re.fullmatch(r"[+-]?\d+", expected) or not re.fullmatch(num, expected) or not re.fullmatch(num, got):
        return False
    e, g = decimal.Decimal(expected), decimal.Decimal(got)
    if e == e.to_integral_value():
        return float(e) == float(g)
    return abs(e - g) <= max(decimal.Decimal("1e-6"), decimal.Decimal("1e-6") * max(abs(e), abs(g)))


@pytest.mark.parametrize("expected, got", [
    ("123456789012", "1.23456789e11"), ("123456789012", "123456789012.0"), ("3", "3.0000001"), ("7", "7.0"),
    ("100", "1e2"), ("abc", "ABC"), ("-0", "0"), ("5", "5_0"), ("0.333333", "0.3333331"), ("0.333333", "0.34"),
    ("0.5", "5e-1"), ("0.5", "nan"), ("0.5", "inf"), ("2.0", "2"), ("2.0", "2.0000001"), ("1e-9", "0"),
    ("2.5", "0x2.5"), ("YES", "yes"), ("1.5", "1.5000009"), ("1.5", "1.500002"),
])
def test_token_comparison_matches_reference(expected, got):
    assert code_exec._tokens_equal(expected, got) == _reference_token_match(expected, got)


def test_integer_answer_gets_no_float_tolerance():
    gt = [{"input": "", "output": "123456789012"}]
    assert compute_score("codeforces", py("print(1.23456789e11)"), gt)["score"] == 0.0
    assert compute_score("codeforces", py("print(123456789012)"), gt)["score"] == 1.0


def test_functional_comparison_types_and_depth():
    assert code_exec._json_equal([1, 2], [1, 2]) and not code_exec._json_equal(1, 1.0)
    assert not code_exec._json_equal(1, True) and not code_exec._json_equal(True, 1)
    assert code_exec._json_equal(0.5, 0.5000001) and not code_exec._json_equal(2.0, 2.0000001)
    assert code_exec._json_equal(2.0, 2) and not code_exec._json_equal({"a": 1}, {"a": 1, "b": 2})
    deep = []
    for _ in range(100_000):  # deeper than any recursion limit: the comparison is iterative
        deep = [deep]
    assert code_exec._json_equal(deep, deep)


def test_program_output_never_crashes_the_grader():
    """Deeply nested JSON after the result marker, invalid UTF-8 and a huge stderr: score 0 with feedback."""
    gt = {"fn_name": "f", "tests": [{"input": "1", "output": "1"}]}
    deep = py("import sys, os\nclass Solution:\n    def f(self, x):\n"
              f"        sys.stdout.write('{code_exec.RESULT_MARKER}' + '[' * 200000 + ']' * 200000 + '\\n')\n"
              "        sys.stdout.flush(); os._exit(0)\n")
    junk = py("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe\\x00' * 1000)\n"
              "sys.stderr.buffer.write(b'\\x1b[31m\\xc3' * 100000)\nraise SystemExit(1)\n")
    for text, truth in ((deep, gt), (junk, [{"input": "", "output": "1"}])):
        out = compute_score("livecodebench", text, truth)
        assert out["score"] == 0.0 and out["feedback"] and set(out) == KEYS
        out["feedback"].encode("utf-8")


@pytest.mark.parametrize("raw, clean", [
    ("a\x1b[31mred\x1b[0m", "ared"), ("bell\x07nul\x00", "bellnul"), ("x\r\ny\rz", "x\ny\nz"),
    ("evil\u202etxt", "eviltxt"), ("t\x1b]0;title\x07e", "te"), ("lone\ud800", "lone"), ("c1\x9b2J", "c1"),
    ("zero\u200bwidth\ufeff", "zerowidth"), ("tab\tnl\n", "tab\tnl\n"), ("ünï ✓ 数", "ünï ✓ 数"),
])
def test_sanitize(raw, clean):
    assert common.sanitize(raw) == clean
    assert common.sanitize(common.sanitize(raw)) == clean
    common.sanitize(raw).encode("utf-8")


def test_every_grader_sanitises_feedback():
    evil = "\x1b[2J\x07\u202e\x00"
    outs = [compute_score("gsm8k", f"\\boxed{{5{evil}}}", "3"),
            compute_score("sciknoweval", f"The answer is B{evil}", "A"),
            compute_score("tooluse", f'Action: search{evil}\nAction Input: {{"q": "{evil}"}}',
                          {"name": "lookup", "arguments": {"q": "x"}}),
            compute_score("codeforces", py(f"print({evil!r})"), [{"input": "", "output": "1"}])]
    for out in outs:
        assert out["feedback"] and out["feedback"] == common.sanitize(out["feedback"]), out


# ----------------------------------------------------------------------------- verl 0.9.1 call path


class _CharTokenizer:
    """Minimal tokenizer for the reward manager: ids are code points."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(int(i)) for i in ids if int(i) > 0)


def _data_proto(responses: list[str], sources: list[str], gts: list, width: int = 256):
    from verl import DataProto

    n = len(responses)
    resp = torch.zeros(n, width, dtype=torch.long)
    prompts = torch.full((n, 4), 65, dtype=torch.long)
    mask = torch.zeros(n, 4 + width, dtype=torch.long)
    mask[:, :4] = 1
    for i, text in enumerate(responses):
        ids = [ord(c) for c in text][:width]
        resp[i, : len(ids)] = torch.tensor(ids)
        mask[i, 4: 4 + len(ids)] = 1
    return DataProto.from_dict(
        tensors={"prompts": prompts, "responses": resp, "attention_mask": mask},
        non_tensors={"data_source": np.array(sources, dtype=object),
                     "reward_model": np.array([{"ground_truth": g} for g in gts], dtype=object),
                     "extra_info": np.array([{} for _ in gts], dtype=object)},
    )


def test_verl_custom_reward_function_loader_and_naive_manager():
    """Load compute_score through verl's own ``get_custom_reward_fn`` and score through ``NaiveRewardManager``
    (which calls it from an executor thread with keyword arguments)."""
    from omegaconf import OmegaConf
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create({"reward": {"custom_reward_function": {
        "path": "pkg://scgrpo_verl.rewards", "name": "compute_score", "reward_kwargs": {"max_feedback_chars": 500}}}})
    fn = get_custom_reward_fn(config)
    assert fn is not None
    direct = fn(data_source="sciknoweval", solution_str="Answer: A", ground_truth="B", extra_info={})
    assert direct["feedback"] == "Your answer A is incorrect."

    manager = NaiveRewardManager(config=config, tokenizer=_CharTokenizer(), compute_score=fn)
    cases = [
        ("Answer: B", "sciknoweval", "B", 1.0),
        ("so \\boxed{12}", "aime2024", "13", 0.0),  # math-verify off the main thread -> worker process
        ("Action: f\nAction Input: {\"x\": 1}", "tooluse", {"name": "f", "arguments": {"x": 1}}, 1.0),
        (py(ADD), "codeforces", json.dumps(ADD_TESTS), 1.0),
    ]
    for text, source, gt, expected in cases:
        data = _data_proto([text], [source], [gt])
        out = manager.loop.run_until_complete(manager.run_single(data))
        assert out["reward_score"] == expected, (source, out)
        assert set(out["reward_extra_info"]) == KEYS
    rm = NaiveRewardManager.assemble_rm_scores(_data_proto(["a", "bb"], ["x", "x"], [0, 0]), [1.0, 0.5])
    assert rm.shape == (2, 256) and rm[1, 1] == 0.5
