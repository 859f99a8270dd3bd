"""Shared helpers for the ``data_prep`` scripts.

Every benchmark script follows the same pipeline::

    args    = build_parser(...).parse_args()
    splits  = load_source(args.source, ...)   # {upstream_split: [raw row dict, ...]}
    report  = Report()
    rows    = convert(raw_rows, fn, split=..., report=report)   # SkipRow -> printed + counted
    write_splits(args.out, {"train": rows, ...}, report)        # deterministic parquet

Conventions (verl RL parquet):
    data_source  str
    prompt       list[{"role": str, "content": str}]
    ability      str  ("math" | "code" | "science" | "tool")
    reward_model {"style": "rule", "ground_truth": str}
    extra_info   {"split": str, "index": int, "question": str, "reference_answer": str, ...}

A row that cannot be converted raises :class:`SkipRow`; it is printed with its
reason and counted, never dropped silently. Rows removed on purpose (date window,
level filter, dedupe, sampling) are counted per reason in the final summary
(``--verbose`` also prints each of them).
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import math
import os
import pickle
import random
import re
import sys
import zlib
from typing import Any, Callable, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

MATH_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
LOCAL_EXTENSIONS = (".jsonl", ".json", ".parquet")
# Parquet writer options pinned so that the same rows always give the same bytes.
PARQUET_OPTIONS = dict(
    compression="zstd",
    compression_level=3,
    use_dictionary=True,
    write_statistics=True,
    version="2.6",
    data_page_version="1.0",
    row_group_size=1024,
    store_schema=True,
)


DEFAULT_MAX_INVALID = 0.05
SUMMARY_FILE = "prep_summary.json"


class SkipRow(Exception):
    """Raised by a row converter: the row is invalid and must be skipped (with reason)."""


# --------------------------------------------------------------------------- CLI


def build_parser(description: str, default_source: str | None, default_config: str | None = None,
                 default_revision: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", default=default_source, required=default_source is None,
                   help="hub dataset name (datasets.load_dataset) OR a local file/folder in the upstream "
                        "format (.json / .jsonl / .parquet; a folder holds one file per split, named after the split)")
    p.add_argument("--config", default=default_config, help="hub dataset config name")
    p.add_argument("--revision", default=default_revision, help="hub dataset revision")
    p.add_argument("--out", required=True, help="output folder for <split>.parquet files")
    p.add_argument("--limit", type=int, default=None,
                   help="read at most this many rows from each upstream split (quick runs)")
    p.add_argument("--seed", type=int, default=42, help="seed for every random choice")
    p.add_argument("--verbose", action="store_true", help="also print every row removed by a filter")
    p.add_argument("--max-invalid", type=_fraction, default=DEFAULT_MAX_INVALID,
                   help="fail (exit status 1) when more than this fraction of the rows read is invalid "
                        "(unparseable, or a ground truth the reward function's grader rejects)")
    return p


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text!r}")
    return value


# --------------------------------------------------------------------------- loading


def _read_local_file(path: str) -> tuple[list[Any], list[str]]:
    """Return (rows, errors). A row that cannot be parsed becomes an error string, not an exception."""
    rows: list[Any] = []
    errors: list[str] = []
    if path.endswith(".parquet"):
        return pq.read_table(path).to_pylist(), errors
    with open(path, encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if path.endswith(".json") and stripped.startswith("["):
        data = json.loads(text)
        return list(data), errors
    if path.endswith(".json") and stripped.startswith("{"):
        try:  # a single JSON object holding a list of rows (e.g. {"data": [...]})
            data = json.loads(text)
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) == 1 and all(isinstance(r, dict) for r in lists[0]):
                return list(lists[0]), errors
        except json.JSONDecodeError:
            pass  # JSON lines
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            rows.append(None)
            errors.append(f"{os.path.basename(path)} line {lineno}: invalid JSON ({e.msg})")
    return rows, errors


class Loaded(dict):
    """{upstream_split: list of rows}; rows that failed to parse are ``None`` with a message in ``errors``."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: dict[str, list[str]] = collections.defaultdict(list)


def _split_name(filename: str) -> str:
    stem = filename
    for ext in LOCAL_EXTENSIONS:
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
    # hub-style shards: "train-00000-of-00001" -> "train"
    return stem.split("-")[0] if "-of-" in stem else stem


