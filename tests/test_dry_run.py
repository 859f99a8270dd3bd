"""``scgrpo-verl dry-run``: one self-teacher step of each shipped config on the tiny local model."""

import math

import pytest

from scgrpo_verl.algos.sc_grpo import ROUTE_PLAIN, ROUTE_SOLVE_NONE, ROUTE_WEIGHTED
from scgrpo_verl.cli import main
from scgrpo_verl.dry_run import dry_run

STAGES = ["compose_validate", "load_model", "sample_rollouts", "student_log_probs", "teacher_contexts",
          "teacher_pass", "advantages", "loss_backward"]
# SDPO / SDPG: the teacher runs inside the actor update (the loss), as on the workers
DISTILLATION_STAGES = ["compose_validate", "load_model", "sample_rollouts", "student_log_probs", "teacher_contexts",
                       "advantages", "teacher_pass", "loss_backward"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("dry_run_assets"))


def test_sc_grpo_dry_run_routes_masks_and_weights(workdir):
    report = dry_run("sc_grpo", groups=3, group_size=4, max_new_tokens=8, workdir=workdir)
    assert list(report.timings) == STAGES
    # groups: mixed (2 of 4 right -> weighted), all wrong (solve-none), all right (plain GRPO)
    assert report.masks["sc_route"] == [ROUTE_WEIGHTED] * 4 + [ROUTE_SOLVE_NONE] * 4 + [ROUTE_PLAIN] * 4
    assert sum(report.masks["sc_reference"][4:8]) == 1
    # every weighted rollout has a verified sibling; the solve-none reference itself and the plain group do not
    assert report.masks["self_teacher_mask"][:4] == [1] * 4 and report.masks["self_teacher_mask"][8:] == [0] * 4
    assert sum(report.masks["self_teacher_mask"][4:8]) == 3
    assert 0.0 < report.metrics["self_teacher/sc_weight_mean"] < 1.0  # f(D) on the weighted route's tokens
    assert report.metrics["self_teacher/frac_solve_none"] == pytest.approx(1 / 3)
    assert report.divergence_quantiles["p0"] >= 0.0
    assert math.isfinite(report.loss) and report.grad_norm > 0
    assert report.metrics["self_teacher/frac_groups_with_success"] == pytest.approx(2 / 3)
    # the teacher forwards the 7 rows that have a teacher, each longer than its student row (the demonstration)
    assert 0 < report.teacher_tokens and math.isfinite(report.time_ratio)


@pytest.mark.parametrize("name", ["sdpo", "sdpg", "opsd"])
def test_distillation_dry_runs(workdir, name):
    report = dry_run(name, groups=3, group_size=3, max_new_tokens=8, workdir=workdir)
    assert list(report.timings) == DISTILLATION_STAGES
    # SDPO: a verified sibling (never itself) or the failure's feedback; SDPG: the answer hint for every rollout
    assert report.masks["self_teacher_mask"] == [1] * 9
    # OPSD: the row's worked reference solution (extra_info.reference_solution) for every rollout
    expected_sources = {"sdpo": {"solution", "feedback"}, "sdpg": {"privileged"}, "opsd": {"reference"}}[name]
    assert set(report.masks["source"]) == expected_sources
    assert math.isfinite(report.loss) and report.grad_norm > 0
    if name == "sdpg":
        assert report.metrics["self_teacher/sdpg_beta"] > 0
        assert math.isfinite(report.metrics["self_teacher/opd_loss"])
    else:
        assert report.metrics["self_teacher/distill_loss"] > 0


def test_grpo_dry_run_skips_the_teacher(workdir):
    report = dry_run("grpo", groups=1, group_size=2, max_new_tokens=6, workdir=workdir)
    assert "teacher_pass" not in report.timings and "self_teacher_mask" not in report.masks
    assert math.isfinite(report.loss)


def test_cli_dry_run_with_model_path_prints_stages(workdir, capsys, tmp_path):
    from scgrpo_verl.cpu_backend.assets import prepare_assets

    model_path = prepare_assets(workdir).model
    json_path = tmp_path / "report.json"
    assert main(["dry-run", "--config-name", "sdpo", "--groups", "2", "--group-size", "2", "--max-new-tokens", "6",
                 "--json", str(json_path), f"model.path={model_path}"]) == 0
    out = capsys.readouterr().out
    assert f"model={model_path}" in out
    assert "teacher pass / student log-prob pass: time" in out and "self_teacher_mask:" in out
    assert json_path.exists()


def test_dry_run_rejects_a_missing_checkpoint_and_bad_options(workdir):
    with pytest.raises(FileNotFoundError, match="not a local folder"):
        dry_run("sc_grpo", ["model.path=/nonexistent/checkpoint"], workdir=workdir)
    with pytest.raises(ValueError, match="self_teacher.sdpo.alpha"):
        dry_run("sdpo", ["self_teacher.sdpo.alpha=1.5"], workdir=workdir)
    with pytest.raises(ValueError, match="group_size"):
        dry_run("sc_grpo", group_size=1, workdir=workdir)


def test_dry_run_runs_the_trainer_steps_functions(workdir, monkeypatch):
    """The dry-run stages the batch with scgrpo_verl.step's functions, the ones the trainer calls, in the
    trainer's order: a passing dry-run exercises the production staging (contexts, D, advantages, options)."""
    import scgrpo_verl.step as step

    called = []
    for name in ("context_fields", "rollouts_from_rows", "build_contexts", "stage_teacher_inputs", "teacher_pass",
                 "keep_log_prob_pass", "adjust_advantages", "update_options"):
        original = getattr(step, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            called.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(step, name, spy)
    report = dry_run("sc_grpo", groups=3, group_size=3, max_new_tokens=6, workdir=workdir)
    assert math.isfinite(report.loss)
    order = [name for i, name in enumerate(called) if name not in called[:i]]
    assert order == ["teacher_pass", "context_fields", "rollouts_from_rows", "build_contexts", "stage_teacher_inputs",
                     "keep_log_prob_pass", "update_options", "adjust_advantages"]
