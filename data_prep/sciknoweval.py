"""SciKnowEval L3 multiple choice (hicai-zju/SciKnowEval: question, choices {text, label}, answerKey,
type, domain, details {level, task, subtask}) -> <out>/<domain>/train.parquet, <out>/<domain>/test.parquet.

Keeps details.level == L3 and the MCQ types (mcq-4-choices, mcq-2-choices), per domain (Biology,
Chemistry, Material, Physics by default), then splits each domain 90/10 into train/test with --seed
(default 42). Ground truth is the answer letter; the prompt lists the options as "A. ...".
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.common import (SkipRow, Report, build_parser, convert, field, finish, load_source,  # noqa: E402
                              make_row, stable_rng, text_field, write_splits)

MCQ_TYPES = ("mcq-4-choices", "mcq-2-choices")
INSTRUCTION = ("Answer the multiple-choice question above. Let's think step by step and output the letter of the "
               "correct option within \\boxed{}.")


def domain_dir(domain: str) -> str:
    return domain.strip().lower().replace(" ", "_")


def make_converter(report, split, domains, level, types):
    def convert_row(row, pos):
        kind = field(row, "type")
        details = field(row, "details")
        if not isinstance(details, dict):
            raise SkipRow("details is not an object")
        if details.get("level") != level:
            report.remove(split, pos, f"level {details.get('level')!r} != {level}")
            return None
        if kind not in types:
            report.remove(split, pos, f"type {kind!r} is not multiple choice")
            return None
        domain = text_field(row, "domain")
        if domain_dir(domain) not in domains:
            report.remove(split, pos, f"domain {domain!r} not selected")
            return None
        question = text_field(row, "question")
        choices = field(row, "choices")
        if not isinstance(choices, dict) or not isinstance(choices.get("text"), list) \
                or not isinstance(choices.get("label"), list):
            raise SkipRow("choices is not {text: [...], label: [...]}")
        texts, labels = choices["text"], choices["label"]
        if len(texts) != len(labels) or len(labels) < 2:
            raise SkipRow(f"choices has {len(texts)} texts for {len(labels)} labels")
        if not all(isinstance(x, str) for x in texts + labels) or len(set(labels)) != len(labels):
            raise SkipRow("choices hold non-string or repeated entries")
        answer = text_field(row, "answerKey").strip()
        if answer not in labels:
            raise SkipRow(f"answerKey {answer!r} is not one of the labels {labels}")
        options = "\n".join(f"{lab}. {txt}" for lab, txt in zip(labels, texts))
        prompt = f"{question.strip()}\n\n{options}\n\n{INSTRUCTION}"
        extra = {"question": question, "reference_answer": answer,
                 "reference_answer_text": texts[labels.index(answer)], "choices": options,
                 "domain": domain, "level": details.get("level"), "type": kind,
                 "task": details.get("task"), "subtask": details.get("subtask")}
        return make_row("sciknoweval", prompt, "science", answer, extra)
    return convert_row


def split_train_test(rows, seed, domain, test_fraction):
    """Shuffle with (seed, domain); test gets round(n * fraction) rows (at least 1 when n >= 2)."""
    n = len(rows)
    n_test = int(round(n * test_fraction))
    if n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    order = list(range(n))
    stable_rng(seed, "sciknoweval", domain).shuffle(order)
    test_idx = set(order[:n_test])
    return ([r for i, r in enumerate(rows) if i not in test_idx], [r for i, r in enumerate(rows) if i in test_idx])


def main(argv=None) -> Report:
    parser = build_parser(__doc__, "hicai-zju/SciKnowEval")
    parser.add_argument("--domains", default="Biology,Chemistry,Material,Physics",
                        help="comma-separated domains (case-insensitive)")
    parser.add_argument("--level", default="L3")
    parser.add_argument("--types", default=",".join(MCQ_TYPES), help="comma-separated question types to keep")
    parser.add_argument("--test-fraction", type=float, default=0.1)
    args = parser.parse_args(argv)
    domains = [domain_dir(d) for d in args.domains.split(",") if d.strip()]
    types = tuple(t.strip() for t in args.types.split(",") if t.strip())
    report = Report.from_args(args, argv)
    loaded = load_source(args.source, args.config, args.revision, args.limit)
    rows = []
    for split in sorted(loaded):
        rows += convert(loaded[split], make_converter(report, split, domains, args.level, types), split, report,
                        desc=f"sciknoweval:{split}", errors=loaded.errors.get(split, ()))
    for d in domains:
        mine = [r for r in rows if domain_dir(r["extra_info"]["domain"]) == d]
        if not mine:
            report.note(f"domain {d}: no rows left after filtering, nothing written")
            continue
        train, test = split_train_test(mine, args.seed, d, args.test_fraction)
        write_splits(os.path.join(args.out, d), {"train": train, "test": test}, report, label=d)
    finish(report)
    return report


if __name__ == "__main__":
    main()
