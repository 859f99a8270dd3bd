"""Automatic registration through verl's ``verl.plugins`` entry point, in fresh processes and in a
Ray worker, and loud failure."""

import subprocess
import sys

import pytest

CHECK = (
    "import verl\n"
    "from verl.trainer.ppo.core_algos import get_adv_estimator_fn, get_policy_loss_fn\n"
    "get_adv_estimator_fn('sc_grpo')\n"
    "[get_policy_loss_fn(n) for n in ('sc_grpo', 'sdpo', 'sdpg')]\n"
    "import sys; assert 'scgrpo_verl.plugin' in sys.modules\n"
    "print('REGISTERED')\n"
)


def run_python(code, **env):
    import os

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_fresh_process_registers_on_import_verl():
    result = run_python(CHECK)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REGISTERED" in result.stdout


def test_registration_failure_is_logged_at_warning():
    # Make one glue module fail to import: verl would swallow it at DEBUG, the plugin must not.
    code = "import sys; sys.modules['scgrpo_verl.losses'] = None\nimport verl\n"
    result = run_python(code)
    assert "scgrpo_verl: registering with verl failed" in result.stderr
    assert "scgrpo_verl.losses" in result.stderr  # the cause is named


@pytest.mark.slow  # a Ray cluster (raylet, GCS, a worker): multi-process, ~40 s on a busy 2-core host
@pytest.mark.timeout(300)
def test_registration_inside_a_ray_worker():
    code = (
        "import ray\n"
        "ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
        "@ray.remote(num_cpus=1)\n"
        "def probe():\n"
        "    import sys\n"
        "    before = 'scgrpo_verl' in sys.modules\n"
        "    import verl\n"
        "    from verl.trainer.ppo.core_algos import get_adv_estimator_fn, get_policy_loss_fn\n"
        "    get_adv_estimator_fn('sc_grpo'); get_policy_loss_fn('sdpg')\n"
        "    return before, True\n"
        "before, ok = ray.get(probe.remote())\n"
        "ray.shutdown()\n"
        "assert not before and ok\n"
        "print('RAY_OK')\n"
    )
    result = run_python(code, RAY_DEDUP_LOGS="0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RAY_OK" in result.stdout


IMPORT_FIRST = (
    "import {module}\n"
    "import sys\n"
    "from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, POLICY_LOSS_REGISTRY\n"
    "missing = [n for n in ('sc_grpo', 'sdpo', 'sdpg') if n not in POLICY_LOSS_REGISTRY]\n"
    "missing += ['estimator sc_grpo'] if 'sc_grpo' not in ADV_ESTIMATOR_REGISTRY else []\n"
    "print('MISSING', missing)\n"
)


def test_importing_the_teacher_forward_first_still_registers():
    # its first import used to import verl halfway through, so the plugin (whose loss module imports it) failed
    # with a circular ImportError that verl swallowed: no loss modes, and "unknown loss 'sc_grpo'" later on
    result = run_python(IMPORT_FIRST.format(module="scgrpo_verl.teacher.engine_forward"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MISSING []" in result.stdout, result.stderr[-3000:]
    assert "registering with verl failed" not in result.stderr


def test_config_registers_a_plugin_whose_load_was_skipped():
    # a process where verl's one plugin load found the plugin unimportable (here: hidden), then the plugin
    # is importable again by the time verl builds the actor config
    code = (
        "import sys\n"
        "sys.modules['scgrpo_verl.plugin'] = None\n"
        "import verl\n"
        "del sys.modules['scgrpo_verl.plugin']\n"
        "from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY\n"
        "assert 'sc_grpo' not in POLICY_LOSS_REGISTRY\n"
        "from scgrpo_verl.config import SelfTeacherPolicyLossConfig\n"
        "SelfTeacherPolicyLossConfig(loss_mode='sc_grpo', adv_estimator='sc_grpo', self_teacher={'enable': True})\n"
        "print('BUILT')\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BUILT" in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_any_module_imported_first_registers_the_plugin():
    import pkgutil
    from concurrent.futures import ThreadPoolExecutor

    import scgrpo_verl

    modules = [m.name for m in pkgutil.walk_packages(scgrpo_verl.__path__, "scgrpo_verl.")]
    assert len(modules) > 20
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(modules, pool.map(lambda m: run_python(IMPORT_FIRST.format(module=m)), modules)))
    broken = {m: (r.stdout.strip()[-200:], r.stderr.strip()[-300:]) for m, r in results.items()
              if r.returncode != 0 or "MISSING []" not in r.stdout}
    assert not broken, broken
