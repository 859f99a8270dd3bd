"""Start-up checks that catch a recipe that cannot run, before any worker starts.

verl itself only meets these problems late: a missing data file when the TaskRunner builds its dataset, an
ungradable ``data_source`` when the first reward is computed (``NotImplementedError`` after the first rollout), an
unset rollout name in a worker after ~40 s, and too few GPUs as a silent wait for Ray placement groups or
TransferQueue actors. Each check here returns :class:`Problem` s naming the config key:

- :func:`check_data_files`: ``data.train_files`` / ``data.val_files`` exist and are ``.parquet`` / ``.json`` /
  ``.jsonl`` (the formats verl's ``RLHFDataset`` reads);
- :func:`check_data_sources`: every ``data_source`` in those files can be graded by the configured reward function
  (only the ``data_source`` column is read, with pyarrow: seconds for the largest sets);
- :func:`check_method_data`: the train files carry the ``extra_info`` keys the method reads (OPSD's worked
  reference solution; only the ``extra_info`` column is read);
- :func:`check_rollout_name`: ``actor_rollout_ref.rollout.name`` is set (not ``???``) and registered with verl;
- :func:`check_model_path`: a local-looking ``actor_rollout_ref.model.path`` exists and holds a ``config.json``;
- :func:`check_attention`: on a CUDA machine, verl's default ``flash_attention_2`` has flash-attn installed (else
  one line: install it, or override the attention to ``sdpa``);
- :func:`check_gpus`: the machine (or the Ray cluster) has the ``trainer.n_gpus_per_node * trainer.nnodes`` GPUs
  the run asks for. Skipped on the CPU debugging backend (``scgrpo-verl cpu-run``), which fakes one GPU.

Callers: ``scgrpo-verl check`` (``--skip gpus`` checks a GPU recipe on a CPU machine), ``scgrpo-verl cpu-run``
(before it launches), verl's ``validate_config`` in ``main_ppo``'s driver for configs with a ``self_teacher`` section
(wrapped by :mod:`scgrpo_verl.plugin`, before ``ray.init``), and the ``self_teacher`` trainer's constructor. The
environment variable ``SCGRPO_VERL_SKIP_CHECKS=gpus,data_sources`` skips checks by name everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from scgrpo_verl.errors import UserError

SKIP_ENV = "SCGRPO_VERL_SKIP_CHECKS"
DATA_KEYS = ("data.train_files", "data.val_files")
DATA_FORMATS = (".parquet", ".json", ".jsonl")
PLUGIN_REWARD_MODULES = ("scgrpo_verl.rewards", "scgrpo_verl/rewards", "scgrpo_verl/rewards/__init__.py")


@dataclass(frozen=True)
class Problem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class StartupCheckError(UserError, ValueError):
    """One or more start-up checks failed; the message has one line per problem, each naming its key."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# --------------------------------------------------------------------------- config access


def _get(config: Any, dotted: str, default: Any = None) -> Any:
    from omegaconf import OmegaConf

    try:
        value = OmegaConf.select(config, dotted, default=default, throw_on_missing=False)
    except Exception:  # an interpolation that does not resolve: validate_config reports it
        return default
    return value


def _is_missing(config: Any, dotted: str) -> bool:
    from omegaconf import OmegaConf

    parent, _, leaf = dotted.rpartition(".")
    try:
        node = OmegaConf.select(config, parent) if parent else config
        return node is not None and OmegaConf.is_missing(node, leaf)
    except Exception:  # not a DictConfig (a plain dict in tests) or no such key
        return False


def data_files(config: Any, key: str) -> list[str]:
    """The paths under ``key`` (a string or a list of strings), ``~`` expanded."""
    value = _get(config, key)
    if value is None:
        return []
    if isinstance(value, str):
        paths = [value]
    else:
        paths = [str(v) for v in value]
    return [os.path.expanduser(p) for p in paths]


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


# --------------------------------------------------------------------------- checks


def check_data_files(config: Any) -> list[Problem]:
    problems = []
    for key in DATA_KEYS:
        if _is_missing(config, key):
            problems.append(Problem(key, "not set (???); give the .parquet file(s) that data_prep wrote"))
            continue
        for path in data_files(config, key):
            if _is_remote(path):
                continue  # hdfs:// etc.: verl copies it at start-up
            local = path[len("file://"):] if path.startswith("file://") else path
            if not os.path.exists(local):
                problems.append(Problem(key, f"file {local} does not exist (data_prep/<set>.py --out DIR writes "
                                             "DIR/<split>.parquet)"))
            elif os.path.isdir(local):
                problems.append(Problem(key, f"{local} is a folder; give the .parquet file(s) in it"))
            elif not local.endswith(DATA_FORMATS):
                problems.append(Problem(key, f"{local}: verl reads only {', '.join(DATA_FORMATS)} files"))
    return problems