def program() -> str:
    """``data_prep.<benchmark>``, the module the user ran (``python -m data_prep.<benchmark>``)."""
    name = os.path.splitext(os.path.basename(sys.argv[0] if sys.argv and sys.argv[0] else ""))[0]
    return f"data_prep.{name}" if name and name not in ("-c", "common", "__main__") else "data_prep"


def hub_failure(source: str, error: BaseException) -> str:
    """One line for a hub dataset that cannot be loaded: what failed, and how to give a local copy instead."""
    bench = program().partition(".")[2] or "<benchmark>"
    cause = " ".join(str(error).split())[:200] or type(error).__name__
    return (f"{program()}: error: cannot load the hub dataset {source!r} ({type(error).__name__}: {cause}); "
            f"give a local copy with --source FILE_OR_FOLDER (examples/*.sh: SOURCE_{bench.upper()}=path)")


def load_source(source: str, config: str | None = None, revision: str | None = None,
                limit: int | None = None) -> Loaded:
    """Load a hub dataset or a local file/folder into ``{split: rows}`` (order preserved).

    ``rows`` is a list for local files and a ``datasets.Dataset`` (sized, iterable of dicts) for hub data.
    """
    out = Loaded()
    if os.path.exists(source):
        if os.path.isdir(source):
            files = []
            for root, _dirs, names in os.walk(source):
                files += [os.path.join(root, n) for n in names if n.endswith(LOCAL_EXTENSIONS)]
            files.sort()
            if not files:
                raise SystemExit(f"{program()}: error: --source {source}: no .json/.jsonl/.parquet files under it")
        else:
            files = [source]
        for path in files:
            split = _split_name(os.path.basename(path))
            rows, errors = _read_local_file(path)
            out.setdefault(split, []).extend(rows)
            out.errors[split].extend(errors)
    else:
        import datasets  # imported lazily: local runs do not need the hub machinery

        kwargs = {"revision": revision} if revision else {}
        print(f"{program()}: loading the hub dataset {source!r} (no network? give a local copy with --source)",
              file=sys.stderr, flush=True)
        try:
            dd = datasets.load_dataset(source, config, **kwargs) if config else datasets.load_dataset(source, **kwargs)
        except Exception as error:  # noqa: BLE001 - network, hub and cache errors all end in the same advice
            raise SystemExit(hub_failure(source, error)) from None
        if isinstance(dd, datasets.Dataset):
            dd = datasets.DatasetDict({"train": dd})
        for split in dd:
            ds = dd[split]
            if limit is not None:
                ds = ds.select(range(min(limit, len(ds))))
            out[split] = ds  # a datasets.Dataset: sized, iterates row dicts lazily (no full copy)
        return out
    if limit is not None:
        for split in list(out):
            out[split] = out[split][:limit]
    return out


# --------------------------------------------------------------------------- reporting


