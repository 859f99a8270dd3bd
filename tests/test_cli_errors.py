"""What a user sees when something is wrong: one line naming the key / file / option, exit status 2; the
traceback only with --debug or HYDRA_FULL_ERROR=1. And no noise around the useful output."""

import os
import subprocess
import sys

import pytest

from scgrpo_verl import cli
from scgrpo_verl.errors import ConfigError, UserError


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.startswith("scgrpo-verl ")]


@pytest.fixture(autouse=True)
def no_full_error(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)


def test_type_error_in_a_plugin_option_names_the_key(capsys):
    code, _, lines = run_cli(capsys, "check", "--config-name", "sc_grpo", "self_teacher.sc_grpo.c_min=abc")
    assert code == 2
    assert lines == ["scgrpo-verl check: error: self_teacher.sc_grpo.c_min: must be a number, got 'abc' (str)"]


def test_range_error_is_one_line(capsys):
    code, _, lines = run_cli(capsys, "check", "--config-name", "sdpo", "self_teacher.sdpo.alpha=2")
    assert code == 2 and lines == ["scgrpo-verl check: error: self_teacher.sdpo.alpha: must be in [0, 1], got 2"]


def test_wrong_config_name_lists_the_valid_ones(capsys):
    code, _, lines = run_cli(capsys, "check", "--config-name", "sc-grpo")
    assert code == 2 and len(lines) == 1
    assert "--config-name 'sc-grpo': no such config; did you mean sc_grpo? valid names:" in lines[0]
    for name in ("grpo", "dapo", "sc_grpo", "sdpo", "sdpg"):
        assert name in lines[0]
    assert "self_teacher_defaults" not in lines[0] and "setup_math" not in lines[0]


def test_config_names_offered_are_the_launchable_ones(capsys):
    code, _, lines = run_cli(capsys, "check", "--config-name", "scgrpo")
    assert code == 2 and len(lines) == 1
    assert "no such config; did you mean sc_grpo? valid names:" in lines[0]
    assert "methods/" not in lines[0] and "recipes/_" not in lines[0] and "recipes/sdpg_math_urkl" in lines[0]


def test_a_key_typo_names_the_nearest_key(capsys):
    code, _, lines = run_cli(capsys, "check", "--config-name", "sdpg", "self_teacher.sdpg.beta_bas=1")
    assert code == 2 and len(lines) == 1 and "(did you mean self_teacher.sdpg.beta_base?)" in lines[0]
    code, _, lines = run_cli(capsys, "check", "--config-name", "sdpg", "self_teacher.sdgp.beta_base=1")
    assert code == 2 and "(did you mean self_teacher.sdpg?)" in lines[0]


def test_unknown_key_and_bad_override_syntax(capsys):
    code, _, lines = run_cli(capsys, "check", "--config-name", "sdpo", "self_teacher.sdpo.alpah=1")
    assert code == 2 and len(lines) == 1 and "self_teacher.sdpo.alpah" in lines[0]
    code, _, lines = run_cli(capsys, "check", "--config-name", "sdpo", "self_teacher.sdpo.alpha=[1")
    assert code == 2 and len(lines) == 1 and "self_teacher.sdpo.alpha=[1" in lines[0]


def test_check_fails_on_a_missing_data_file(capsys):
    code, _, lines = run_cli(capsys, "check", "--config-name", "sc_grpo", "--skip", "gpus,attention",
                             "actor_rollout_ref.rollout.name=vllm", "data.train_files=/nonexistent",
                             "data.val_files=null")
    assert code == 2
    assert lines == ["scgrpo-verl check: error: data.train_files: file /nonexistent does not exist "
                     "(data_prep/<set>.py --out DIR writes DIR/<split>.parquet)"]


def test_debug_and_hydra_full_error_show_the_traceback(capsys, monkeypatch):
    with pytest.raises(ConfigError, match="c_min"):
        cli.main(["--debug", "check", "--config-name", "sc_grpo", "self_teacher.sc_grpo.c_min=abc"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError, match="no such config"):
        cli.main(["check", "--config-name", "nope"])


def test_a_bug_is_not_disguised_as_a_user_error(monkeypatch):
    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "_check", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["check", "--config-name", "sc_grpo"])


def test_explain_names_a_missing_checkpoint_and_file(capsys, tmp_path):
    code, _, lines = run_cli(capsys, "explain", "--model-path", str(tmp_path), "--prompt", "q", "--rollout", "r",
                             "--solution", "s")
    assert code == 2 and len(lines) == 1
    assert f"--model-path {tmp_path}: not a Hugging Face checkpoint folder" in lines[0]
    assert "dry-run" in lines[0] and "--workdir" in lines[0]  # where a checkpoint comes from