def read_data_sources(path: str) -> dict[str, int]:
    """``{data_source: rows}`` of one data file, reading only that column."""
    import collections

    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        if "data_source" not in schema.names:
            raise UserError(f"{path}: no 'data_source' column (columns: {schema.names}); verl's reward managers "
                            "need one per row")
        column = pq.read_table(path, columns=["data_source"]).column("data_source")
    else:
        import pyarrow.json as pj

        table = pj.read_json(path)
        if "data_source" not in table.column_names:
            raise UserError(f"{path}: no 'data_source' field (fields: {table.column_names})")
        column = table.column("data_source")
    counts = collections.Counter()
    import pyarrow.compute as pc

    for item in pc.value_counts(column).to_pylist():
        counts[item["values"]] += item["counts"]
    return dict(counts)


def verl_default_can_grade(data_source: Any) -> bool:
    """Whether verl 0.9.1's ``verl.utils.reward_score.default_compute_score`` (used when
    ``reward.custom_reward_function.path`` is unset) has a branch for ``data_source`` (its if/elif chain, read from
    the pinned release)."""
    if not isinstance(data_source, str):
        return False
    known = {
        "openai/gsm8k", "lighteval/MATH", "DigitalLearningGmbH/MATH-lighteval", "HuggingFaceH4/MATH-500",
        "math_dapo", "math", "math_dapo_reasoning", "numina_aops_forum", "numina_synthetic_math", "numina_amc_aime",
        "numina_synthetic_amc", "numina_cn_k12", "numina_olympiads", "codecontests", "apps", "codeforces", "taco",
        "hiyouga/geometry3k", "searchR1_nq", "searchR1_triviaqa", "searchR1_popqa", "searchR1_hotpotqa",
        "searchR1_2wikimultihopqa", "searchR1_musique", "searchR1_bamboogle",
    }
    return data_source in known or data_source.startswith("aime")


def reward_grader(config: Any) -> tuple[Optional[Callable[[Any], bool]], str]:
    """(predicate ``data_source -> gradable``, description of the reward function); the predicate is ``None`` when
    the configured function does not say which sources it knows (a custom function without ``can_grade``)."""
    path = _get(config, "reward.custom_reward_function.path")
    name = _get(config, "reward.custom_reward_function.name") or "compute_score"
    if not path:
        return verl_default_can_grade, "verl's default reward function (reward.custom_reward_function.path is unset)"
    if path.removeprefix("pkg://").removesuffix(".py") in PLUGIN_REWARD_MODULES and name == "compute_score":
        from scgrpo_verl.rewards import can_grade

        return can_grade, f"the plugin's reward function ({path})"
    from verl.utils.import_utils import load_module

    try:
        module = load_module(path)
        if not callable(getattr(module, name, None)):
            raise AttributeError(f"no function {name!r} in it")
    except Exception as error:  # noqa: BLE001 - any failure to load it is the user's to fix
        raise UserError(f"reward.custom_reward_function: cannot load {name!r} from {path!r} "
                        f"({type(error).__name__}: {error})") from error
    predicate = getattr(module, "can_grade", None)
    return (predicate if callable(predicate) else None), f"{name} from {path}"


def check_data_sources(config: Any) -> list[Problem]:
    if _get(config, "reward.reward_model.enable", False):
        return []  # a reward model grades every source
    try:
        predicate, described = reward_grader(config)
    except UserError as error:
        return [Problem("reward.custom_reward_function", str(error).split(": ", 1)[-1])]
    if predicate is None:
        return []
    problems = []
    for key in DATA_KEYS:
        for path in data_files(config, key):
            if _is_remote(path) or not os.path.isfile(path) or not path.endswith(DATA_FORMATS):
                continue  # check_data_files reports these
            try:
                sources = read_data_sources(path)
            except UserError as error:
                problems.append(Problem(key, str(error)))
                continue
            except Exception as error:  # noqa: BLE001 - an unreadable file is the user's to fix
                problems.append(Problem(key, f"{path}: cannot be read ({type(error).__name__}: {error})"))
                continue
            bad = {source: n for source, n in sources.items() if not predicate(source)}
            if bad:
                listed = ", ".join(f"{source!r} ({n} rows)" for source, n in sorted(bad.items(), key=str))
                hint = ""
                if described.startswith("verl's default"):
                    hint = ("; set reward.custom_reward_function.path=pkg://scgrpo_verl.rewards "
                            "reward.custom_reward_function.name=compute_score for the plugin's graders")
                else:
                    from scgrpo_verl.rewards import DATA_SOURCES

                    hint = f"; it grades {', '.join(DATA_SOURCES)}" if "plugin" in described else ""
                problems.append(Problem(key, f"{path}: data_source {listed} cannot be graded by {described}{hint}"))
    return problems


