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
