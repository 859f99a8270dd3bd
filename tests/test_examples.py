"""Every ``examples/<paper>/<setup>.sh`` with ``DRY_RUN=1``: each printed ``scgrpo-verl`` command goes through the
real argument parser of its subcommand (a missing required argument fails here, not after days of training), and
each eval command samples as its run's recipe validates (``rollout.val_kwargs``, ``data.max_response_length``,
``data.apply_chat_template_kwargs.enable_thinking``)."""

from __future__ import annotations

import glob
import os
import shlex
import subprocess

import pytest

from scgrpo_verl.cli import build_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "examples", "*", "*.sh")))


def _dry_run(script: str, tmp_path) -> list[list[str]]:
    env = {**os.environ, "DRY_RUN": "1", "STAGES": "train eval report", "RUNS": str(tmp_path / "runs"),
           "DATA": str(tmp_path / "data"), "QUESTIONS": "3,17"}
    proc = subprocess.run(["bash", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]


def _option(argv: list[str], name: str) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name:
            return argv[i + 1]
    raise AssertionError(f"{name} not in {argv}")


def test_every_paper_script_is_found():
    names = {os.path.relpath(p, os.path.join(REPO, "examples")) for p in SCRIPTS}
    assert {"sc_grpo/math.sh", "sc_grpo/lcb.sh", "sdpg/math.sh", "sdpo/lcb.sh", "sdpo/science.sh",
            "sdpo/tooluse.sh", "sdpo/ttsd.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: os.path.relpath(p, os.path.join(REPO, "examples")))
def test_dry_run_commands_parse_and_match_the_recipe(script, tmp_path):
    from scgrpo_verl.compose import compose_config

    commands = _dry_run(script, tmp_path)
    cli = [c for c in commands if c[0] == "scgrpo-verl"]
    assert cli, commands
    parser = build_parser()
    recipes = {}  # run name -> recipe, from the training commands
    for argv in commands:
        if argv[:3] == ["python", "-m", "verl.trainer.main_ppo"]:
            recipes[_option(argv, "trainer.experiment_name")] = _option(argv, "--config-name")
    evals = 0
    for argv in cli:
        try:
            args = parser.parse_args(argv[1:])
        except SystemExit as error:  # argparse printed why on stderr
            pytest.fail(f"{os.path.basename(script)}: `{shlex.join(argv)}` does not parse (exit {error.code})")
        if args.command != "eval":
            continue
        evals += 1
        run = os.path.basename(args.model_path.split("/checkpoints/")[0])
        config = compose_config(recipes[run])
        sampling = config.actor_rollout_ref.rollout.val_kwargs
        assert (args.n, args.temperature, args.top_p) == (sampling.n, sampling.temperature, sampling.top_p), run
        assert args.max_new_tokens == config.data.max_response_length, run
        assert args.enable_thinking == config.data.apply_chat_template_kwargs.enable_thinking, run
    assert evals or script.endswith("ttsd.sh")


def test_no_package_registry_host_is_named_in_the_repository():
    """Say "the public package index" / "PyTorch's CPU wheel index" instead (the hosts are assembled here so that
    this file does not name them either)."""
    hosts = [".".join(parts) for parts in (("pypi", "org"), ("files", "pythonhosted", "org"),
                                           ("download", "pytorch", "org"))]
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    found = []
    for name in listed.stdout.splitlines():
        path = os.path.join(REPO, name)
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8", errors="ignore").lower()
        found += [f"{name}: {host}" for host in hosts if host in text]
    assert not found, found
