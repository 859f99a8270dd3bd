"""Codeforces (open-r1/codeforces: id, contest_id, title, description, input_format, output_format,
interaction_format, note, examples, official_tests, time_limit, memory_limit, rating, input_mode, ...)
-> <out>/test.parquet (out-of-domain evaluation only; by default the upstream "test" split).

Tests are the official tests (falling back to the statement examples when a problem has none).
Interactive problems and problems that read/write files are removed (they cannot be judged by
stdin/stdout comparison) and counted in the summary.
Ground truth: JSON {"tests": [{"input": str, "output": str}, ...]}.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.common import (SkipRow, Report, build_parser, convert, field, finish, load_source,  # noqa: E402
                              make_row, text_field, write_splits)

INSTRUCTION = ("Write a Python 3 program that solves the problem above. It must read the input from standard "
               "input and print the answer to standard output. Put the complete program in a single "
               "```python code block at the end of your answer.")


def _io_list(value, what):
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise SkipRow(f"{what} is not valid JSON") from None
    if not isinstance(value, list):
        raise SkipRow(f"{what} is {type(value).__name__}, expected a list")
    for t in value:
        if not isinstance(t, dict) or not isinstance(t.get("input"), str) or not isinstance(t.get("output"), str):
            raise SkipRow(f"{what} holds a test without string input/output")
    return [{"input": t["input"], "output": t["output"]} for t in value]


def _num(row, key):
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SkipRow(f"field '{key}' is {type(value).__name__}, expected a number")
    return value


def statement(row, examples):
    parts = [f"# {text_field(row, 'title')}"]
    limits = []
    if _num(row, "time_limit") is not None:
        limits.append(f"time limit per test: {row['time_limit']:g} seconds")
    if _num(row, "memory_limit") is not None:
        limits.append(f"memory limit per test: {row['memory_limit']:g} megabytes")
    if limits:
        parts.append("; ".join(limits).capitalize())
    parts.append(text_field(row, "description"))
    for key, title in (("input_format", "Input"), ("output_format", "Output")):
        text = text_field(row, key, required=False, allow_empty=True)
        if text and text.strip():
            parts.append(f"## {title}\n\n{text.strip()}")
    for i, ex in enumerate(examples, 1):
        parts.append(f"## Example {i}\n\nInput:\n```\n{ex['input'].rstrip()}\n```\n"
                     f"Output:\n```\n{ex['output'].rstrip()}\n```")
    note = row.get("note")
    if isinstance(note, str) and note.strip():
        parts.append(f"## Note\n\n{note.strip()}")
    return "\n\n".join(parts)


def make_converter(report, split):
    def convert_row(row, pos):
        pid = str(field(row, "id"))
        if isinstance(row.get("interaction_format"), str) and row["interaction_format"].strip():
            report.remove(split, pid, "interactive problem")
            return None
        if row.get("input_mode") not in (None, "", "stdio"):
            report.remove(split, pid, f"input_mode {row.get('input_mode')!r} (not stdin/stdout)")
            return None
        examples = _io_list(row.get("examples"), "examples")
        tests = _io_list(row.get("official_tests"), "official_tests") or examples
        if not tests:
            raise SkipRow("no official_tests and no examples")
        text = statement(row, examples)
        extra = {"question": text_field(row, "description"), "problem_id": pid,
                 "contest_id": None if row.get("contest_id") is None else str(row["contest_id"]),
                 "title": row.get("title"),
                 "rating": None if _num(row, "rating") is None else int(row["rating"]),
                 "time_limit": None if _num(row, "time_limit") is None else float(row["time_limit"]),
                 "memory_limit": None if _num(row, "memory_limit") is None else float(row["memory_limit"]),
                 "official_tests_complete": row.get("official_tests_complete"),
                 "num_tests": len(tests)}
        return make_row("codeforces", text + "\n\n" + INSTRUCTION, "code",
                        json.dumps({"tests": tests}, ensure_ascii=False), extra)
    return convert_row


def main(argv=None) -> Report:
    parser = build_parser(__doc__, "open-r1/codeforces")
    parser.add_argument("--splits", default="test",
                        help="comma-separated upstream splits to read ('all' for every split); all go to test.parquet")
    args = parser.parse_args(argv)
    report = Report.from_args(args, argv)
    loaded = load_source(args.source, args.config, args.revision, args.limit)
    wanted = sorted(loaded) if args.splits == "all" else [s for s in args.splits.split(",") if s]
    rows = []
    for split in sorted(loaded):
        if split not in wanted:
            report.note(f"ignoring upstream split '{split}' ({len(loaded[split])} rows); see --splits")
            continue
        rows += convert(loaded[split], make_converter(report, split), split, report, desc=f"codeforces:{split}",
                        errors=loaded.errors.get(split, ()))
    for split in wanted:
        if split not in loaded:
            report.note(f"upstream split '{split}' not found (have: {sorted(loaded)})")
    write_splits(args.out, {"test": rows}, report)
    finish(report)
    return report


if __name__ == "__main__":
    main()
