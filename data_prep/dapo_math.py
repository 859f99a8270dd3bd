"""DAPO-Math-17k (BytedTsinghua-SIA/DAPO-Math-17k, already verl-shaped: data_source, prompt, ability,
reward_model, extra_info) -> <out>/train.parquet.

The upstream prompt wraps each question in DAPO's "Answer: $Answer" template; the raw question is
recovered and re-prompted with the boxed-answer instruction used by every math benchmark here.
Upstream repeats each problem many times: rows are de-duplicated by question text (first occurrence
kept; the number removed is reported), then ``--sample N`` draws N problems with ``--seed``
(SC-GRPO used 4,000).
"""

import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.common import (SkipRow, Report, answer_text, build_parser, convert, field, finish,  # noqa: E402
                              load_source, make_row, math_prompt, write_splits)

DAPO_PREFIX = ("Solve the following math problem step by step. The last line of your response should be of the "
               "form Answer: $Answer (without quotes) where $Answer is the answer to the problem.")
DAPO_SUFFIX = 'Remember to put your answer on its own line after "Answer:".'


def raw_question(content: str) -> str:
    text = content.strip()
    if text.startswith(DAPO_PREFIX):
        text = text[len(DAPO_PREFIX):]
    if text.rstrip().endswith(DAPO_SUFFIX):
        text = text.rstrip()[: -len(DAPO_SUFFIX)]
    text = text.strip()
    if not text:
        raise SkipRow("prompt holds no question text")
    return text


def convert_row(row, pos):
    prompt = field(row, "prompt")
    if isinstance(prompt, str):
        content = prompt
    elif isinstance(prompt, list) and prompt:
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if not users or not isinstance(users[-1].get("content"), str):
            raise SkipRow("prompt has no user message with string content")
        content = users[-1]["content"]
    else:
        raise SkipRow(f"prompt is {type(prompt).__name__}, expected a message list")
    reward = field(row, "reward_model")
    if not isinstance(reward, dict):
        raise SkipRow("reward_model is not an object")
    answer = answer_text(reward.get("ground_truth"), "reward_model.ground_truth")
    question = raw_question(content)
    upstream = row.get("extra_info") or {}
    extra = {"question": question, "reference_answer": answer,
             "upstream_index": None if upstream.get("index") is None else str(upstream.get("index"))}
    return make_row("dapo_math", math_prompt(question), "math", answer, extra)


def main(argv=None) -> Report:
    parser = build_parser(__doc__, "BytedTsinghua-SIA/DAPO-Math-17k")
    parser.add_argument("--sample", type=int, default=None, help="keep N de-duplicated problems, drawn with --seed")
    args = parser.parse_args(argv)
    report = Report.from_args(args, argv)
    loaded = load_source(args.source, args.config, args.revision, args.limit)
    seen: dict = {}  # question -> ground truth of its first occurrence (dedupe while reading: 1.8M rows upstream)
    conflicts = 0

    def dedupe(split):
        def fn(row, pos):
            nonlocal conflicts
            r = convert_row(row, pos)
            q = r["extra_info"]["question"]
            if q in seen:
                conflicts += seen[q] != r["reward_model"]["ground_truth"]
                report.remove(split, pos, "duplicate question")
                return None
            seen[q] = r["reward_model"]["ground_truth"]
            return r
        return fn

    unique = []
    for split in sorted(loaded):
        unique += convert(loaded[split], dedupe(split), split, report, desc=f"dapo_math:{split}",
                          errors=loaded.errors.get(split, ()))
    n_dup = sum(c["duplicate question"] for c in report.removed.values())
    report.note(f"dedupe: {len(unique) + n_dup} valid rows -> {len(unique)} unique questions "
                f"({n_dup} duplicates removed, {conflicts} of them with a different answer)")

    if args.sample is not None:
        if args.sample > len(unique):
            report.note(f"--sample {args.sample} > {len(unique)} unique problems: keeping all")
        else:
            keep = sorted(random.Random(args.seed).sample(range(len(unique)), args.sample))
            report.remove("train", "-", f"not sampled (--sample {args.sample}, --seed {args.seed})",
                          n=len(unique) - len(keep))
            unique = [unique[i] for i in keep]
            report.note(f"sampled {len(unique)} problems with seed {args.seed}")
    write_splits(args.out, {"train": unique}, report)
    finish(report)
    return report


if __name__ == "__main__":
    main()