def test_cpu_run_fails_fast_on_a_missing_data_file(capsys, monkeypatch, tmp_path):
    """Before: 54 s and a 60-line traceback from inside the run. Now the preflight stops it before verl starts."""
    import scgrpo_verl.cpu_backend.run as run
    import verl.trainer.config  # noqa: F401 - imported before Popen is blocked (importing verl runs subprocesses)

    def no_launch(*args, **kwargs):
        raise AssertionError("main_ppo must not be launched")

    monkeypatch.setattr(run.subprocess, "Popen", no_launch)
    code, _, lines = run_cli(capsys, "cpu-run", "--workdir", str(tmp_path), "data.train_files=/nonexistent")
    assert code == 2
    assert lines == ["scgrpo-verl cpu-run: error: data.train_files: file /nonexistent does not exist "
                     "(data_prep/<set>.py --out DIR writes DIR/<split>.parquet)"]


def test_cpu_run_failure_prints_the_cause_not_the_log(capsys, monkeypatch, tmp_path):
    import scgrpo_verl.cpu_backend.run as run

    log = tmp_path / "run.log"
    log.write_text("line\n" * 80 + "Traceback (most recent call last):\n  File x\nValueError: the real cause\n")
    result = run.CpuRunResult(returncode=1, timed_out=False, wall_s=3.0, metrics={0: {}, 1: {"actor/pg_loss": 0.5}},
                              workdir=str(tmp_path), log_path=str(log), checkpoint_dir="", assets=None)
    monkeypatch.setattr(run, "cpu_run", lambda **kwargs: result)
    assert run.main([]) == 1
    out, err = capsys.readouterr()
    assert "[cpu-run] step 1: actor/pg_loss=0.5" in out and "step 0" not in out  # no empty step line
    assert err.strip() == f"[cpu-run] ValueError: the real cause (full log: {log}; --debug prints its tail)"
    assert run.main(["--debug"]) == 1
    assert "line\n" * 50 in capsys.readouterr().err