class Report:
    """Counts rows read / written / skipped (invalid) / removed (filters, dedupe) per split."""

    def __init__(self, verbose: bool = False, stream=None, max_invalid: float = DEFAULT_MAX_INVALID,
                 out_dir: str | None = None, argv: Sequence[str] | None = None) -> None:
        self.verbose = verbose
        self.max_invalid = max_invalid
        self.out_dir = out_dir
        self.argv = list(argv) if argv is not None else None
        self.empty: list[str] = []  # splits with no row left (not written)
        self.stream = stream or sys.stdout
        self.read: collections.Counter = collections.Counter()
        self.written: dict[str, int] = {}
        self.skipped: dict[str, list[tuple[Any, str]]] = collections.defaultdict(list)
        self.removed: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.notes: list[str] = []

    @classmethod
    def from_args(cls, args: argparse.Namespace, argv: Sequence[str] | None = None) -> "Report":
        """A report that knows ``--out`` (where the JSON summary goes) and ``--max-invalid``."""
        return cls(args.verbose, max_invalid=args.max_invalid, out_dir=args.out,
                   argv=list(sys.argv[1:] if argv is None else argv))

    def _print(self, msg: str) -> None:
        print(msg, file=self.stream, flush=True)

    def skip(self, split: str, row_id: Any, reason: str) -> None:
        self.skipped[split].append((row_id, reason))
        tqdm.write(f"SKIP [{split}] row {row_id}: {reason}", file=self.stream)

    def remove(self, split: str, row_id: Any, reason: str, n: int = 1) -> None:
        self.removed[split][reason] += n
        if self.verbose:
            tqdm.write(f"FILTER [{split}] row {row_id}: {reason}", file=self.stream)

    def note(self, msg: str) -> None:
        self.notes.append(msg)
        self._print(msg)

    def summary(self) -> str:
        lines = ["", "=== summary (row numbers are 0-based positions in the upstream split) ==="]
        for s in sorted(set(self.read) | set(self.skipped) | set(self.removed)):
            n_skip = len(self.skipped.get(s, []))
            n_rm = sum(self.removed.get(s, {}).values())
            lines.append(f"input  [{s}]: {self.read.get(s, 0)} rows read, {n_skip} skipped (invalid), "
                         f"{n_rm} removed (filters / dedupe / sampling)")
            for reason, n in sorted(self.removed.get(s, {}).items()):
                lines.append(f"    removed {n}: {reason}")
            for row_id, reason in self.skipped.get(s, []):
                lines.append(f"    skipped row {row_id}: {reason}")
        for s, n in sorted(self.written.items()):
            lines.append(f"output [{s}]: {n} rows written")
        for s in self.empty:
            lines.append(f"output [{s}]: no row left, not written")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


    def invalid_fraction(self) -> float:
        read = sum(self.read.values())
        return sum(len(v) for v in self.skipped.values()) / read if read else 0.0

    def skips_by_reason(self) -> dict[str, int]:
        """Skip counts per reason, with the row-specific values (quoted text, numbers) folded."""
        counts: collections.Counter = collections.Counter()
        for rows in self.skipped.values():
            for _row_id, reason in rows:
                folded = re.sub(r"'[^']*'|\"[^\"]*\"", "<value>", reason)
                counts[re.sub(r"\d+", "N", folded)] += 1
        return dict(sorted(counts.items()))

    def to_json(self) -> dict:
        return {
            "command": self.argv,
            "rows_in": dict(sorted(self.read.items())),
            "rows_out": dict(sorted(self.written.items())),
            "empty_splits": list(self.empty),
            "skipped": sum(len(v) for v in self.skipped.values()),
            "skipped_by_reason": self.skips_by_reason(),
            "removed_by_reason": {s: dict(sorted(c.items())) for s, c in sorted(self.removed.items())},
            "invalid_fraction": round(self.invalid_fraction(), 6),
            "max_invalid": self.max_invalid,
            "skipped_rows": [{"split": s, "row": row_id, "reason": reason}
                             for s, rows in sorted(self.skipped.items()) for row_id, reason in rows][:MAX_LISTED_SKIPS],
            "notes": list(self.notes),
        }

    def failure(self) -> str | None:
        """Why this run must exit non-zero, or None."""
        if not self.written and not self.empty:
            return "no output split was written"
        if self.empty:
            return (f"no row survived in split(s) {', '.join(self.empty)}; "
                    f"skips by reason: {self.skips_by_reason() or 'none (every row was filtered out)'}")
        fraction = self.invalid_fraction()
        if fraction > self.max_invalid:
            n = sum(len(v) for v in self.skipped.values())
            return (f"{n} of {sum(self.read.values())} rows ({fraction:.1%}) are invalid, more than --max-invalid "
                    f"{self.max_invalid:g} allows; skips by reason: {self.skips_by_reason()}")
        return None


MAX_LISTED_SKIPS = 1000


# --------------------------------------------------------------------------- field helpers


def field(row: Mapping[str, Any], *names: str, required: bool = True, allow_empty: bool = False) -> Any:
    """First present field among ``names``; raises SkipRow if missing (or an empty string)."""
    if not isinstance(row, Mapping):
        raise SkipRow(f"row is {type(row).__name__}, expected an object")
    for name in names:
        if name in row and row[name] is not None:
            value = row[name]
            if isinstance(value, str) and not value.strip() and not allow_empty:
                raise SkipRow(f"field '{name}' is empty")
            return value
    if required:
        raise SkipRow("missing field " + " / ".join(f"'{n}'" for n in names))
    return None


def text_field(row: Mapping[str, Any], *names: str, required: bool = True, allow_empty: bool = False) -> str | None:
    value = field(row, *names, required=required, allow_empty=allow_empty)
    if value is None:
        return None
    if not isinstance(value, str):
        raise SkipRow(f"field '{names[0]}' is {type(value).__name__}, expected a string")
    return value


def answer_text(value: Any, name: str = "answer") -> str:
    """Normalise a final answer (str / int / integral float) to a non-empty string."""
    if isinstance(value, bool):
        raise SkipRow(f"field '{name}' is a boolean")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SkipRow(f"field '{name}' is not finite")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise SkipRow(f"field '{name}' is empty or has type {type(value).__name__}")


