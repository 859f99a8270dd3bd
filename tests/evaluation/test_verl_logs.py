"""verl's metric logs read back from verl's own loggers (file backend, console), and the console-line parser that
cpu-run uses too."""

from __future__ import annotations

import io
import math
from contextlib import redirect_stdout

import pytest
from conftest import verl_history

from scgrpo_verl.cpu_backend import run as cpu_run_mod
from scgrpo_verl.evaluation import EvalError
from scgrpo_verl.evaluation.verl_logs import parse_console_log, parse_step_line, read_verl_metrics, validation_series


def test_read_verl_metrics_from_verls_file_logger(tmp_path, monkeypatch):
    from verl.utils.tracking import FileLogger

    path = tmp_path / "run" / "metrics.jsonl"
    path.parent.mkdir()
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(path))
    logger = FileLogger("proj", "exp")
    for step, data in verl_history().items():
        logger.log(data, step)
    logger.finish()
    history = read_verl_metrics(str(path.parent))
    assert history == verl_history()
    series = validation_series(history)
    assert series == {
        "openai/gsm8k": {"acc/mean@4": {0: 0.25, 2: 0.5}, "acc/best@4/mean": {0: 0.5}},
        "tiny_parity": {"acc/mean@4": {0: 0.4, 2: 0.45}},
    }
    assert validation_series(history, "val-aux") == {"openai/gsm8k": {"reward/mean@4": {0: 0.3}}}


def test_read_verl_metrics_from_verls_console_logger(tmp_path):
    from verl.utils.logger.aggregate_logger import LocalLogger

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        logger = LocalLogger(print_to_console=True)
        for step, data in verl_history().items():
            logger.log(data, step)
    log = tmp_path / "run.log"
    # a Ray prefix, as the TaskRunner's lines have
    log.write_text("".join(f"(TaskRunner pid=1) {line}\n" for line in buffer.getvalue().splitlines()))
    history = read_verl_metrics(str(tmp_path))
    expected = verl_history()
    assert set(history) == set(expected)
    for step in expected:
        assert history[step] == pytest.approx(expected[step], rel=1e-4), step  # the console rounds


def test_read_verl_metrics_errors_name_the_file(tmp_path):
    with pytest.raises(EvalError, match="does not exist"):
        read_verl_metrics(str(tmp_path / "missing"))
    with pytest.raises(EvalError, match="no verl metric log"):
        read_verl_metrics(str(tmp_path))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "data": {"a": 1}}\nnot json\n')
    with pytest.raises(EvalError, match=r"bad.jsonl:2"):
        read_verl_metrics(str(bad))


def test_parse_step_line_handles_ray_prefix_and_numpy_reprs():
    line = (
        "\x1b[36m(TaskRunnerV1 pid=12)\x1b[0m step:3 - actor/pg_loss:-0.25 - critic/score/mean:0.5 - "
        "num_turns/mean:np.float64(2.0) - num_turns/max:np.int32(2) - timing_s/gen:1e-05 - actor/ppo_kl:nan\n"
    )
    step, values = parse_step_line(line)
    assert step == 3
    assert values["actor/pg_loss"] == -0.25 and values["critic/score/mean"] == 0.5
    assert values["num_turns/mean"] == 2.0 and values["num_turns/max"] == 2.0 and values["timing_s/gen"] == 1e-05
    assert math.isnan(values["actor/ppo_kl"])
    assert parse_step_line("training step: 3 done") is None
    assert parse_step_line("step:1 - a:x - b:2 - c") == (1, {"b": 2.0})  # what is not a number is left out
    metrics = parse_console_log(["noise\n", line, line.replace("step:3", "step:4")])
    assert sorted(metrics) == [3, 4]


def test_cpu_run_parses_with_the_same_parser():
    assert cpu_run_mod.parse_console_log is parse_console_log
    assert cpu_run_mod.STEP_LINE.search("(TaskRunner pid=1) step:2 - a:1")
