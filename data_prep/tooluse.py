"""ToolUse (the ToolAlpaca-derived set shipped by SDPO as datasets/tooluse/{train,test}.json, JSON lines:
prompt, description, idx, dataset, system, answer, tests, kind, elo) -> <out>/train.parquet, <out>/test.parquet.

``answer`` upstream is a JSON list [{"Action": name, "Action_Input": "<JSON object as a string>"}, ...].
Ground truth here: the JSON object {"name": str, "arguments": object} that ``scgrpo_verl.rewards.tool_use`` grades
(one action per answer); an answer with several actions is reported as invalid, since that grader scores one.
The prompt (tool documentation + Thought/Action/Action Input format + question) is kept verbatim.
There is no hub dataset: pass the folder (or a file) with --source.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.common import (SkipRow, Report, build_parser, convert, field, finish, load_source,  # noqa: E402
                              make_row, text_field, write_splits)


def parse_actions(answer) -> list:
    if isinstance(answer, str):
        try:
            answer = json.loads(answer)
        except json.JSONDecodeError:
            raise SkipRow("answer is not valid JSON") from None
    if isinstance(answer, dict):
        answer = [answer]
    if not isinstance(answer, list) or not answer:
        raise SkipRow("answer is not a non-empty list of actions")
    actions = []
    for a in answer:
        if not isinstance(a, dict):
            raise SkipRow("answer holds a non-object action")
        name = a.get("Action", a.get("name"))
        args = a.get("Action_Input", a.get("arguments", {}))
        if not isinstance(name, str) or not name.strip():
            raise SkipRow("an action has no name")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                raise SkipRow(f"Action_Input of {name!r} is not valid JSON") from None
        if not isinstance(args, dict):
            raise SkipRow(f"Action_Input of {name!r} is not a JSON object")
        actions.append({"name": name.strip(), "arguments": args})
    return actions


def convert_row(row, pos):
    prompt = text_field(row, "prompt")
    actions = parse_actions(field(row, "answer"))
    system = text_field(row, "system", required=False)
    question = prompt.rsplit("\nQuestion:", 1)[1].strip() if "\nQuestion:" in prompt else prompt
    # the tool_use grader scores one action (the response's last): one expected action is written as that object;
    # a multi-action answer stays a list, which the grader rejects, so the row is reported as invalid (not scored 0)
    truth = json.dumps(actions[0] if len(actions) == 1 else actions, ensure_ascii=False, sort_keys=False)
    extra = {"question": question, "reference_answer": truth,
             "upstream_index": None if row.get("idx") is None else str(row.get("idx"))}
    return make_row("tooluse", prompt, "tool", truth, extra, system=system)


def main(argv=None) -> Report:
    args = build_parser(__doc__, None).parse_args(argv)
    report = Report.from_args(args, argv)
    loaded = load_source(args.source, args.config, args.revision, args.limit)
    out = {}
    for split in sorted(loaded):
        name = {"validation": "val"}.get(split, split)
        out[name] = convert(loaded[split], convert_row, split, report, desc=f"tooluse:{split}",
                            errors=loaded.errors.get(split, ()))
    write_splits(args.out, out, report)
    finish(report)
    return report


if __name__ == "__main__":
    main()
