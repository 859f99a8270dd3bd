"""Code answers (LiveCodeBench, Codeforces): run the last ```python block against tests in the sandbox.

Ground truth (a dict or its JSON string), one of:

* ``[{"input": str, "output": str}, ...]`` -- stdin/stdout tests;
* ``{"tests": [...same...], "fn_name": "twoSum"}`` -- ``fn_name`` switches to LeetCode-style functional tests;
* ``{"inputs": [str, ...], "outputs": [str, ...], "fn_name": optional}`` -- the APPS/PRIME layout.

Functional tests call ``Solution().<fn_name>(*args)``; ``args`` are the JSON-decoded non-empty lines of the test
``input`` (LiveCodeBench layout: one JSON value per argument and line) and the return value is compared with
the JSON-decoded ``output``.

Grading is done here, outside the sandboxed process, from its raw stdout only: nothing a program prints about
itself (pass markers, "All tests passed", exit codes it fakes) counts, and a program that exits early or patches
builtins still has to produce the expected output. Integer and string tokens are compared exactly; the float
tolerance :data:`FLOAT_TOLERANCE` applies only where the expected token is a non-integral number.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from typing import Any

from . import sandbox
from .common import MAX_FEEDBACK_CHARS, result, snippet

logger = logging.getLogger(__name__)

MAX_REPORTED_FAILURES = 2
"""Wrong-answer details (input / expected / got) are shown for at most this many tests."""

DEFAULT_LIMITS = sandbox.SandboxLimits(wall_time_s=6.0, memory_mb=1024, max_processes=16)
"""Per-test limits (a test is one sandboxed process)."""

FLOAT_TOLERANCE = 1e-6

NO_CODE_FEEDBACK = "No code found: put the solution in a ```python fenced code block."
TRUNCATED_FEEDBACK = "Your response was truncated at the maximum length"

_FENCE = re.compile(r"```[ \t]*(python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
RESULT_MARKER = "__SCGRPO_RESULT__"

_FUNCTIONAL_HARNESS = r'''
import json, sys, traceback
_src = open("solution.py", encoding="utf-8").read()
try:
    _code = compile(_src, "solution.py", "exec")
except (SyntaxError, ValueError) as _e:
    sys.stderr.write("".join(traceback.format_exception_only(_e)))
    sys.exit(1)
_ns = {"__name__": "__main__"}
exec("from typing import *\nimport collections, heapq, bisect, itertools, functools, math, string, re\n"
     "from collections import *\nfrom functools import *\nfrom itertools import *\nfrom heapq import *\n"
     "from bisect import *\nfrom math import *", _ns)
exec(_code, _ns)
if "Solution" not in _ns:
    raise NameError("class Solution is not defined")
_args = [json.loads(line) for line in sys.stdin.read().splitlines() if line.strip()]
_out = getattr(_ns["Solution"](), FN_NAME)(*_args)
sys.stdout.write("\n" + MARKER + json.dumps(_out) + "\n")
'''


@dataclasses.dataclass(frozen=True)
class TestCase:
    """One test: ``input`` is stdin (or JSON lines of arguments), ``output`` the expected stdout (or JSON)."""

    input: str
    output: str


@dataclasses.dataclass(frozen=True)
class TestSuite:
    tests: tuple[TestCase, ...]
    fn_name: str | None = None


def extract_code(text: str) -> str | None:
    """The last complete ```python (or ```py / ```python3) fenced block; a bare ``` block is used only when
    there is no python-tagged one. ``None`` when there is no complete block."""
    blocks = [(m.group(1), m.group(2)) for m in _FENCE.finditer(text)]
    tagged = [code for lang, code in blocks if lang]
    untagged = [code for lang, code in blocks if not lang]
    code = tagged[-1] if tagged else (untagged[-1] if untagged else None)
    return code if code is not None and code.strip() else None


def _as_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict, int, float, bool)) or value is None:
        return json.dumps(value)
    raise ValueError(f"{where} must be a string or JSON value, got {type(value).__name__}")


def parse_tests(ground_truth) -> TestSuite:
    """Normalize the accepted ground-truth layouts (module docstring) into a :class:`TestSuite`.

    Raises:
        ValueError: invalid JSON, unknown layout, empty test list, or a test without input/output.
    """
    gt = ground_truth
    if isinstance(gt, (bytes, bytearray)):
        gt = gt.decode("utf-8")
    if isinstance(gt, str):
        try:
            gt = json.loads(gt)
        except json.JSONDecodeError as exc:
            raise ValueError(f"code ground truth is not valid JSON: {exc.msg}") from exc
    fn_name = None
    if isinstance(gt, dict):
        fn_name = gt.get("fn_name") or None
        if "tests" in gt:
            raw = gt["tests"]
        elif "inputs" in gt and "outputs" in gt:
            if len(gt["inputs"]) != len(gt["outputs"]):
                raise ValueError(f"code ground truth has {len(gt['inputs'])} inputs but {len(gt['outputs'])} outputs")
            raw = [{"input": i, "output": o} for i, o in zip(gt["inputs"], gt["outputs"])]
        else:
            raise ValueError(f"code ground truth dict needs 'tests' or 'inputs'/'outputs', got keys {sorted(gt)}")
    elif isinstance(gt, list):
        raw = gt
    else:
        raise ValueError(f"code ground truth must be a JSON list or object, got {type(gt).__name__}")
    if fn_name is not None and not (isinstance(fn_name, str) and fn_name.isidentifier()):
        raise ValueError(f"fn_name must be a Python identifier, got {fn_name!r}")
    if not raw:
        raise ValueError("code ground truth has no tests")
    tests = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict) or "input" not in t or "output" not in t:
            raise ValueError(f"test {i} must be an object with 'input' and 'output', got {t!r:.200}")
        tests.append(TestCase(_as_text(t["input"], f"test {i} input"), _as_text(t["output"], f"test {i} output")))
    return TestSuite(tuple(tests), fn_name)


_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")


def _tokens_equal(expected: str, got: str) -> bool:
    """One output token: exact, except that an expected non-integral number (e.g. ``0.333333``) accepts a
    plain decimal number within :data:`FLOAT_TOLERANCE`, and an expected float-formatted integral value (``2.0``)
    accepts the same value exactly. Integers and strings never get a tolerance (``1.23456789e11`` is not
    ``123456789012``)."""
    if expected == got:
        return True
    if _INTEGER.fullmatch(expected) or not _NUMBER.fullmatch(expected) or not _NUMBER.fullmatch(got):
        return False
    x, y = float(expected), float(got)
    if not (math.isfinite(x) and math.isfinite(y)):
        return False
    if x == int(x):
        return x == y
    return math.isclose(x, y, rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE)


def outputs_match(expected: str, got: str) -> bool:
    """Judge comparison for stdout: whitespace-separated tokens equal (:func:`_tokens_equal`)."""
    exp, out = expected.split(), got.split()
    return len(exp) == len(out) and all(_tokens_equal(e, o) for e, o in zip(exp, out))


def _json_equal(expected, got) -> bool:
    """Functional-test comparison of decoded JSON values: ints, strings, bools and null exactly (``True`` is not
    ``1``), a non-integral expected float within :data:`FLOAT_TOLERANCE`, an integral expected float exactly;
    lists and dicts element-wise. Iterative, so deeply nested values cannot exhaust the stack."""
    stack = [(expected, got)]
    while stack:
        a, b = stack.pop()
        if isinstance(a, float):
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(a):
                return False
            if a == int(a):
                if a != b:
                    return False
            elif not math.isclose(a, b, rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE):
                return False
        elif isinstance(a, list):
            if not isinstance(b, list) or len(a) != len(b):
                return False
            stack.extend(zip(a, b))
        elif isinstance(a, dict):
            if not isinstance(b, dict) or a.keys() != b.keys():
                return False
            stack.extend((a[k], b[k]) for k in a)
        elif type(a) is not type(b) or a != b:
            return False
    return True


def functional_result(stdout: str) -> tuple[bool, Any, str]:
    """(found, decoded return value, printed text before it) from the functional harness' stdout."""
    head, sep, tail = stdout.rpartition(RESULT_MARKER)
    if not sep:
        return False, None, stdout
    try:
        return True, json.loads(tail.strip()), head
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the decoder's recursion limit
        return False, None, stdout


