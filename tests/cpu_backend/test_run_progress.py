"""cpu-run's progress lines, and a killed Ray worker reported as one line instead of a silent wait until the timeout
(no real verl run: the launched process is a stand-in that prints what verl's driver prints)."""

from __future__ import annotations

import subprocess
import sys
import types

import scgrpo_verl.cpu_backend.run as run
from scgrpo_verl.cpu_backend import STAGE_MARK
from scgrpo_verl.cpu_backend.progress import Progress, fatal_cause

OOM_LINE = ("\x1b[36m(raylet)\x1b[0m ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on "
            "memory. Memory on the node (IP: 10.0.0.2) where the task (actor ID: 7f, name=WorkerDict.__init__, "
            "pid=4242, memory used=3.1GB) was running was 22.9GB / 24.0GB (0.954), which exceeds the memory usage "
            "threshold of 0.95.")


def test_progress_names_ray_and_each_stage_of_each_step():
    progress = Progress(steps=2, loss_mode="sc_grpo")
    lines = [
        "2026-12-04 20:34:37,361\tINFO worker.py:2029 -- Started a local Ray instance. View the dashboard at ...",
        "[transformers] Accessing `initialize_global_process_group_ray` from `.models.aria` ...",
        "(TaskRunnerV1 pid=25265) INFO:2026-12-04 20:53:23,356:all initialize finished, ready to fit",
        f"\x1b[36m(TaskRunnerV1 pid=6242)\x1b[0m {STAGE_MARK}gen",
        f"(TaskRunnerV1 pid=6242) {STAGE_MARK}old_log_prob",
        f"(TaskRunnerV1 pid=6242) {STAGE_MARK}update_actor",
        "(TaskRunnerV1 pid=6242) step:1 - actor/pg_loss:0.1 - critic/score/mean:0.5",
        f"(TaskRunnerV1 pid=6242) {STAGE_MARK}gen",
        f"(TaskRunnerV1 pid=6242) {STAGE_MARK}testing",
    ]
    said = [progress(line) for line in lines]
    messages = [s.split("s ", 1)[1] if s else None for s in said]
    assert messages == ["Ray is up; starting the workers (model, rollout server, reward loop)", None,
                        "workers ready; first rollout",
                        "step 1/2: rollout", "step 1/2: old log-probs with the teacher pass",
                        "step 1/2: actor update", "step 1/2 done",
                        "step 2/2: rollout", "step 2/2: validation"]
    assert all(s.startswith("[cpu-run] ") for s in said if s)
    progress.last_time -= 61
    assert progress.heartbeat(60).endswith("still running (last: step 2/2: validation)")
    assert progress.heartbeat(60) is None  # once per quiet minute
    sdpo = Progress(steps=1, loss_mode="sdpo")
    assert sdpo(f"{STAGE_MARK}update_actor").endswith("step 0/1: actor update with the teacher pass")
    assert Progress(steps=1)(f"{STAGE_MARK}old_log_prob").endswith("old log-probs")  # GRPO: no teacher


def test_the_summary_counts_training_steps_of_those_asked(monkeypatch, tmp_path, capsys):
    log = tmp_path / "run.log"
    log.write_text("")
    result = run.CpuRunResult(returncode=0, timed_out=False, wall_s=3.0, metrics={0: {"val": 1}, 1: {}, 2: {}},
                              workdir=str(tmp_path), log_path=str(log), checkpoint_dir="", assets=None)
    monkeypatch.setattr(run, "cpu_run", lambda **kwargs: result)
    assert run.main(["--steps", "2"]) == 0
    assert "[cpu-run] ok in 3s, 2 of 2 training step(s)" in capsys.readouterr().out  # step 0: validation


def test_fatal_cause_names_an_oom_kill_and_a_dead_worker():
    assert fatal_cause(OOM_LINE).startswith("Ray killed a worker for lack of memory (ray.exceptions."
                                            "OutOfMemoryError: Task was killed due to the node running low")
    assert fatal_cause("(raylet) Workers (tasks / actors) killed due to memory pressure (OOM), 1 worker(s)")
    assert fatal_cause("ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.")
    assert fatal_cause("(TaskRunnerV1 pid=1) step:1 - actor/pg_loss:0.1") is None
    assert fatal_cause("Traceback (most recent call last):") is None


