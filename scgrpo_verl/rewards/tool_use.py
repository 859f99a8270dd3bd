"""Tool-use answers: one expected action (name + JSON arguments) vs the model's last action.

Accepted model formats (the last occurrence wins):

* ReAct lines: ``Action: get_weather`` followed by ``Action Input: {"city": "Paris"}``;
* Hermes/Qwen tool calls: ``<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>``.
"""

from __future__ import annotations

import json
import re

from .common import MAX_FEEDBACK_CHARS, result, snippet

NO_ACTION_FEEDBACK = "No action found (expected 'Action: <name>' and 'Action Input: <JSON object>')."

_ACTION = re.compile(r"^\s*Action\s*:\s*(.+?)\s*$", re.MULTILINE)
_ACTION_INPUT = re.compile(r"^\s*Action\s*Input\s*:\s*", re.MULTILINE)
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def _decode_arguments(raw, where: str) -> dict:
    """JSON object from a dict or a JSON string; ``ValueError`` naming ``where`` otherwise."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: arguments are not valid JSON ({exc.msg})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: arguments must be a JSON object, got {type(raw).__name__}")
    return raw


def parse_expected(ground_truth) -> tuple[str, dict]:
    """(name, arguments) from ``{"name", "arguments"}`` (or ``{"action", "action_input"}``), as a dict or JSON string.

    Raises:
        ValueError: malformed ground truth.
    """
    gt = ground_truth
    if isinstance(gt, str):
        try:
            gt = json.loads(gt)
        except json.JSONDecodeError as exc:
            raise ValueError(f"tool-use ground truth is not valid JSON: {exc.msg}") from exc
    if not isinstance(gt, dict):
        raise ValueError(f"tool-use ground truth must be a JSON object, got {type(gt).__name__}")
    name = gt.get("name", gt.get("action"))
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"tool-use ground truth needs a non-empty 'name' (or 'action'), got keys {sorted(gt)}")
    args = gt.get("arguments", gt.get("action_input", {}))
    return name.strip(), _decode_arguments(args, "tool-use ground truth")


def parse_action(text: str) -> tuple[str | None, dict | None, str]:
    """The model's last action as (name, arguments, problem).

    ``name`` is ``None`` when no action is present; ``arguments`` is ``None`` when they are missing or not a
    JSON object, and ``problem`` then says why ('' otherwise).
    """
    calls = _TOOL_CALL.findall(text)
    actions = list(_ACTION.finditer(text))
    last_action_pos = actions[-1].start() if actions else -1
    last_call_pos = text.rfind("<tool_call>") if calls else -1
    if calls and last_call_pos > last_action_pos:
        try:
            call = json.loads(calls[-1])
        except json.JSONDecodeError as exc:
            return None, None, f"the <tool_call> body is not valid JSON ({exc.msg})"
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None, None, "the <tool_call> body needs a string 'name'"
        try:
            return call["name"].strip(), _decode_arguments(call.get("arguments", {}), "tool call"), ""
        except ValueError as exc:
            return call["name"].strip(), None, str(exc)
    if not actions:
        return None, None, ""
    name = actions[-1].group(1).strip().strip("`'\"")
    inputs = [m for m in _ACTION_INPUT.finditer(text) if m.start() > actions[-1].start()]
    if not inputs:
        return name, None, "no 'Action Input:' line after the action"
    rest = text[inputs[0].end():].lstrip()
    rest = re.sub(r"^```(?:json)?\s*", "", rest)
    try:
        args, _ = json.JSONDecoder().raw_decode(rest)
    except json.JSONDecodeError as exc:
        return name, None, f"Action Input is not valid JSON ({exc.msg})"
    if not isinstance(args, dict):
        return name, None, f"Action Input must be a JSON object, got {type(args).__name__}"
    return name, args, ""


def _same(a, b) -> bool:
    """JSON-value equality; strings compared after stripping whitespace."""
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def compare_arguments(expected: dict, got: dict) -> tuple[list[str], list[str], list[str]]:
    """(wrong-valued, missing, unexpected) argument names, each sorted."""
    wrong = sorted(k for k in expected if k in got and not _same(expected[k], got[k]))
    missing = sorted(k for k in expected if k not in got)
    extra = sorted(k for k in got if k not in expected)
    return wrong, missing, extra


def grade_tool_call(solution_str: str, ground_truth, max_feedback_chars: int = MAX_FEEDBACK_CHARS) -> dict:
    """Score 1.0 iff the action name and all arguments match. ``pass_rate`` is the matched fraction of
    (name + expected arguments). Feedback names the mismatching arguments without revealing expected values.

    Raises:
        ValueError: malformed ground truth.
    """
    exp_name, exp_args = parse_expected(ground_truth)
    parts = 1 + len(exp_args)
    name, args, problem = parse_action(solution_str)
    if name is None:
        return result(False, f"No valid action found: {problem}." if problem else NO_ACTION_FEEDBACK,
                      pass_rate=0.0, max_feedback_chars=max_feedback_chars)
    name_ok = name == exp_name
    msgs = [] if name_ok else [f"Wrong action {snippet(name, 100)!r}."]
    if args is None:
        msgs.append(f"Could not read the arguments: {problem}.")
        return result(False, " ".join(msgs), pass_rate=(1.0 if name_ok else 0.0) / parts,
                      max_feedback_chars=max_feedback_chars)
    wrong, missing, extra = compare_arguments(exp_args, args)
    if name_ok and not (wrong or missing or extra):
        return result(True, pass_rate=1.0, max_feedback_chars=max_feedback_chars)
    if name_ok:
        msgs.append(f"Action {name!r} is correct, but the arguments differ:")
    if wrong:
        msgs.append("wrong value for " + ", ".join(repr(k) for k in wrong) + ";")
    if missing:
        msgs.append("missing " + ", ".join(repr(k) for k in missing) + ";")
    if extra:
        msgs.append("unexpected " + ", ".join(repr(k) for k in extra) + ";")
    matched = int(name_ok) + len(exp_args) - len(wrong) - len(missing)
    return result(False, " ".join(msgs).rstrip(";") + ".", pass_rate=matched / parts,
                  max_feedback_chars=max_feedback_chars)