def make_row(data_source: str, question_prompt: str, ability: str, ground_truth: str,
             extra_info: Mapping[str, Any], system: str | None = None) -> dict:
    """One verl row; ``split`` and ``index`` are filled in by :func:`write_splits`."""
    prompt = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question_prompt}]
    return {
        "data_source": data_source,
        "prompt": prompt,
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": dict(extra_info),
    }


def math_prompt(question: str) -> str:
    return question.strip() + " " + MATH_INSTRUCTION


def stable_rng(seed: int, *keys: Any) -> random.Random:
    """A Random seeded from (seed, keys); str seeds are hashed with sha512, so this is run-to-run stable."""
    return random.Random(":".join([str(seed)] + [str(k) for k in keys]))


def decode_test_cases(value: Any) -> list:
    """LiveCodeBench-style test lists: a JSON string, or base64(zlib(pickle(JSON string)))."""
    if isinstance(value, list):
        return value
    if not isinstance(value, str) or not value.strip():
        raise SkipRow("test cases are empty")
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        try:
            data = pickle.loads(zlib.decompress(base64.b64decode(value, validate=False)))
            if isinstance(data, (bytes, str)):
                data = json.loads(data)
        except Exception as e:  # noqa: BLE001 - anything undecodable is a skip reason
            raise SkipRow(f"test cases are neither JSON nor base64-zlib-pickle "
                          f"({type(e).__name__}: {str(e)[:60]})") from None
    if not isinstance(data, list):
        raise SkipRow(f"test cases decode to {type(data).__name__}, expected a list")
    return data


# --------------------------------------------------------------------------- conversion


def convert(rows: Sequence[Any], fn: Callable[[Any, int], dict | None], split: str, report: Report,
            desc: str | None = None, errors: Iterable[str] = ()) -> list[dict]:
    """Apply ``fn(row, position)`` to every row with a progress bar.

    ``fn`` returns a verl row, returns ``None`` after calling ``report.remove`` (a filter), or raises
    :class:`SkipRow` (invalid row: printed with its reason). ``None`` rows (parse failures from local
    files) are skipped with the matching message from ``errors``.
    """
    errors = list(errors)
    out = []
    report.read[split] += len(rows)
    for pos, row in enumerate(tqdm(rows, desc=desc or split, unit="row", file=sys.stderr,
                                   mininterval=1.0, disable=None)):
        if row is None:
            report.skip(split, pos, errors.pop(0) if errors else "unparseable row")
            continue
        try:
            rec = fn(row, pos)
            if rec is not None:
                check_ground_truth(rec)
        except SkipRow as e:
            report.skip(split, _row_id(pos, row), str(e))
            continue
        if rec is not None:
            out.append(rec)
    return out


def _row_id(pos: int, row: Any) -> Any:
    """The upstream position, with the row's own id when it has one (``12 (id 1234)``)."""
    if isinstance(row, Mapping):
        for key in ("id", "idx", "question_id", "problem_id", "task_id"):
            if row.get(key) is not None and not isinstance(row.get(key), (dict, list)):
                return f"{pos} (id {row[key]})"
    return pos


def check_ground_truth(rec: Mapping[str, Any]) -> None:
    """Run the grader that will score ``rec`` (a verl row, or a dict of them) (``scgrpo_verl.rewards``, by its ``data_source``) on its ground truth;
    raises :class:`SkipRow` with the grader's reason when it cannot use it (such a row would only ever score 0)."""
    from scgrpo_verl.rewards import ground_truth_problem

    rows = [rec] if "data_source" in rec else list(rec.values())  # livecodebench returns {"train": row, "test": row}
    for row in rows:
        problem = ground_truth_problem(row["data_source"], row["reward_model"]["ground_truth"])
        if problem is not None:
            raise SkipRow(f"ground truth rejected by the grader: {problem}")


# --------------------------------------------------------------------------- writing


def _large(t: pa.DataType) -> pa.DataType:
    """Strings become large_string (>2 GiB columns, e.g. code tests, stay writable)."""
    if pa.types.is_string(t):
        return pa.large_string()
    if pa.types.is_list(t):
        return pa.list_(_large(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _large(f.type)) for f in t])
    return t