def _fake_launch(monkeypatch, tmp_path, script: str):
    """cpu_run launches ``script`` instead of main_ppo (no assets built, no preflight)."""
    assets = types.SimpleNamespace(train_file="t.parquet", val_file="v.parquet", model=str(tmp_path))
    monkeypatch.setattr(run, "prepare_assets", lambda folder, task: assets)
    real = subprocess.Popen
    monkeypatch.setattr(run.subprocess, "Popen", lambda command, **kw: real([sys.executable, "-c", script], **kw))


def test_a_killed_worker_ends_the_run_early_with_one_line(monkeypatch, tmp_path, capsys):
    # verl's driver after an OOM kill: the line, then a wait on the dead actor that never ends
    _fake_launch(monkeypatch, tmp_path, f"import time; print({OOM_LINE!r}, flush=True); time.sleep(300)")
    result = run.cpu_run("grpo", steps=2, workdir=str(tmp_path), timeout=200, echo=False, preflight=False,
                         progress=True, fatal_grace=1)
    assert not result.ok and not result.timed_out and result.wall_s < 60
    assert result.fatal.startswith("Ray killed a worker for lack of memory")
    assert "killed 1s after: Ray killed a worker" in open(result.log_path).read()

    monkeypatch.setattr(run, "cpu_run", lambda **kwargs: result)
    assert run.main(["--steps", "2"]) == 1
    out, err = capsys.readouterr()
    assert "[cpu-run] stopped in " in out and "0 of 2 training step(s)" in out
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("[cpu-run] Ray killed a worker for lack of memory (ray.exceptions.OutOfMemoryError: ")
    assert "a run needs about 5 GiB" in err and result.log_path in err


def test_a_quiet_run_prints_that_it_is_still_running(monkeypatch, tmp_path, capsys):
    _fake_launch(monkeypatch, tmp_path, "import time; time.sleep(3); print('step:1 - actor/pg_loss:0.5')")
    result = run.cpu_run("grpo", steps=1, workdir=str(tmp_path), timeout=60, echo=False, preflight=False,
                         progress=True, heartbeat=1)
    assert result.ok and result.training_steps == [1]
    out = capsys.readouterr().out
    assert "still running (last: starting main_ppo)" in out and "step 1/1 done" in out


def test_the_demo_runs_the_task_where_groups_get_a_verified_rollout():
    """README's first line (``cpu-run --config-name sc_grpo``) runs the parity task: the tiny model is right about
    half the time, so groups mix verified and failed rollouts (tests/test_miniature.py checks the assets)."""
    assert run.build_parser().parse_args([]).task == "parity"


def test_a_slow_run_waits_for_memory_and_says_so(monkeypatch):
    import pytest

    import conftest

    free = iter([1.0, 2.0, 9.0])
    monkeypatch.setattr(run, "free_memory_gib", lambda: next(free))
    monkeypatch.setattr("time.sleep", lambda s: None)
    said = []
    terminal = types.SimpleNamespace(write_line=said.append)
    item = types.SimpleNamespace(nodeid="tests/x.py::test_run", get_closest_marker=lambda name: name == "slow" or None,
                                 config=types.SimpleNamespace(pluginmanager=types.SimpleNamespace(
                                     get_plugin=lambda name: terminal)))
    conftest.pytest_runtest_setup(item)  # returns once 9 GiB are available
    assert said == ["tests/x.py::test_run: 1.0 GiB available, a verl run needs 6: waiting up to 600 s for memory"]
    monkeypatch.setattr(run, "free_memory_gib", lambda: 1.0)
    monkeypatch.setattr(conftest, "MEMORY_WAIT_S", 0)
    with pytest.raises(pytest.skip.Exception, match="needs 6 GiB of available memory for a verl run; the host"):
        conftest.pytest_runtest_setup(item)


def test_a_worker_death_the_run_goes_on_after_is_not_fatal(monkeypatch, tmp_path):
    died = "(raylet) A worker died or was killed while executing a task by an unexpected system error."
    _fake_launch(monkeypatch, tmp_path, f"import time; print({died!r}, flush=True); time.sleep(0.2); "
                                        "print('step:1 - actor/pg_loss:0.5', flush=True); time.sleep(6)")
    result = run.cpu_run("grpo", steps=1, workdir=str(tmp_path), timeout=60, echo=False, preflight=False,
                         fatal_grace=3)
    assert result.ok and result.fatal is None and result.training_steps == [1]
