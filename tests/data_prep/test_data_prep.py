"""Tests for the data_prep/ benchmark -> verl parquet scripts (offline, on hand-written fixtures)."""

import base64
import importlib
import json
import os
import pickle
import subprocess
import sys
import zlib

import pyarrow.parquet as pq
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "data_prep")
sys.path.insert(0, ROOT)

from data_prep import common  # noqa: E402

COLUMNS = ["data_source", "prompt", "ability", "reward_model", "extra_info"]
ABILITY = {"gsm8k": "math", "math500": "math", "aime2024": "math", "aime2025": "math", "amc23": "math",
           "dapo_math": "math", "livecodebench": "code", "codeforces": "code", "sciknoweval": "science",
           "tooluse": "tool"}

# script -> ({output file relative to --out: rows}, number of invalid rows that must be reported as SKIP)
EXPECTED = {
    "gsm8k": ({"train.parquet": 2, "test.parquet": 2}, 2),
    "math500": ({"test.parquet": 3}, 1),
    "aime2024": ({"test.parquet": 3}, 1),
    "aime2025": ({"test.parquet": 3}, 0),
    "amc23": ({"test.parquet": 3}, 1),
    "dapo_math": ({"train.parquet": 3}, 1),
    "livecodebench": ({"train.parquet": 3, "test.parquet": 3}, 1),
    "codeforces": ({"test.parquet": 2}, 1),
    "sciknoweval": ({"chemistry/train.parquet": 9, "chemistry/test.parquet": 1,
                     "physics/train.parquet": 2, "physics/test.parquet": 1}, 1),
    "tooluse": ({"train.parquet": 1, "test.parquet": 2}, 2),  # + the two-action answer the grader cannot score
}


def run(name, out, *extra, capsys=None):
    module = importlib.import_module(f"data_prep.{name}")
    # the fixtures hold invalid rows on purpose: --max-invalid 1 lets them through (its own tests are below)
    report = module.main(["--source", os.path.join(FIXTURES, name), "--out", str(out), "--max-invalid", "1", *extra])
    text = capsys.readouterr().out if capsys is not None else ""
    return report, text


def rows_of(path):
    return pq.read_table(path).to_pylist()


def output_files(out):
    return sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs
                  if f.endswith(".parquet"))


def check_ground_truth(name, gt):
    assert isinstance(gt, str) and gt.strip()
    if ABILITY[name] == "code":
        d = json.loads(gt)
        assert set(d) <= {"tests", "fn_name"} and d["tests"]
        assert all(isinstance(t["input"], str) and isinstance(t["output"], str) for t in d["tests"])
    elif name == "tooluse":
        action = json.loads(gt)
        assert isinstance(action["name"], str) and isinstance(action["arguments"], dict)
    elif name == "sciknoweval":
        assert gt in "ABCD" and len(gt) == 1


