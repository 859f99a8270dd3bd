"""Launch a real verl ``main_ppo`` run on the CPU backend and parse its step metrics.

    python -m scgrpo_verl.cpu_backend.run --config-name grpo --steps 2 [hydra overrides ...]

:func:`cpu_run` builds the tiny assets (:mod:`.assets`), starts
``python -m verl.trainer.main_ppo --config-path=pkg://scgrpo_verl.configs --config-name=<config_name>`` in its own
process group with :func:`cpu_overrides` + the caller's overrides (any config name and any override pass through,
later overrides win), streams the output to ``<workdir>/run.log`` (and stdout when ``echo``), enforces a hard
timeout, and returns the ``step:N - key:value - ...`` lines of verl's console logger as ``{step: {key: value}}``
(parsed by :mod:`scgrpo_verl.evaluation.verl_logs`, as ``scgrpo-verl eval`` / ``report`` read them).

Each run gets its own Ray temp dir, so cleanup after a failure or timeout kills exactly the processes of this run
(the launcher's process group, every descendant, and every process that names the run's Ray temp dir) instead of
``ray stop --force``, which would also kill unrelated Ray clusters on the machine (pass ``ray_stop=True`` to do that
as well). Its progress lines and the reading of its log (a killed or dead Ray worker, the last error line) are in
:mod:`.progress`.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from scgrpo_verl.evaluation.verl_logs import STEP_LINE, parse_console_log

from . import ENV
from .assets import TASKS, AssetPaths, prepare_assets
from .progress import Progress, fatal_cause, last_error_line

CONFIG_PATH = "pkg://scgrpo_verl.configs"
AUTOLOAD_MODULE = "scgrpo_verl.cpu_backend.autoload"


@dataclass
class CpuRunResult:
    returncode: Optional[int]
    timed_out: bool
    wall_s: float
    metrics: dict[int, dict[str, float]]
    workdir: str
    log_path: str
    checkpoint_dir: str
    assets: AssetPaths
    command: list[str] = field(default_factory=list)
    fatal: Optional[str] = None  # a killed or dead Ray worker (fatal_cause), when that ended the run

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.fatal is None

    @property
    def training_steps(self) -> list[int]:
        """The training steps that logged metrics (step 0 is the validation before training)."""
        return sorted(step for step in self.metrics if step > 0)

    def tail(self, n: int = 60) -> str:
        try:
            return "".join(Path(self.log_path).read_text(errors="replace").splitlines(True)[-n:])
        except OSError:
            return ""


def cpu_overrides(
    assets: AssetPaths,
    steps: int,
    checkpoint_dir: str,
    ray_tmp: Optional[str] = None,
    shaped_reward: bool = True,
    save_freq: int = -1,
) -> list[str]:
    """Hydra overrides of a CPU run: tiny model/data/batches, FSDP2 + sdpa, the hf rollout, Ray/TQ sizing."""
    rollout = "actor_rollout_ref.rollout"
    overrides = [
        # tiny assets and batch sizes
        f"data.train_files={assets.train_file}",
        f"data.val_files={assets.val_file}",
        "data.train_batch_size=2",
        "data.max_prompt_length=96",
        "data.max_response_length=32",
        "data.dataloader_num_workers=0",
        f"actor_rollout_ref.model.path={assets.model}",
        "actor_rollout_ref.model.use_remove_padding=False",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.ref.strategy=fsdp2",
        "actor_rollout_ref.actor.fsdp_config.use_torch_compile=False",
        "actor_rollout_ref.ref.fsdp_config.use_torch_compile=False",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=1",
        # the CPU rollout
        f"{rollout}.name=hf",
        f"{rollout}.n=4",  # 4 rollouts per prompt: SC-GRPO's routes and solve-none z-scores need more than 2
        f"{rollout}.tensor_model_parallel_size=1",
        f"{rollout}.log_prob_micro_batch_size_per_gpu=1",
        f"{rollout}.agent.num_workers=1",
        "reward.num_workers=1",
        # trainer
        f"trainer.total_training_steps={steps}",
        "trainer.total_epochs=1000",
        "trainer.n_gpus_per_node=1",
        "trainer.nnodes=1",
        "trainer.device=cpu",
        f"trainer.save_freq={save_freq}",
        "trainer.test_freq=-1",
        "trainer.val_before_train=False",
        "trainer.resume_mode=disable",
        "trainer.logger=[console]",
        f"trainer.default_local_dir={checkpoint_dir}",
        # Ray / TransferQueue sizing: without these TransferQueue waits forever, silently
        "ray_kwargs.ray_init.num_cpus=16",
        "+ray_kwargs.ray_init.num_gpus=1",
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
    ]
    if ray_tmp:
        overrides.append(f"+ray_kwargs.ray_init._temp_dir={ray_tmp}")
    for key, value in run_env_vars().items():
        overrides.append(f"+ray_kwargs.ray_init.runtime_env.env_vars.{key}='{value}'")
    if shaped_reward:
        from . import reward

        overrides += [
            f"reward.custom_reward_function.path={reward.__file__}",
            "reward.custom_reward_function.name=compute_score",
        ]
    return overrides


def run_env_vars() -> dict[str, str]:
    """Env of every process of the run; ``VERL_USE_EXTERNAL_MODULES`` activates the backend before other plugins."""
    env = dict(ENV)
    modules = [m for m in os.environ.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m]
    if AUTOLOAD_MODULE not in modules:
        modules.insert(0, AUTOLOAD_MODULE)
    env["VERL_USE_EXTERNAL_MODULES"] = ",".join(modules)
    env["RAY_DEDUP_LOGS"] = "0"
    return env


def _run_processes(root_pid: int, marker: Optional[str]) -> list:
    import psutil

    found = {}
    try:
        root = psutil.Process(root_pid)
        found[root.pid] = root
        for child in root.children(recursive=True):
            found[child.pid] = child
    except psutil.Error:
        pass
    if marker:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(marker in part for part in (proc.info["cmdline"] or [])):
                    found[proc.pid] = proc
                    for child in proc.children(recursive=True):
                        found[child.pid] = child
            except psutil.Error:
                continue
    found.pop(os.getpid(), None)
    return list(found.values())


def _kill_run(proc: subprocess.Popen, marker: Optional[str], ray_stop: bool) -> None:
    import psutil

    victims = _run_processes(proc.pid, marker)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    for victim in victims:
        try:
            victim.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(victims, timeout=5)
    for victim in alive:
        try:
            victim.kill()
        except psutil.Error:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if ray_stop:
        ray = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
        subprocess.run([ray, "stop", "--force"], check=False, capture_output=True, timeout=60)


def cpu_run(
    config_name: str = "grpo",
    steps: int = 2,
    overrides: Sequence[str] = (),
    workdir: Optional[str] = None,
    timeout: float = 600,
    echo: bool = True,
    shaped_reward: bool = True,
    save_freq: int = -1,
    ray_stop: bool = False,
    check: bool = False,
    preflight: bool = True,
    progress: bool = False,
    heartbeat: float = 60,
    fatal_grace: float = 30,
    task: str = "math",
) -> CpuRunResult:
    """Run ``main_ppo`` with ``config_name`` from ``scgrpo_verl/configs`` on the CPU backend for ``steps`` steps.

    ``overrides`` are appended after the CPU overrides (so they win), e.g. ``["trainer.v1.trainer_mode=self_teacher"]``.
    ``save_freq=steps`` saves the actor at the end under ``result.checkpoint_dir``. ``check`` raises on failure.
    ``preflight`` composes the run's config here first and runs verl's validation and the start-up checks
    (:func:`preflight_check`), so that a bad option or a missing data file fails in seconds with one line.
    ``task``: the tiny assets' task (:func:`.assets.prepare_assets`: ``math`` never gets a verified rollout from
    the random model; ``parity`` gets some in most groups, so every method's mechanism runs).
    ``progress`` prints :class:`Progress` lines (Ray up, each step's stages) and a 'still running' line after
    ``heartbeat`` quiet seconds. A log line saying that Ray killed a worker for memory, or that a worker died
    (:func:`fatal_cause`), ends the run ``fatal_grace`` seconds later if it has not ended by itself.
    """
    workdir = os.path.abspath(workdir or tempfile.mkdtemp(prefix="scgrpo_cpu_run_"))
    os.makedirs(workdir, exist_ok=True)
    assets = prepare_assets(os.path.join(workdir, "assets"), task=task)
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    loss_mode = None
    if preflight:
        planned = cpu_overrides(assets, steps, checkpoint_dir, shaped_reward=shaped_reward, save_freq=save_freq)
        loss_mode = preflight_check(config_name, [*planned, *overrides])
    # short: Ray puts unix sockets under it (107-byte limit)
    ray_tmp = tempfile.mkdtemp(prefix="scgrpo_ray_", dir="/tmp")
    command = [
        sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        f"--config-path={CONFIG_PATH}",
        f"--config-name={config_name}",
        *cpu_overrides(assets, steps, checkpoint_dir, ray_tmp, shaped_reward=shaped_reward, save_freq=save_freq),
        *overrides,
    ]
    env = {**os.environ, **run_env_vars()}
    env.setdefault("PYTHONUNBUFFERED", "1")
    log_path = os.path.join(workdir, "run.log")
    lines: list[str] = []
    start = time.monotonic()
    timed_out = False
    tracker = Progress(steps, start, loss_mode)
    fatal: list[tuple[float, str]] = []  # (when, cause) of the first killed / dead worker
    ended_by_fatal = False
    with open(log_path, "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        proc = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
        )

        def pump():
            for line in proc.stdout:
                lines.append(line)
                log.write(line)
                log.flush()
                said = tracker(line)
                if said and fatal:
                    fatal.clear()  # the run went on after the worker died (e.g. a restarted actor): not fatal
                if not fatal:
                    cause = fatal_cause(line)
                    if cause:
                        fatal.append((time.monotonic(), cause))
                if progress and said:
                    print(said, flush=True)
                if echo and (STEP_LINE.search(line) or "Traceback" in line or "Error:" in line[:200]):
                    sys.stdout.write(line)
                    sys.stdout.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            while proc.poll() is None:  # poll, so that a dead worker or a silent wait is noticed before the timeout
                if time.monotonic() - start > timeout:
                    timed_out = True
                    break
                if fatal and time.monotonic() - fatal[0][0] > fatal_grace:
                    ended_by_fatal = True  # verl may wait forever on a dead actor
                    break
                if progress:
                    beat = tracker.heartbeat(heartbeat)
                    if beat:
                        print(beat, flush=True)
                time.sleep(0.5)
        except BaseException:
            _kill_run(proc, ray_tmp, ray_stop)
            raise
        finally:
            if timed_out or ended_by_fatal or proc.returncode != 0:
                _kill_run(proc, ray_tmp, ray_stop)
            else:
                # a clean exit shuts Ray down itself; kill whatever of this run is left anyway
                leftovers = _run_processes(proc.pid, ray_tmp) if proc.returncode is not None else []
                if leftovers:
                    _kill_run(proc, ray_tmp, ray_stop)
            reader.join(timeout=10)
            if timed_out:
                log.write(f"\n[scgrpo_verl.cpu_backend] killed after the {timeout}s timeout\n")
            elif ended_by_fatal:
                log.write(f"\n[scgrpo_verl.cpu_backend] killed {fatal_grace}s after: {fatal[0][1]}\n")
    shutil.rmtree(ray_tmp, ignore_errors=True)
    result = CpuRunResult(
        returncode=None if timed_out or ended_by_fatal else proc.returncode,  # None: killed here
        timed_out=timed_out,
        wall_s=time.monotonic() - start,
        metrics=parse_console_log(lines),
        workdir=workdir,
        log_path=log_path,
        checkpoint_dir=checkpoint_dir,
        assets=assets,
        command=command,
        fatal=fatal[0][1] if fatal and (ended_by_fatal or timed_out or proc.returncode != 0) else None,
    )
    if check and not result.ok:
        raise RuntimeError(
            f"CPU run failed (returncode={result.returncode}, timed_out={timed_out}"
            f"{'; ' + result.fatal if result.fatal else ''}); log {log_path}:\n{result.tail()}"
        )
    return result


def preflight_check(config_name: str, overrides: Sequence[str]) -> Optional[str]:
    """Compose the run's config in this process, run verl's ``validate_config`` and the plugin's start-up checks
    (not the GPU count: the run fakes one GPU; not the rollout: 'hf' is registered in the run's processes). Raises
    :class:`scgrpo_verl.errors.UserError` naming the key; returns the self-teacher's loss mode (None without one)."""
    from scgrpo_verl.compose import compose_config, validate
    from scgrpo_verl.errors import deferred_warnings
    from scgrpo_verl.startup_checks import run_startup_checks

    with deferred_warnings():  # verl's "Disabled critic ..." only when the config passes
        config = compose_config(config_name, list(overrides))
        actor = validate(config)
        run_startup_checks(config, skip=["gpus", "rollout_name"])  # the run's own processes register 'hf'
    teacher = getattr(actor.policy_loss, "self_teacher", None)
    return actor.policy_loss.loss_mode if teacher is not None and teacher.enable else None


def write_metrics_json(metrics: dict[int, dict[str, float]], path: str) -> str:
    """``{step: {key: value}}`` -> JSON at ``path`` (steps as strings; non-finite values as null)."""
    import json

    data = {str(step): {k: (v if math.isfinite(v) else None) for k, v in sorted(m.items())} for step, m in sorted(
        metrics.items())}
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    return path


RUN_MEMORY_GIB = 5  # what one cpu-run holds at its peak (driver, TaskRunner, actor, rollout and reward workers)


def free_memory_gib() -> float:
    """Memory available to a new run now (``MemAvailable``), in GiB."""
    import psutil

    return psutil.virtual_memory().available / 2**30


STEP_SUMMARY_KEYS = ("actor/pg_loss", "actor/grad_norm", "critic/score/mean", "response_length/mean")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scgrpo-verl cpu-run",
        description="Run verl's main_ppo on the CPU debugging backend with a tiny model and 16 prompts of a tiny "
                    "task (scgrpo_verl configs; 2-5 minutes and 5 GB of RAM for 2 steps). Prints its progress and "
                    "each step's metrics; the full log is <workdir>/run.log.",
    )
    parser.add_argument("--config-name", default="grpo",
                        help="grpo | dapo | sc_grpo | sdpo | sdpg (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=2, help="training steps (default: %(default)s)")
    parser.add_argument("--task", choices=TASKS, default="parity",
                        help="the tiny task: parity (\"is n odd?\"; the tiny model is right about half the time, so "
                             "groups mix verified and failed rollouts and SC-GRPO's weighting, SDPO's and SDPG's "
                             "teachers all run) or math (arithmetic the random model never solves) "
                             "(default: %(default)s)")
    parser.add_argument("--workdir", default=None,
                        help="folder for the tiny assets, run.log and checkpoints/ (default: a new temp folder)")
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds before the run is killed; verl can wait forever on a CPU (default: %(default)s)")
    parser.add_argument("--save-freq", type=int, default=-1,
                        help="save a checkpoint every N steps under <workdir>/checkpoints (default: never)")
    parser.add_argument("--no-shaped-reward", action="store_true",
                        help="use the config's reward as is (default: verl's score plus a dense digit term, so that "
                             "a random model gets non-zero advantages)")
    parser.add_argument("--ray-stop", action="store_true", help="also run `ray stop --force` after a failure")
    parser.add_argument("--debug", action="store_true", help="print the log's tail on failure, and tracebacks")
    parser.add_argument("--metrics-json", default=None, metavar="PATH",
                        help="also write every step's metrics (full precision) to PATH as JSON: "
                             "{\"1\": {\"actor/pg_loss\": ...}, ...} (default: none)")
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides after the CPU ones (later win), e.g. self_teacher.sc_grpo.seed=3")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    print(f"[cpu-run] {args.config_name}: composing and checking the config, building the tiny model and data",
          flush=True)
    result = cpu_run(
        config_name=args.config_name,
        steps=args.steps,
        overrides=args.overrides,
        workdir=args.workdir,
        timeout=args.timeout,
        shaped_reward=not args.no_shaped_reward,
        save_freq=args.save_freq,
        ray_stop=args.ray_stop,
        echo=False,
        progress=True,
        task=args.task,
    )
    if args.metrics_json:
        write_metrics_json(result.metrics, args.metrics_json)
    status = ("ok" if result.ok else "timed out" if result.timed_out else "stopped" if result.returncode is None
              else f"failed (rc={result.returncode})")
    print(f"[cpu-run] {status} in {result.wall_s:.0f}s, {len(result.training_steps)} of {args.steps} training "
          f"step(s); log: {result.log_path}")
    for step in sorted(result.metrics):
        m = result.metrics[step]
        keys = [*STEP_SUMMARY_KEYS, *sorted(k for k in m if "self_teacher/" in k)]  # the plugin's teacher metrics
        shown = ", ".join(f"{k}={m[k]:.4g}" for k in keys if k in m)
        if shown:
            print(f"[cpu-run] step {step}: {shown}")
    if not result.ok:
        if args.debug:
            print(result.tail(), file=sys.stderr)
        elif result.fatal:
            memory = (f"; free memory now: {free_memory_gib():.1f} GiB, a run needs about {RUN_MEMORY_GIB} GiB"
                      if "memory" in result.fatal else "")
            print(f"[cpu-run] {result.fatal}{memory} (full log: {result.log_path})", file=sys.stderr)
        else:
            cause = last_error_line(result.tail(400))
            print(f"[cpu-run] {cause or 'no error line in the log'} (full log: {result.log_path}; --debug prints "
                  "its tail)", file=sys.stderr)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