def _normalise_extra(rows: list[dict]) -> None:
    """Give every row the same extra_info keys (first-seen order), missing ones as None."""
    keys: dict[str, None] = {}
    for r in rows:
        for k in r["extra_info"]:
            keys.setdefault(k, None)
    for r in rows:
        r["extra_info"] = {k: r["extra_info"].get(k) for k in keys}


BASE_SCHEMA = pa.schema([
    ("data_source", pa.large_string()),
    ("prompt", pa.list_(pa.struct([("role", pa.large_string()), ("content", pa.large_string())]))),
    ("ability", pa.large_string()),
    ("reward_model", pa.struct([("style", pa.large_string()), ("ground_truth", pa.large_string())])),
])


def to_table(rows: list[dict]) -> pa.Table:
    _normalise_extra(rows)
    if rows:
        extra = pa.array([r["extra_info"] for r in rows])
        extra_type = _large(extra.type)
    else:
        extra_type = pa.struct([("split", pa.large_string()), ("index", pa.int64())])
    schema = BASE_SCHEMA.append(pa.field("extra_info", extra_type))
    cols = {name: [r[name] for r in rows] for name in schema.names}
    return pa.table({name: pa.array(cols[name], type=schema.field(name).type) for name in schema.names},
                    schema=schema)


def write_parquet(rows: list[dict], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    table = to_table(rows)
    tmp = path + ".tmp"
    pq.write_table(table, tmp, **PARQUET_OPTIONS)
    os.replace(tmp, path)


def write_splits(out_dir: str, splits: Mapping[str, list[dict]], report: Report, label: str | None = None) -> None:
    """Fill ``extra_info.split`` / ``extra_info.index`` and write ``<out_dir>/<split>.parquet``."""
    for split, rows in splits.items():
        key = f"{label}/{split}" if label else split
        if not rows:
            report.empty.append(key)
            tqdm.write(f"no row left for {key}: {split}.parquet not written", file=report.stream)
            continue
        for i, r in enumerate(rows):
            r["extra_info"] = {"split": split, "index": i, **{k: v for k, v in r["extra_info"].items()
                                                              if k not in ("split", "index")}}
        path = os.path.join(out_dir, f"{split}.parquet")
        write_parquet(rows, path)
        report.written[key] = len(rows)
        tqdm.write(f"wrote {len(rows)} rows -> {path}", file=report.stream)


def finish(report: Report) -> None:
    """Print the summary, write ``<out>/prep_summary.json`` (rows in / out, skips by reason) and exit with status 1
    and one line on stderr when no row survived or too many rows are invalid (:meth:`Report.failure`)."""
    print(report.summary(), file=report.stream, flush=True)
    if report.out_dir:
        os.makedirs(report.out_dir, exist_ok=True)
        path = os.path.join(report.out_dir, SUMMARY_FILE)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(report.to_json(), handle, indent=1, sort_keys=False, default=str)
            handle.write("\n")
        print(f"summary -> {path}", file=report.stream, flush=True)
    problem = report.failure()
    if problem:
        raise SystemExit(f"data_prep: error: {problem}")


# --------------------------------------------------------------------------- shared benchmark logic


def run_math_eval(data_source: str, description: str, default_source: str, question_keys: Sequence[str],
                  answer_keys: Sequence[str] = ("answer",), solution_keys: Sequence[str] = ("solution",),
                  meta_keys: Sequence[str] = (), default_config: str | None = None,
                  argv: Sequence[str] | None = None) -> Report:
    """Evaluation-only math benchmarks (MATH-500, AIME, AMC): every upstream split -> ``test.parquet``."""
    args = build_parser(description, default_source, default_config).parse_args(argv)
    report = Report.from_args(args, argv)
    loaded = load_source(args.source, args.config, args.revision, args.limit)

    def fn(row: Any, pos: int) -> dict:
        question = text_field(row, *question_keys)
        answer = answer_text(field(row, *answer_keys), answer_keys[0])
        extra = {"question": question, "reference_answer": answer}
        solution = field(row, *solution_keys, required=False) if solution_keys else None
        if isinstance(solution, str) and solution.strip():
            extra["reference_solution"] = solution
        for k in meta_keys:
            v = row.get(k)
            extra[k] = None if v is None else str(v)
        return make_row(data_source, math_prompt(question), "math", answer, extra)

    rows: list[dict] = []
    for split in sorted(loaded):
        rows += convert(loaded[split], fn, split, report, desc=f"{data_source}:{split}",
                        errors=loaded.errors.get(split, ()))
    write_splits(args.out, {"test": rows}, report)
    finish(report)
    return report