@dataclasses.dataclass
class TestOutcome:
    """Result of one test: ``verdict`` is ``passed`` / ``wrong_answer`` / a non-ok sandbox status."""

    index: int
    verdict: str
    got: str
    run: sandbox.SandboxResult


def _dumps(value) -> str:
    try:
        return json.dumps(value)
    except (ValueError, TypeError, RecursionError):
        return repr(type(value))


def run_test(code: str, suite: TestSuite, index: int, limits: sandbox.SandboxLimits,
             mode: str | None = None) -> TestOutcome:
    """Run ``code`` on test ``index`` of ``suite`` in the sandbox (``mode``: see :func:`sandbox.select_mode`)
    and judge its raw stdout here."""
    test = suite.tests[index]
    if suite.fn_name is None:
        res = sandbox.run_program(code, test.input, limits, mode=mode)
        if not res.ok:
            return TestOutcome(index, res.status, res.stdout, res)
        return TestOutcome(index, "passed" if outputs_match(test.output, res.stdout) else "wrong_answer",
                           res.stdout, res)
    harness = _FUNCTIONAL_HARNESS.replace("FN_NAME", repr(suite.fn_name)).replace("MARKER", repr(RESULT_MARKER))
    res = sandbox.run_program(harness, test.input, limits, files={"solution.py": code}, mode=mode)
    if not res.ok:
        return TestOutcome(index, res.status, res.stdout, res)
    found, value, _printed = functional_result(res.stdout)
    if not found:
        return TestOutcome(index, "wrong_answer", res.stdout, res)
    try:
        expected = json.loads(test.output)
    except (ValueError, RecursionError):
        expected = test.output
    return TestOutcome(index, "passed" if _json_equal(expected, value) else "wrong_answer", _dumps(value), res)