def test_top_level_help_is_plain_text(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and ":mod:" not in out and ":func:" not in out
    for command in ("check", "dry-run", "cpu-run", "explain", "sandbox", "--debug"):
        assert command in out


def test_every_cpu_run_option_has_help():
    from scgrpo_verl.cpu_backend.run import build_parser

    for action in build_parser()._actions:
        assert action.help, action.dest


def test_dry_run_explains_the_route_codes():
    from scgrpo_verl.algos.sc_grpo import ROUTE_PLAIN, ROUTE_SOLVE_NONE, ROUTE_WEIGHTED
    from scgrpo_verl.dry_run import DryRunReport

    report = DryRunReport("sc_grpo", "sc_grpo", "sc_grpo", "m", 4, masks={"sc_route": [1, 1, 2, 0]})
    lines = report.format().splitlines()
    legend = lines[lines.index("sc_route: [1, 1, 2, 0]") + 1]
    assert f"{ROUTE_PLAIN} = plain GRPO" in legend and f"{ROUTE_WEIGHTED} = GRPO weighted by f(D)" in legend
    assert f"{ROUTE_SOLVE_NONE} = solve-none" in legend


def run_subprocess(*args, timeout=300):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HYDRA_FULL_ERROR": ""})


@pytest.mark.timeout(300)
def test_check_prints_the_active_method_only_without_noise():
    result = run_subprocess("-m", "scgrpo_verl.cli", "check", "--config-name", "sc_grpo", "--skip",
                            "gpus,data_files,attention", "actor_rollout_ref.rollout.name=vllm")
    assert result.returncode == 0, result.stderr[-2000:]
    out, err = result.stdout, result.stderr
    assert "self_teacher.sc_grpo.c_min = 0.0001" in out and "self_teacher.teacher.weights = live" in out
    # each option's help text (its dataclass field's metadata) next to its value
    assert "self_teacher.sc_grpo.c_min = 0.0001    # floor of c in f(D) = D / (D + c)" in out
    assert "self_teacher.teacher.weights = live    # live | frozen | ema | trust_region" in out
    assert "sdpo" not in out and "sdpg" not in out  # not the other methods' options
    assert "self_teacher.teacher.templates = shipped defaults" in out and "\n\n" not in out
    assert "engine is not available" not in err and "No supported accelerator" not in err
    assert "is registered but not available" not in err


def test_check_error_comes_alone_after_progress_lines(capsys, recwarn, tmp_path):
    """No warning (verl's "Disabled critic ...") before an error: stderr is progress lines, then the one error, and
    the warnings raised while the config was checked are dropped."""
    code = cli.main(["check", "--config-name", "sc_grpo", "--skip", "gpus,attention",
                     "actor_rollout_ref.rollout.name=vllm", f"data.train_files={tmp_path / 'no.parquet'}",
                     "data.val_files=null"])
    assert code == 2
    lines = capsys.readouterr().err.splitlines()
    assert [line[:8] for line in lines[:-1]] == ["[check] "] * 3, lines
    assert lines[-1] == (f"scgrpo-verl check: error: data.train_files: file {tmp_path / 'no.parquet'} does not "
                         "exist (data_prep/<set>.py --out DIR writes DIR/<split>.parquet)")
    assert not [w for w in recwarn if "Disabled critic" in str(w.message)]


def test_deferred_warnings_show_only_after_success(capsys):
    import warnings

    from scgrpo_verl.errors import deferred_warnings

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with pytest.raises(ValueError), deferred_warnings():
            warnings.warn("held back", UserWarning)
            raise ValueError("the error")
        assert shown == []
        with deferred_warnings():
            warnings.warn("passes through", UserWarning)
        assert [str(w.message) for w in shown] == ["passes through"]


def test_noise_filter_keeps_other_warnings(caplog):
    import logging
    import warnings

    cli.quiet_verl_import_noise()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        cli.quiet_verl_import_noise()  # installs "ignore" filters in front again
        warnings.warn("megatron engine is not available: ModuleNotFoundError", UserWarning)
        warnings.warn("a real problem", UserWarning)
    assert [str(w.message) for w in seen] == ["a real problem"]
    log = logging.getLogger("verl.plugin.platform.platform_manager")
    with caplog.at_level(logging.WARNING, logger=log.name):
        log.warning("No supported accelerator detected. Registered: %s.", ("nvidia",))
        log.warning("Platform 'x' failed in a new way")
    assert [r.getMessage() for r in caplog.records] == ["Platform 'x' failed in a new way"]


@pytest.mark.timeout(300)
def test_importing_the_trainer_first_logs_no_circular_import():
    result = run_subprocess("-c", "import scgrpo_verl.trainer\n"
                                  "from verl.trainer.ppo.v1.trainer_base import get_trainer_cls\n"
                                  "get_trainer_cls('self_teacher'); print('OK')")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "OK" in result.stdout
    assert "registering with verl failed" not in result.stderr and "circular import" not in result.stderr


def test_user_error_is_the_base_of_the_config_errors():
    from scgrpo_verl.startup_checks import StartupCheckError

    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)
    assert issubclass(StartupCheckError, UserError)


def test_reward_time_error_about_bad_ground_truth_names_the_row():
    """Before: an unparseable math ground truth gave a wrong answer the feedback "Your final answer 391 is
    incorrect." (score 0, silently). Now the grader refuses it and names the row."""
    from scgrpo_verl.rewards import compute_score

    with pytest.raises(ValueError) as error:
        compute_score("dapo_math", "So the answer is \\boxed{391}", "asdf{{\\frac", {"index": 12, "split": "train"})
    assert str(error.value) == ("row 12 of split 'train' (data_source 'dapo_math'): math-verify could not parse the "
                                "ground truth 'asdf{{\\\\frac'")
    with pytest.raises(ValueError, match=r"^row 3 \(data_source 'sciknoweval'\): multiple-choice ground truth"):
        compute_score("sciknoweval", "B", "water", {"index": 3})
    assert compute_score("dapo_math", "\\boxed{2}", "2", {"index": 0})["score"] == 1.0


def test_dry_run_names_a_missing_checkpoint_and_a_bad_pairing(capsys):
    code, _, lines = run_cli(capsys, "dry-run", "--config-name", "sc_grpo", "model.path=/nonexistent/ckpt")
    assert code == 2 and lines == [
        "scgrpo-verl dry-run: error: model.path=/nonexistent/ckpt: not a local checkpoint folder (dry-run loads "
        "Hugging Face folders from disk; without model.path it builds a tiny random model)"]
    code, _, lines = run_cli(capsys, "dry-run", "--config-name", "sdpo", "self_teacher.teacher.weights=ema",
                             "actor_rollout_ref.actor.use_kl_loss=true")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("scgrpo-verl dry-run: error: self_teacher.teacher."
                                                                 "weights: the EMA teacher lives in the ref engine")
