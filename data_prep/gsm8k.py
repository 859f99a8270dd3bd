"""GSM8K (openai/gsm8k, config "main": question / answer) -> <out>/train.parquet, <out>/test.parquet.

Ground truth is the number after "####" (thousands separators removed); the full worked answer is kept
as extra_info.reference_solution.
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.common import (SkipRow, Report, build_parser, convert, finish, load_source, make_row,  # noqa: E402
                              math_prompt, text_field, write_splits)

_FINAL = re.compile(r"####\s*(.+?)\s*$")


def gsm8k_answer(answer: str) -> str:
    m = _FINAL.search(answer.strip())
    if not m:
        raise SkipRow("answer has no '#### <number>' line")
    final = m.group(1).replace(",", "").replace("$", "").strip()
    if not re.fullmatch(r"-?\d+(\.\d+)?", final):
        raise SkipRow(f"final answer {final!r} is not a number")
    return final


def convert_row(row, pos):
    question = text_field(row, "question")
    answer = text_field(row, "answer")
    final = gsm8k_answer(answer)
    solution = answer.split("####")[0].strip()
    extra = {"question": question, "reference_answer": final, "reference_solution": solution}
    return make_row("gsm8k", math_prompt(question), "math", final, extra)


def main(argv=None) -> Report:
    args = build_parser(__doc__, "openai/gsm8k", default_config="main").parse_args(argv)
    report = Report.from_args(args, argv)
    loaded = load_source(args.source, args.config, args.revision, args.limit)
    out = {}
    for split in ("train", "test"):
        if split not in loaded:
            report.note(f"upstream split '{split}' not found (have: {sorted(loaded)}); {split}.parquet not written")
            continue
        out[split] = convert(loaded[split], convert_row, split, report, desc=f"gsm8k:{split}",
                             errors=loaded.errors.get(split, ()))
    for extra_split in sorted(set(loaded) - {"train", "test"}):
        report.note(f"ignoring upstream split '{extra_split}' ({len(loaded[extra_split])} rows)")
    write_splits(args.out, out, report)
    finish(report)
    return report


if __name__ == "__main__":
    main()