def _failure_detail(outcome: TestOutcome, test: TestCase, limits: sandbox.SandboxLimits) -> str:
    n = outcome.index + 1
    v = outcome.verdict
    if v == "wrong_answer":
        return (f"Wrong answer on test {n}.\nInput:\n{snippet(test.input)}\nExpected:\n{snippet(test.output)}\n"
                f"Got:\n{snippet(outcome.got) or '(no output)'}")
    if v == "timeout":
        return f"Time limit exceeded on test {n} (limit {limits.wall_time_s:g}s).\nInput:\n{snippet(test.input)}"
    if v == "memory":
        return f"Memory limit exceeded on test {n} (limit {limits.memory_mb} MiB).\nInput:\n{snippet(test.input)}"
    if v == "output_limit":
        return f"Output limit exceeded on test {n}."
    if v == "compile_error":
        return "Compilation error:\n" + sandbox.last_lines(outcome.run.stderr, 6)
    rc = outcome.run.returncode
    how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit code {rc}"
    tail = sandbox.last_lines(outcome.run.stderr, 6)
    return f"Runtime error on test {n} ({how}):\n{tail or '(no error output)'}\nInput:\n{snippet(test.input)}"


def judge(code: str, suite: TestSuite, limits: sandbox.SandboxLimits = DEFAULT_LIMITS,
          mode: str | None = None) -> tuple[int, list, int]:
    """Run the tests in order. A compile error stops at once; a time limit skips the remaining tests (they count
    as failed and are reported as skipped).

    Returns:
        (passed count, failing :class:`TestOutcome` list, skipped count).
    """
    passed, failures = 0, []
    for i in range(len(suite.tests)):
        outcome = run_test(code, suite, i, limits, mode)
        if outcome.verdict == "passed":
            passed += 1
            continue
        failures.append(outcome)
        if outcome.verdict in ("compile_error", "timeout"):
            return passed, failures, len(suite.tests) - i - 1
    return passed, failures, 0


def grade_code(solution_str: str, ground_truth, truncated: bool = False,
               limits: sandbox.SandboxLimits | None = None, max_feedback_chars: int = MAX_FEEDBACK_CHARS,
               sandbox_mode: str | None = None) -> dict:
    """Grade a code response: score 1.0 iff every test passes; ``pass_rate`` = passed / total tests.

    Never raises because of what the program does or prints: any failure is score 0 with a feedback string
    (sanitised and capped by :func:`common.result`).

    Args:
        solution_str: the decoded response.
        ground_truth: tests in a layout accepted by :func:`parse_tests`.
        truncated: the response hit the generation length limit (mentioned in the feedback).
        limits: per-test sandbox limits (default :data:`DEFAULT_LIMITS`).
        sandbox_mode: isolation mode (``None``: ``SCGRPO_SANDBOX_MODE`` or bwrap; see :func:`sandbox.select_mode`).

    Raises:
        ValueError: malformed ground truth.
        sandbox.SandboxError: the sandbox cannot run on this host, or it broke after start-up (code rewards fail
            closed and stop training rather than score 0; one-line message).
    """
    suite = parse_tests(ground_truth)
    sandbox.select_mode(sandbox_mode)  # fail closed (one-line SandboxError) before grading anything
    limits = limits or DEFAULT_LIMITS
    code = extract_code(solution_str)
    if code is None:
        msg = (TRUNCATED_FEEDBACK + " before a complete ```python code block was written.") if truncated \
            else NO_CODE_FEEDBACK
        return result(False, msg, pass_rate=0.0, max_feedback_chars=max_feedback_chars)
    try:
        passed, failures, skipped = judge(code, suite, limits, sandbox_mode)
    except sandbox.SandboxError:
        raise
    except Exception as exc:  # noqa: BLE001 - a program must never crash the reward
        logger.warning("code grading failed on a program's output: %r", exc, exc_info=True)
        return result(False, f"Grading failed on your program's output ({type(exc).__name__}).", pass_rate=0.0,
                      max_feedback_chars=max_feedback_chars)
    total = len(suite.tests)
    if passed == total:
        return result(True, pass_rate=1.0, max_feedback_chars=max_feedback_chars)
    parts = [f"{TRUNCATED_FEEDBACK}; the last complete code block was judged."] if truncated else []
    if failures[0].verdict == "compile_error":
        parts.append(_failure_detail(failures[0], suite.tests[0], limits))
    else:
        parts.append(f"Passed {passed}/{total} tests.")
        shown = failures[:MAX_REPORTED_FAILURES]
        parts += [_failure_detail(f, suite.tests[f.index], limits) for f in shown]
        if len(failures) > len(shown):
            parts.append(f"({len(failures) - len(shown)} more failing tests not shown.)")
        if skipped:
            parts.append(f"({skipped} remaining tests were not run after the time limit.)")
    return result(False, "\n".join(parts), pass_rate=passed / total, max_feedback_chars=max_feedback_chars)
