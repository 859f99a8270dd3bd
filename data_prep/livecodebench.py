"""LiveCodeBench code generation (livecodebench/code_generation_lite) -> <out>/train.parquet, <out>/test.parquet.

Upstream fields: question_title, question_content, platform, question_id, contest_id, contest_date,
starter_code, difficulty, public_test_cases (JSON list of {input, output, testtype}), private_test_cases
(the same as JSON, or base64(zlib(pickle(JSON)))), metadata (JSON; "func_name" for functional tests).

Problems with start-date <= contest_date < end-date are kept (v6 window used by SDPO: 2025-02-01 to
2025-05-01). Both splits hold the same problems: test keeps all of a problem's tests (public + private);
train keeps half of them (at least one), chosen per problem with --seed.

Ground truth: JSON {"tests": [{"input": str, "output": str}, ...], "fn_name": str (functional problems only)}.
With datasets >= 4 the hub repo's loading script cannot run; the default --revision refs/pr/6 (as used by
SDPO) points at a script-free conversion, or pass a local download with --source.
"""

import datetime as dt
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.common import (SkipRow, Report, build_parser, convert, decode_test_cases, field,  # noqa: E402
                              finish, load_source, make_row, stable_rng, text_field, write_splits)

STDIN_INSTRUCTION = ("Write a Python 3 program that solves the problem above. It must read the input from standard "
                     "input and print the answer to standard output. Put the complete program in a single "
                     "```python code block at the end of your answer.")
FUNCTIONAL_INSTRUCTION = ("Solve the problem above in Python 3 by completing the starter code below. Put the "
                          "complete solution (the full class or function) in a single ```python code block at "
                          "the end of your answer.")


def parse_date(value, what="contest_date") -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    if isinstance(value, str) and value.strip():
        try:
            return dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00")).replace(tzinfo=None)
        except ValueError:
            pass
    raise SkipRow(f"{what} {value!r} is not a date")


def _tests(value, what):
    out = []
    for t in decode_test_cases(value):
        if not isinstance(t, dict) or not isinstance(t.get("input"), str) or not isinstance(t.get("output"), str):
            raise SkipRow(f"{what} holds a test without string input/output")
        out.append(t)
    return out


def half_tests(tests, seed, key):
    """Deterministic subset of max(1, n // 2) tests, kept in their original order."""
    n = len(tests)
    keep = sorted(stable_rng(seed, "livecodebench", key).sample(range(n), max(1, n // 2)))
    return [tests[i] for i in keep]


def make_converter(start, end, seed, report, split):
    def convert_row(row, pos):
        qid = str(field(row, "question_id"))
        date = parse_date(field(row, "contest_date"))
        if not (start <= date < end):
            report.remove(split, qid, f"contest_date outside [{start.date()}, {end.date()})")
            return None
        content = text_field(row, "question_content")
        starter = text_field(row, "starter_code", required=False, allow_empty=True) or ""
        meta = field(row, "metadata", required=False, allow_empty=True) or "{}"
        if isinstance(meta, str):
            try:
                meta = json.loads(meta) if meta.strip() else {}
            except json.JSONDecodeError:
                raise SkipRow("metadata is not valid JSON") from None
        if not isinstance(meta, dict):
            raise SkipRow("metadata is not a JSON object")
        tests = _tests(field(row, "public_test_cases", allow_empty=True), "public_test_cases") + \
            _tests(field(row, "private_test_cases"), "private_test_cases")
        if not tests:
            raise SkipRow("no test cases")
        types = {t.get("testtype", "stdin") for t in tests}
        if len(types) != 1 or not types <= {"stdin", "functional"}:
            raise SkipRow(f"unsupported or mixed test types {sorted(types)}")
        functional = types == {"functional"}
        fn_name = meta.get("func_name")
        if functional and not (isinstance(fn_name, str) and fn_name):
            raise SkipRow("functional tests but metadata has no func_name")
        if functional and not starter.strip():
            raise SkipRow("functional tests but no starter_code")

        def gt(ts):
            d = {"tests": [{"input": t["input"], "output": t["output"]} for t in ts]}
            if functional:
                d["fn_name"] = fn_name
            return json.dumps(d, ensure_ascii=False)

        prompt = content.strip() + "\n\n" + (
            f"{FUNCTIONAL_INSTRUCTION}\n\n```python\n{starter.rstrip()}\n```" if functional else STDIN_INSTRUCTION)
        extra = {"question": content, "question_id": qid, "question_title": row.get("question_title"),
                 "platform": row.get("platform"), "contest_id": None if row.get("contest_id") is None
                 else str(row.get("contest_id")), "contest_date": date.isoformat(),
                 "difficulty": row.get("difficulty"), "starter_code": starter,
                 "fn_name": fn_name if functional else None, "num_tests": len(tests)}
        test_row = make_row("livecodebench", prompt, "code", gt(tests), extra)
        train_tests = half_tests(tests, seed, qid)
        train_row = make_row("livecodebench", prompt, "code", gt(train_tests), {**extra, "num_tests": len(train_tests)})
        return {"train": train_row, "test": test_row}
    return convert_row


def main(argv=None) -> Report:
    parser = build_parser(__doc__, "livecodebench/code_generation_lite", default_revision="refs/pr/6")
    parser.add_argument("--start-date", default="2025-02-01", help="keep contest_date >= this (ISO date)")
    parser.add_argument("--end-date", default="2025-05-01", help="keep contest_date < this (ISO date)")
    args = parser.parse_args(argv)
    start, end = parse_date(args.start_date, "--start-date"), parse_date(args.end_date, "--end-date")
    report = Report.from_args(args, argv)
    loaded = load_source(args.source, args.config, args.revision, args.limit)
    pairs = []
    for split in sorted(loaded):
        pairs += convert(loaded[split], make_converter(start, end, args.seed, report, split), split, report,
                         desc=f"livecodebench:{split}", errors=loaded.errors.get(split, ()))
    write_splits(args.out, {"train": [p["train"] for p in pairs], "test": [p["test"] for p in pairs]}, report)
    finish(report)
    return report


if __name__ == "__main__":
    main()