def registered_rollouts() -> list[str]:
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY

    return sorted({name for name, _mode in _ROLLOUT_REGISTRY})


def check_rollout_name(config: Any) -> list[Problem]:
    key = "actor_rollout_ref.rollout.name"
    if _is_missing(config, key):
        return [Problem(key, f"not set (???); set it to one of {registered_rollouts()} (vllm needs "
                             "pip install -e '.[gpu]'; scgrpo-verl cpu-run uses its own 'hf')")]
    name = _get(config, key)
    known = registered_rollouts()
    from scgrpo_verl.cpu_flag import ROLLOUT_NAME, is_enabled

    if name == ROLLOUT_NAME and not is_enabled():
        return [Problem(key, f"the {ROLLOUT_NAME!r} rollout exists only on the CPU debugging backend "
                             f"(scgrpo-verl cpu-run); on GPUs use one of {known}")]
    if name not in known:
        return [Problem(key, f"unknown rollout {name!r}; registered: {known}")]
    return []


def gpus_available(config: Any) -> tuple[Optional[int], str]:
    """(GPUs the run can get, where that number comes from); ``None`` when it cannot be known here (an existing
    Ray cluster named by ``ray_kwargs.ray_init.address`` / ``RAY_ADDRESS`` that this process has not joined)."""
    try:
        import ray

        if ray.is_initialized():
            return int(ray.cluster_resources().get("GPU", 0)), "the Ray cluster"
    except Exception:  # noqa: BLE001 - no Ray: count local devices
        pass
    if _get(config, "ray_kwargs.ray_init.address") or os.environ.get("RAY_ADDRESS"):
        return None, "an existing Ray cluster"
    forced = _get(config, "ray_kwargs.ray_init.num_gpus")
    if forced is not None:
        return int(forced), "ray_kwargs.ray_init.num_gpus"
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = "this machine" + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else "")
    return int(torch.cuda.device_count()), where


MODEL_KEY = "actor_rollout_ref.model.path"
ATTENTION_KEY = "actor_rollout_ref.model.override_config.attn_implementation"


def looks_local(path: str) -> bool:
    """A path, not a hub id (``org/name``): absolute, ``~``, ``./`` / ``../`` or ``file://``."""
    return path.startswith(("/", "~", "./", "../", "file://")) or path in (".", "..")


def check_model_path(config: Any) -> list[Problem]:
    """``actor_rollout_ref.model.path`` that looks like a local folder exists and holds a ``config.json`` (a hub id
    such as ``Qwen/Qwen3-8B`` is left to the download at start-up)."""
    path = _get(config, MODEL_KEY)
    if not isinstance(path, str) or not looks_local(path):
        return []
    local = os.path.expanduser(path[len("file://"):] if path.startswith("file://") else path)
    if not os.path.exists(local):
        return [Problem(MODEL_KEY, f"{path} does not exist (a local checkpoint folder; a hub model is named "
                                   "org/name, e.g. Qwen/Qwen3-8B)")]
    if not os.path.isfile(os.path.join(local, "config.json")):
        return [Problem(MODEL_KEY, f"{path} is not a Hugging Face checkpoint folder (no config.json)")]
    return []


def check_attention(config: Any) -> list[Problem]:
    """On a machine with CUDA GPUs, verl's default ``flash_attention_2`` needs flash-attn, which ``.[gpu]`` does not
    install; without it the model load fails inside a worker, after Ray and the rollout servers are up."""
    import importlib.util

    from scgrpo_verl.cpu_flag import is_enabled

    if is_enabled() or str(_get(config, "trainer.device", "cuda") or "cuda") != "cuda":
        return []
    wanted = _get(config, ATTENTION_KEY) or "flash_attention_2"
    if wanted != "flash_attention_2" or importlib.util.find_spec("flash_attn") is not None:
        return []
    import torch

    if torch.cuda.device_count() == 0:
        return []  # checking a GPU recipe elsewhere: flash-attn matters on the GPU machine
    return [Problem(ATTENTION_KEY, "flash_attention_2 (verl's default) needs flash-attn, which is not installed: "
                                   "pip install -e '.[flash-attn]' --no-build-isolation, or override "
                                   f"+{ATTENTION_KEY}=sdpa")]