def check_schema(name, path, split):
    table = pq.read_table(path)
    assert table.column_names == COLUMNS
    assert table.schema.metadata is None or b"pandas" not in table.schema.metadata
    for i, r in enumerate(table.to_pylist()):
        assert r["data_source"] == name
        assert r["ability"] == ABILITY[name]
        assert isinstance(r["prompt"], list) and r["prompt"]
        assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) and m["content"]
                   for m in r["prompt"])
        assert r["prompt"][-1]["role"] == "user"
        assert [m["role"] for m in r["prompt"][:-1]] in ([], ["system"])
        assert r["reward_model"]["style"] == "rule"
        check_ground_truth(name, r["reward_model"]["ground_truth"])
        extra = r["extra_info"]
        assert extra["split"] == split and extra["index"] == i
        assert isinstance(extra["question"], str) and extra["question"]
        if ABILITY[name] == "math":
            assert extra["reference_answer"] == r["reward_model"]["ground_truth"]
            assert common.MATH_INSTRUCTION in r["prompt"][-1]["content"]
            assert r["prompt"][-1]["content"].startswith(extra["question"].strip())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_script_on_fixture(name, tmp_path, capsys):
    expected, n_skips = EXPECTED[name]
    report, text = run(name, tmp_path, capsys=capsys)
    assert output_files(tmp_path) == sorted(expected)
    for rel, n in expected.items():
        path = os.path.join(tmp_path, rel)
        assert len(rows_of(path)) == n, rel
        check_schema(name, path, os.path.basename(rel).split(".")[0])
        assert f"wrote {n} rows -> {path}" in text
    # every invalid row is printed with a reason and counted
    skip_lines = [ln for ln in text.splitlines() if ln.startswith("SKIP [")]
    assert len(skip_lines) == n_skips == sum(len(v) for v in report.skipped.values())
    assert all(": " in ln.split("]", 1)[1] for ln in skip_lines)
    assert "=== summary" in text
    # nothing disappears: rows read == rows kept + skipped + removed
    read = sum(report.read.values())
    kept = sum(expected.values()) if name not in ("livecodebench",) else expected["test.parquet"]
    removed = sum(sum(c.values()) for c in report.removed.values())
    assert read == kept + n_skips + removed


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_deterministic_bytes(name, tmp_path, capsys):
    run(name, tmp_path / "a", capsys=capsys)
    run(name, tmp_path / "b", capsys=capsys)
    files = output_files(tmp_path / "a")
    assert files and files == output_files(tmp_path / "b")
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_cli_entry_point(tmp_path):
    """The scripts run as plain files (python data_prep/x.py) and as modules (python -m data_prep.x)."""
    for i, cmd in enumerate((["data_prep/gsm8k.py"], ["-m", "data_prep.gsm8k"])):
        out = tmp_path / str(i)
        proc = subprocess.run([sys.executable, *cmd, "--source", os.path.join(FIXTURES, "gsm8k"), "--out", str(out),
                               "--limit", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert len(rows_of(out / "train.parquet")) == 1 and len(rows_of(out / "test.parquet")) == 1
        assert "output [train]: 1 rows written" in proc.stdout
    assert (tmp_path / "0" / "train.parquet").read_bytes() == (tmp_path / "1" / "train.parquet").read_bytes()


def test_gsm8k_ground_truth(tmp_path, capsys):
    run("gsm8k", tmp_path, capsys=capsys)
    assert [r["reward_model"]["ground_truth"] for r in rows_of(tmp_path / "train.parquet")] == ["31", "3600"]
    assert [r["reward_model"]["ground_truth"] for r in rows_of(tmp_path / "test.parquet")] == ["150", "-15"]
    first = rows_of(tmp_path / "train.parquet")[0]["extra_info"]
    assert "####" not in first["reference_solution"] and "36 - 5" in first["reference_solution"]


def test_math_eval_answers_and_formats(tmp_path, capsys):
    run("amc23", tmp_path / "amc", capsys=capsys)  # float answers 27.0 / 0.5 and a string answer
    assert [r["reward_model"]["ground_truth"] for r in rows_of(tmp_path / "amc" / "test.parquet")] == ["27", "0.5", "5"]
    run("aime2024", tmp_path / "aime", capsys=capsys)  # JSON-array file
    rows = rows_of(tmp_path / "aime" / "test.parquet")
    assert [r["extra_info"]["id"] for r in rows] == ["60", "61", "63"]
    assert all(r["extra_info"]["reference_solution"] for r in rows)
    run("aime2025", tmp_path / "aime25", capsys=capsys)  # parquet file
    assert [r["reward_model"]["ground_truth"] for r in rows_of(tmp_path / "aime25" / "test.parquet")] == \
        ["70", "210", "16"]


def test_limit(tmp_path, capsys):
    report, _ = run("math500", tmp_path, "--limit", "2", capsys=capsys)
    assert report.read["test"] == 2 and len(rows_of(tmp_path / "test.parquet")) == 2


def _tests(row):
    return json.loads(row["reward_model"]["ground_truth"])["tests"]


def test_livecodebench_half_tests(tmp_path, capsys):
    run("livecodebench", tmp_path, capsys=capsys)
    train, test = rows_of(tmp_path / "train.parquet"), rows_of(tmp_path / "test.parquet")
    assert [r["extra_info"]["question_id"] for r in train] == [r["extra_info"]["question_id"] for r in test] \
        == ["abc390_a", "3456", "abc398_a"]
    for tr, te in zip(train, test):
        full, half = _tests(te), _tests(tr)
        assert len(half) == max(1, len(full) // 2)
        assert all(t in full for t in half)
        assert [full.index(t) for t in half] == sorted(full.index(t) for t in half)  # original order kept
        assert tr["prompt"] == te["prompt"]
    # public (2) + private JSON (2); public (1) + private base64-zlib-pickle (4)
    assert [len(_tests(r)) for r in test] == [4, 5, 1]
    functional = json.loads(test[1]["reward_model"]["ground_truth"])
    assert functional["fn_name"] == "twoSum" and "fn_name" not in json.loads(test[0]["reward_model"]["ground_truth"])
    assert "def twoSum" in test[1]["prompt"][-1]["content"]
    # another seed may pick other tests, but never another count
    run("livecodebench", tmp_path / "s7", "--seed", "7", capsys=capsys)
    assert [len(_tests(r)) for r in rows_of(tmp_path / "s7" / "train.parquet")] == [2, 2, 1]


def test_livecodebench_date_window(tmp_path, capsys):
    report, text = run("livecodebench", tmp_path / "wide", "--start-date", "2024-09-01", capsys=capsys)
    assert len(rows_of(tmp_path / "wide" / "test.parquet")) == 4
    assert sum(report.removed["test"].values()) == 0
    report, text = run("livecodebench", tmp_path / "narrow", "--end-date", "2025-03-01", capsys=capsys)
    rows = rows_of(tmp_path / "narrow" / "test.parquet")
    assert [r["extra_info"]["question_id"] for r in rows] == ["abc390_a"]
    assert sum(report.removed["test"].values()) == 4  # the date filter runs before test decoding
    assert "removed 4: contest_date outside [2025-02-01, 2025-03-01)" in text


def test_decode_test_cases_both_encodings():
    tests = [{"input": "1\n", "output": "2\n", "testtype": "stdin"}]
    assert common.decode_test_cases(json.dumps(tests)) == tests
    blob = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()
    assert common.decode_test_cases(blob) == tests
    with pytest.raises(common.SkipRow):
        common.decode_test_cases("not-an-encoding")


def test_dapo_dedupe_and_sample(tmp_path, capsys):
    report, text = run("dapo_math", tmp_path / "all", capsys=capsys)
    rows = rows_of(tmp_path / "all" / "train.parquet")
    assert [r["extra_info"]["upstream_index"] for r in rows] == ["a1", "b1", "c1"]  # first occurrence kept
    assert rows[1]["reward_model"]["ground_truth"] == "8"
    assert rows[0]["extra_info"]["question"] == "What is $7 \\times 8$?"  # DAPO template stripped
    assert "Answer:" not in rows[0]["prompt"][0]["content"]
    assert "2 duplicates removed, 1 of them with a different answer" in text
    assert report.removed["train"]["duplicate question"] == 2

    report, text = run("dapo_math", tmp_path / "s", "--sample", "2", "--seed", "3", capsys=capsys)
    sampled = rows_of(tmp_path / "s" / "train.parquet")
    assert len(sampled) == 2 and "sampled 2 problems with seed 3" in text
    assert {r["extra_info"]["question"] for r in sampled} <= {r["extra_info"]["question"] for r in rows}
    assert [r["extra_info"]["index"] for r in sampled] == [0, 1]
    run("dapo_math", tmp_path / "s2", "--sample", "2", "--seed", "3", capsys=capsys)
    assert (tmp_path / "s" / "train.parquet").read_bytes() == (tmp_path / "s2" / "train.parquet").read_bytes()
    run("dapo_math", tmp_path / "big", "--sample", "10", capsys=capsys)
    assert len(rows_of(tmp_path / "big" / "train.parquet")) == 3


def test_sciknoweval_filter_and_split(tmp_path, capsys):
    report, text = run("sciknoweval", tmp_path, capsys=capsys)
    chem_train = rows_of(tmp_path / "chemistry" / "train.parquet")
    chem_test = rows_of(tmp_path / "chemistry" / "test.parquet")
    everything = chem_train + chem_test + rows_of(tmp_path / "physics" / "train.parquet") + \
        rows_of(tmp_path / "physics" / "test.parquet")
    assert all(r["extra_info"]["level"] == "L3" for r in everything)
    assert all(r["extra_info"]["type"] in ("mcq-4-choices", "mcq-2-choices") for r in everything)
    qs_train = {r["extra_info"]["question"] for r in chem_train}
    qs_test = {r["extra_info"]["question"] for r in chem_test}
    assert len(qs_train) == 9 and len(qs_test) == 1 and not qs_train & qs_test
    assert "removed 1: level 'L2' != L3" in text and "removed 1: type 'true_or_false' is not multiple choice" in text
    prompt = chem_train[0]["prompt"][-1]["content"]
    assert "\nA. " in prompt and "\nD. " in prompt
    for r in everything:  # the ground-truth letter points at the stored option text
        assert f"{r['reward_model']['ground_truth']}. {r['extra_info']['reference_answer_text']}" in \
            r["prompt"][-1]["content"]
    # the split depends on the seed only through a seeded RNG: same seed -> same split, domain filter works
    run("sciknoweval", tmp_path / "again", "--domains", "chemistry", capsys=capsys)
    assert output_files(tmp_path / "again") == ["chemistry/test.parquet", "chemistry/train.parquet"]
    assert {r["extra_info"]["question"] for r in rows_of(tmp_path / "again" / "chemistry" / "test.parquet")} == qs_test


def test_split_train_test_fraction():
    from data_prep.sciknoweval import split_train_test
    rows = [{"i": i} for i in range(200)]
    train, test = split_train_test(rows, 42, "chemistry", 0.1)
    assert len(train) == 180 and len(test) == 20
    assert sorted(r["i"] for r in train + test) == list(range(200))
    assert split_train_test(rows, 42, "chemistry", 0.1) == (train, test)
    assert split_train_test(rows, 43, "chemistry", 0.1) != (train, test)


def test_tooluse_ground_truth(tmp_path, capsys):
    _, text = run("tooluse", tmp_path, capsys=capsys)
    rows = rows_of(tmp_path / "train.parquet")
    assert [json.loads(r["reward_model"]["ground_truth"]) for r in rows] == [
        {"name": "searchBooks", "arguments": {"query": "Ursula Le Guin", "limit": 2}}]
    assert rows[0]["extra_info"]["question"] == "Find me two books by Ursula Le Guin."
    assert rows[0]["prompt"][0]["content"].startswith("Your task is to answer the user's question")
    # the two-action answer: the tool_use grader scores one action, so the row is reported, not written
    assert ("SKIP [train] row 1 (id 2): ground truth rejected by the grader: tool-use ground truth must be a JSON "
            "object, got list") in text


def test_codeforces_tests_and_filters(tmp_path, capsys):
    report, text = run("codeforces", tmp_path, capsys=capsys)
    rows = rows_of(tmp_path / "test.parquet")
    assert [r["extra_info"]["problem_id"] for r in rows] == ["1900A", "1900B"]
    assert len(_tests(rows[0])) == 3  # official tests
    assert _tests(rows[1]) == [{"input": "4\n", "output": "16\n"}, {"input": "1\n", "output": "1\n"}]  # examples
    assert "removed 1: interactive problem" in text


def test_output_loads_with_datasets(tmp_path, capsys):
    """verl reads these files with datasets.load_dataset('parquet'); messages must come back as dicts."""
    datasets = pytest.importorskip("datasets")
    run("livecodebench", tmp_path, capsys=capsys)
    ds = datasets.load_dataset("parquet", data_files={"train": str(tmp_path / "train.parquet")},
                               cache_dir=str(tmp_path / "cache"))["train"]
    assert len(ds) == 3 and ds[0]["prompt"][0]["role"] == "user"
    assert json.loads(ds[1]["reward_model"]["ground_truth"])["fn_name"] == "twoSum"


def test_hub_source_path(tmp_path, capsys, monkeypatch):
    """A non-path --source goes through datasets.load_dataset (stubbed here: no network in tests)."""
    datasets = pytest.importorskip("datasets")
    rows = {s: [json.loads(ln) for ln in open(os.path.join(FIXTURES, "gsm8k", f"{s}.jsonl")) if ln.strip()
                and ln.rstrip().endswith("}")] for s in ("train", "test")}
    calls = []

    def fake_load_dataset(name, config=None, **kwargs):
        calls.append((name, config, kwargs))
        return datasets.DatasetDict({s: datasets.Dataset.from_list(r) for s, r in rows.items()})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    from data_prep import gsm8k
    report = gsm8k.main(["--out", str(tmp_path), "--limit", "2"])
    assert calls == [("openai/gsm8k", "main", {})]
    assert report.read == {"train": 2, "test": 2}
    assert len(rows_of(tmp_path / "train.parquet")) == 2 and len(rows_of(tmp_path / "test.parquet")) == 2


def test_verbose_prints_filtered_rows(tmp_path, capsys):
    _, text = run("codeforces", tmp_path, "--verbose", capsys=capsys)
    assert "FILTER [test] row 1900C: interactive problem" in text


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_every_row_invalid_exits_non_zero_and_writes_no_empty_parquet(tmp_path, capsys):
    """Before: exit 0 and a 0-row parquet. Now: status 1, one line naming why, a summary, no parquet."""
    src = write_jsonl(tmp_path / "src" / "test.jsonl", [{"problem": "1+1?", "answer": ""},
                                                       {"problem": "2+2?"}])
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "data_prep/math500.py", "--source", str(src), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("data_prep: error: no row survived in split(s) test; "
                                                          "skips by reason: {")
    assert not (out / "test.parquet").exists()
    summary = json.loads((out / common.SUMMARY_FILE).read_text())
    assert summary["rows_in"] == {"test": 2} and summary["rows_out"] == {} and summary["empty_splits"] == ["test"]
    assert summary["skipped"] == 2


def test_ground_truth_no_grader_can_parse_is_rejected_by_row(tmp_path, capsys):
    """math 'asdf{{\\frac' was written and later scored 0 silently; now the math grader's parser rejects it."""
    rows = [{"problem": f"q{i}", "answer": str(i)} for i in range(30)]
    rows[7] = {"problem": "q7", "answer": "asdf{{\\frac", "id": "p-7"}
    src = write_jsonl(tmp_path / "src" / "test.jsonl", rows)
    module = importlib.import_module("data_prep.math500")
    report = module.main(["--source", str(src), "--out", str(tmp_path / "out")])  # 1 of 30 < 5 %: passes
    text = capsys.readouterr().out
    assert "SKIP [test] row 7 (id p-7): ground truth rejected by the grader: math-verify cannot parse the ground " \
           "truth 'asdf{{\\\\frac' into a mathematical answer" in text
    assert report.written == {"test": 29}
    summary = json.loads((tmp_path / "out" / common.SUMMARY_FILE).read_text())
    assert summary["rows_in"] == {"test": 30} and summary["rows_out"] == {"test": 29}
    assert summary["skipped_rows"] == [{"split": "test", "row": "7 (id p-7)", "reason": report.skipped["test"][0][1]}]
    assert summary["skipped_by_reason"] == {"ground truth rejected by the grader: math-verify cannot parse the "
                                            "ground truth <value> into a mathematical answer": 1}


def test_max_invalid_fraction(tmp_path, capsys):
    rows = [{"problem": f"q{i}", "answer": str(i)} for i in range(10)]
    rows[3]["answer"] = ""
    rows[5]["answer"] = "asdf{{\\frac"
    src = write_jsonl(tmp_path / "src" / "test.jsonl", rows)
    module = importlib.import_module("data_prep.math500")
    with pytest.raises(SystemExit) as error:  # 2 of 10 invalid > the default 5 %
        module.main(["--source", str(src), "--out", str(tmp_path / "a")])
    assert str(error.value).startswith("data_prep: error: 2 of 10 rows (20.0%) are invalid, more than "
                                       "--max-invalid 0.05 allows")
    report = module.main(["--source", str(src), "--out", str(tmp_path / "b"), "--max-invalid", "0.2"])
    assert report.written == {"test": 8}
    with pytest.raises(SystemExit):
        module.main(["--source", str(src), "--out", str(tmp_path / "c"), "--max-invalid", "2"])
    assert "must be a fraction in [0, 1]" in capsys.readouterr().err


def test_every_written_ground_truth_is_accepted_by_its_grader(tmp_path, capsys):
    from scgrpo_verl.rewards import ground_truth_problem

    for name in sorted(EXPECTED):
        run(name, tmp_path / name, capsys=capsys)
        for rel in output_files(tmp_path / name):
            for row in rows_of(tmp_path / name / rel):
                assert ground_truth_problem(row["data_source"], row["reward_model"]["ground_truth"]) is None


def test_an_unreachable_hub_ends_in_one_line_naming_the_local_source(monkeypatch, capsys):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'HuggingFaceH4/aime_2024' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr(sys, "argv", ["/repo/data_prep/aime2024.py"])  # python -m data_prep.aime2024
    with pytest.raises(SystemExit) as stop:
        common.load_source("HuggingFaceH4/aime_2024")
    assert str(stop.value) == (
        "data_prep.aime2024: error: cannot load the hub dataset 'HuggingFaceH4/aime_2024' (ConnectionError: "
        "Couldn't reach 'HuggingFaceH4/aime_2024' on the Hub (LocalEntryNotFoundError)); give a local copy with "
        "--source FILE_OR_FOLDER (examples/*.sh: SOURCE_AIME2024=path)")


def test_an_empty_source_folder_is_named_with_the_program(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["/repo/data_prep/gsm8k.py"])
    with pytest.raises(SystemExit, match=r"^data_prep\.gsm8k: error: --source .*: no \.json/\.jsonl/\.parquet files"):
        common.load_source(str(tmp_path))