def check_gpus(config: Any) -> list[Problem]:
    from scgrpo_verl.cpu_flag import is_enabled

    device = str(_get(config, "trainer.device", "cuda") or "cuda")
    if is_enabled() or device != "cuda":
        return []  # the CPU backend fakes its GPU; NPUs are counted by their own stack
    per_node = int(_get(config, "trainer.n_gpus_per_node", 1) or 0)
    nodes = int(_get(config, "trainer.nnodes", 1) or 0)
    wanted = per_node * nodes
    have, where = gpus_available(config)
    if have is None or have >= wanted:
        return []
    fix = "run it where the GPUs are, or lower trainer.n_gpus_per_node"
    if have == 0:
        fix += "; on a CPU-only machine use scgrpo-verl cpu-run (or check --skip gpus to check a GPU recipe)"
    return [Problem("trainer.n_gpus_per_node", f"the run asks for {per_node} x trainer.nnodes={nodes} = {wanted} "
                                               f"GPU(s) but {where} has {have}; {fix}")]


def rows_with_extra_info(path: str, key: str) -> tuple[int, int]:
    """(rows whose ``extra_info[key]`` is a non-empty value, rows) of one data file, reading only ``extra_info``."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        if "extra_info" not in pq.read_schema(path).names:
            return 0, pq.read_metadata(path).num_rows
        values = pq.read_table(path, columns=["extra_info"]).column("extra_info").to_pylist()
    else:
        import pandas as pd

        frame = pd.read_json(path, lines=path.endswith(".jsonl"))
        values = list(frame["extra_info"]) if "extra_info" in frame else [None] * len(frame)
    found = sum(1 for value in values if isinstance(value, dict) and str(value.get(key) or "").strip())
    return found, len(values)


def check_method_data(config: Any) -> list[Problem]:
    """The train files carry the ``extra_info`` keys the method reads (OPSD's reference solution): a file where no
    row has one would train nothing, and a missing one in a few rows only leaves those rollouts without a teacher."""
    if not _get(config, "self_teacher.enable", False):
        return []
    from scgrpo_verl.methods import get_method, is_method
    from scgrpo_verl.settings import SelfTeacherConfig

    loss_mode = _get(config, "actor_rollout_ref.actor.policy_loss.loss_mode")
    if not is_method(loss_mode):
        return []
    method = get_method(loss_mode)
    required = method.required_extra_info(SelfTeacherConfig.from_mapping(_get(config, "self_teacher")))
    problems = []
    for path in data_files(config, "data.train_files"):
        if _is_remote(path) or not os.path.isfile(path) or not path.endswith(DATA_FORMATS):
            continue  # check_data_files reports these
        for key, (option, where) in required.items():
            try:
                found, rows = rows_with_extra_info(path, key)
            except Exception as error:  # noqa: BLE001 - an unreadable file is the user's to fix
                problems.append(Problem("data.train_files", f"{path}: cannot be read ({type(error).__name__}: {error})"))
                continue
            if found == 0:
                problems.append(Problem(option, f"{path}: none of its {rows} rows has extra_info[{key!r}], which "
                                                f"loss_mode {loss_mode!r} reads ({where})"))
    return problems


CHECKS: dict[str, Callable[[Any], list[Problem]]] = {
    "data_files": check_data_files,
    "data_sources": check_data_sources,
    "method_data": check_method_data,
    "rollout_name": check_rollout_name,
    "model": check_model_path,
    "attention": check_attention,
    "gpus": check_gpus,
}


def skipped_from_env() -> set[str]:
    return {name.strip() for name in os.environ.get(SKIP_ENV, "").split(",") if name.strip()}


def find_problems(config: Any, skip: Iterable[str] = ()) -> list[Problem]:
    skip = set(skip) | skipped_from_env()
    unknown = sorted(skip - set(CHECKS))
    if unknown:
        raise UserError(f"unknown start-up check {unknown[0]!r} to skip; names: {', '.join(CHECKS)}")
    problems: list[Problem] = []
    for name, check in CHECKS.items():
        if name not in skip:
            problems += check(config)
    return problems


def run_startup_checks(config: Any, skip: Iterable[str] = ()) -> None:
    """Every check not in ``skip`` (or ``$SCGRPO_VERL_SKIP_CHECKS``); raises :class:`StartupCheckError` listing all
    problems, one line each, naming its key."""
    problems = find_problems(config, skip)
    if problems:
        raise StartupCheckError(problems)
