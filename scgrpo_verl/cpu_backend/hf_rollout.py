"""An ``("hf", "async")`` rollout for verl: a Ray actor that runs Hugging Face ``generate`` on the CPU.

verl 0.9.1 has two rollout registries, and a backend needs an entry in both:

* ``verl.workers.rollout.base._ROLLOUT_REGISTRY[(name, mode)]`` -> the *server adapter* built inside each actor
  worker (``ActorRolloutRefWorker.init_model``). It receives the trainer's weights (``update_weights``) and
  wakes / sleeps the server. Here: :class:`HFServerAdapter`, which gathers the full tensors and ships them to the
  server actor through the Ray object store (fine for a tiny model; no CUDA IPC on CPU).
* ``verl.workers.rollout.replica.RolloutReplicaRegistry[name]`` -> the *replica* that the trainer's
  ``LLMServerManager`` builds. It launches the server actor and hands its handle to the load balancer, from which
  the agent loop calls ``server.generate(prompt_ids=..., sampling_params=..., request_id=...)`` and expects a
  ``TokenOutput``. Here: :class:`HFReplica` and :class:`HFRolloutServer`.

The server holds its own copy of the model, loaded from the model path at start and replaced at every weight
sync; requests are served one at a time (``asyncio.Lock`` + a worker thread) with ``model.generate``.

Reproducible sampling: every request is sampled from its own seed, :func:`request_seed` of ``rollout.seed``, the
weight version's ``global_steps``, the prompt ids and the request's *occurrence*: the k-th request with the same
prompt ids in that weight version gets k (counted by one :class:`RequestCounter` actor shared by all replicas).
The n rollouts of a group therefore get n different seeds, and the set of samples a step draws does not depend on
how many replicas there are, which replica serves a request, or the order in which requests arrive. (verl's agent
loop passes no group index to the server; its ``request_id`` is a fresh uuid, or ``det-<priority>`` with priority 0
for every request of the v1 trainer under ``rollout.full_determinism``, so neither can tell the n samples apart.)
``rollout.full_determinism`` additionally turns on ``torch.use_deterministic_algorithms`` in the server.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from typing import Any, Generator, Optional

import ray
import torch

from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

from scgrpo_verl.cpu_flag import ROLLOUT_NAME

logger = logging.getLogger(__name__)

SERVER_PREFIX = f"{ROLLOUT_NAME}_server_"
COUNTER_NAME = f"{ROLLOUT_NAME}_rollout_request_counter"
# HF generate samples from torch's process-wide generator: one seeded generate at a time per process
_RNG_LOCK = threading.Lock()
_KEPT_VERSIONS = 4  # occurrence counts kept per (kind, global_steps, weight version); older ones are dropped


def prompt_digest(prompt_ids: list[int]) -> str:
    return hashlib.sha256(",".join(str(int(t)) for t in prompt_ids).encode()).hexdigest()


def request_seed(base_seed: int, global_steps: Optional[int], prompt_ids: list[int], occurrence: int) -> int:
    """The sampling seed of one request: a hash of the run's seed, the step, the prompt ids and the occurrence."""
    text = f"{int(base_seed)}|{global_steps}|{occurrence}|{prompt_digest(prompt_ids)}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


class RequestCounter:
    """Counts requests per (weight version, prompt ids): the k-th identical prompt gets occurrence k.

    One instance (a named Ray actor) serves every replica of a run, so that the n rollouts of a group get n
    distinct occurrences wherever they are served.
    """

    def __init__(self):
        self._counts: dict[tuple, dict[str, int]] = {}

    def next(self, version: tuple, digest: str) -> int:
        version = tuple(version)
        counts = self._counts.get(version)
        if counts is None:
            counts = self._counts[version] = {}
            while len(self._counts) > _KEPT_VERSIONS:
                self._counts.pop(next(iter(self._counts)))
        occurrence = counts.get(digest, 0)
        counts[digest] = occurrence + 1
        return occurrence


def _model_path(model_config) -> str:
    for key in ("local_path", "path"):
        value = getattr(model_config, key, None) if not isinstance(model_config, dict) else model_config.get(key)
        if value:
            return value
    raise ValueError("model config has no path")


class HFRolloutServer:
    """Token-in/token-out generation server (one per replica), the CPU stand-in for ``vLLMHttpServer``."""

    def __init__(
        self, config, model_config, replica_rank: int = 0, node_rank: int = 0, counter=None, kind: str = "rollout"
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from verl.utils.config import omega_conf_to_dataclass

        self.config = omega_conf_to_dataclass(config)
        self.replica_rank = replica_rank
        self.node_rank = node_rank
        path = _model_path(model_config)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
        self.model.eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        self.eos_token_ids = self._eos_ids(tokenizer)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_ids[0]
        self.global_steps: Optional[int] = None
        self.weight_version = 0
        self._lock = asyncio.Lock()
        self._thread_lock = threading.Lock()
        # the run's RequestCounter: a Ray actor handle (HFReplica), or an in-process instance (None: a private one)
        self._counter = RequestCounter() if counter is None else counter
        self.kind = kind
        self.base_seed = int(getattr(self.config, "seed", 0) or 0)
        if getattr(self.config, "full_determinism", False):
            torch.use_deterministic_algorithms(True, warn_only=True)

    def _eos_ids(self, tokenizer) -> list[int]:
        ids = []
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        for value in (gen_eos, tokenizer.eos_token_id):
            if value is None:
                continue
            ids.extend(value if isinstance(value, (list, tuple)) else [value])
        return sorted(set(int(i) for i in ids)) or [0]

    # ---- generation ---------------------------------------------------------------------------------------
    def _max_new_tokens(self, prompt_len: int, sampling_params: dict) -> int:
        if "max_tokens" in sampling_params:
            limit = sampling_params.pop("max_tokens")
        elif "max_new_tokens" in sampling_params:
            limit = sampling_params.pop("max_new_tokens")
        else:
            limit = min(
                self.config.response_length, self.config.prompt_length + self.config.response_length - prompt_len
            )
        max_model_len = self.config.max_model_len or (self.config.prompt_length + self.config.response_length)
        return max(1, min(int(limit), max_model_len - prompt_len))

    async def _occurrence(self, prompt_ids: list[int]) -> int:
        version = (self.kind, self.global_steps, self.weight_version)
        digest = prompt_digest(prompt_ids)
        if isinstance(self._counter, RequestCounter):
            return self._counter.next(version, digest)
        return await self._counter.next.remote(version, digest)

    def _generate_sync(self, prompt_ids: list[int], sampling_params: dict, seed: int) -> TokenOutput:
        sampling_params = dict(sampling_params)
        want_logprobs = bool(sampling_params.pop("logprobs", False))
        max_new_tokens = self._max_new_tokens(len(prompt_ids), sampling_params)
        temperature = float(sampling_params.get("temperature", 1.0) or 0.0)
        top_p = sampling_params.get("top_p", 1.0)
        top_k = sampling_params.get("top_k", -1)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            output_scores=want_logprobs,
            return_dict_in_generate=True,
        )
        if sampling_params.get("ignore_eos", False):
            kwargs["min_new_tokens"] = max_new_tokens
        if temperature <= 0:
            kwargs["do_sample"] = False
        else:
            kwargs.update(do_sample=True, temperature=temperature, top_p=float(top_p if top_p is not None else 1.0))
            kwargs["top_k"] = int(top_k) if top_k is not None and int(top_k) > 0 else 0
        repetition_penalty = sampling_params.get("repetition_penalty", 1.0)
        if repetition_penalty and float(repetition_penalty) != 1.0:
            kwargs["repetition_penalty"] = float(repetition_penalty)
        input_ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
        with self._thread_lock, _RNG_LOCK, torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the request's own stream; fork_rng restores the process's generator after
            out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        tokens = out.sequences[0, input_ids.shape[1] :].tolist()
        log_probs = None
        if want_logprobs:
            # processed log-probs (after temperature/top-k/top-p), like verl's default logprobs_mode
            log_probs = [
                float(torch.log_softmax(score[0].float(), dim=-1)[tok]) for score, tok in zip(out.scores, tokens)
            ]
        # generate() pads finished sequences; keep up to and including the first eos
        for i, tok in enumerate(tokens):
            if tok in self.eos_token_ids:
                tokens = tokens[: i + 1]
                log_probs = log_probs[: i + 1] if log_probs is not None else None
                break
        return TokenOutput(
            token_ids=tokens,
            log_probs=log_probs,
            stop_reason="completed",
            extra_fields={"global_steps": self.global_steps},
        )

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Optional[list[Any]] = None,
        video_data: Optional[list[Any]] = None,
        **kwargs: Any,
    ) -> TokenOutput:
        if image_data or video_data or kwargs.get("audio_data"):
            raise NotImplementedError("the CPU hf rollout is text-only")
        prompt_ids, sampling_params = list(prompt_ids), dict(sampling_params)
        # a caller's explicit seed (vLLM's per-request ``seed``) replaces rollout.seed as the base
        base_seed = sampling_params.pop("seed", None)
        base_seed = self.base_seed if base_seed is None else int(base_seed)
        # counted on arrival, before the lock: the counts depend only on which requests arrive, not on their order
        occurrence = await self._occurrence(prompt_ids)
        seed = request_seed(base_seed, self.global_steps, prompt_ids, occurrence)
        async with self._lock:
            return await asyncio.to_thread(self._generate_sync, prompt_ids, sampling_params, seed)

    # ---- weights ------------------------------------------------------------------------------------------
    def update_weights(self, state_dict: dict[str, torch.Tensor], global_steps: Optional[int] = None) -> int:
        with self._thread_lock:
            missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
            tied = getattr(self.model.config, "tie_word_embeddings", False)
            missing = [k for k in missing if not (tied and k == "lm_head.weight")]
            if missing or unexpected:
                raise RuntimeError(f"hf rollout weight sync: missing={missing[:8]} unexpected={unexpected[:8]}")
            self.weight_version += 1
        if global_steps is not None:
            self.global_steps = global_steps
        return self.weight_version

    def get_weight_version(self) -> int:
        return self.weight_version

    # ---- the vLLMHttpServer control surface the trainer calls (all no-ops: no KV cache to free on CPU) ----
    def get_server_address(self):
        return f"hf-rollout-{self.replica_rank}", self.node_rank

    async def wake_up(self, tags: Optional[list[str]] = None):
        return None

    async def sleep(self):
        return None

    async def clear_kv_cache(self):
        return None

    async def release_kv_cache(self):
        return None

    async def resume_kv_cache(self):
        return None

    async def set_global_steps(self, global_steps: int):
        self.global_steps = global_steps

    async def wait_for_requests_to_drain(self):
        async with self._lock:
            return None

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict:
        return {"aborted_count": 0, "request_ids": []}

    async def abort_request(self, request_id: str, reset_prefix_cache: bool = True) -> dict:
        return {"aborted": False, "request_id": request_id}

    async def resume_generation(self):
        return None

    async def start_profile(self, **kwargs):
        return None

    async def stop_profile(self):
        return None


class HFServerAdapter(BaseRollout):
    """Worker-side adapter (lives in the actor worker process): forwards weight syncs to the server actor."""

    def __init__(self, config, model_config, device_mesh=None, replica_rank: int = -1, **_kwargs):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", "0"))
        world = self.config.tensor_model_parallel_size * self.config.data_parallel_size
        world *= self.config.pipeline_model_parallel_size
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self.rollout_rank = rank % world
        self.is_leader_rank = self.rollout_rank == 0
        self.server_handle = None

    def _server(self):
        if not self.is_leader_rank:
            return None
        if self.server_handle is None:
            self.server_handle = ray.get_actor(f"{SERVER_PREFIX}{self.replica_rank}_0")
        return self.server_handle

    async def resume(self, tags: list[str]):
        server = self._server()
        if server is not None:
            await server.wake_up.remote(tags=tags)

    async def release(self):
        server = self._server()
        if server is not None:
            await server.sleep.remote()

    @torch.no_grad()
    async def update_weights(
        self,
        weights: Generator[tuple[str, torch.Tensor], None, None],
        global_steps: int = None,
        wire_format: str = "named_tensors",
        **kwargs,
    ):
        if wire_format != "named_tensors":
            raise NotImplementedError(f"hf rollout supports only wire_format='named_tensors', got {wire_format!r}")
        if kwargs.get("peft_config") is not None:
            raise NotImplementedError("hf rollout does not support LoRA adapters (set lora merge=True)")
        state_dict = {}
        # every rank must drain the generator (it may run collectives); only the leader ships the tensors
        async for name, tensor in _aiter(weights):
            if hasattr(tensor, "full_tensor"):
                tensor = tensor.full_tensor()
            state_dict[name] = tensor.detach().to("cpu", dtype=torch.float32).clone()
        server = self._server()
        if server is not None:
            await server.update_weights.remote(state_dict, global_steps)

    def generate_sequences(self, prompts):
        raise NotImplementedError("use the async server (HFReplica) for generation")


async def _aiter(items):
    if hasattr(items, "__aiter__"):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


class HFReplica(RolloutReplica):
    """Launches one :class:`HFRolloutServer` actor per replica (hybrid, colocated or standalone)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.server_class = ray.remote(HFRolloutServer)

    def rollout_worker_use_gpu(self) -> bool:
        return False

    async def launch_servers(self):
        if self.is_reward_model:
            name = f"{SERVER_PREFIX}reward_{self.replica_rank}_0{self.name_suffix}"
        elif self.is_teacher_model:
            name = f"{SERVER_PREFIX}teacher_{self.replica_rank}_0{self.name_suffix}"
        else:
            name = f"{SERVER_PREFIX}{self.replica_rank}_0{self.name_suffix}"
        counter = ray.remote(RequestCounter).options(name=COUNTER_NAME, get_if_exists=True, num_cpus=0).remote()
        kind = "reward" if self.is_reward_model else ("teacher" if self.is_teacher_model else "rollout")
        server = self.server_class.options(name=name, num_cpus=0, max_concurrency=self.max_concurrency).remote(
            config=self.config,
            model_config=self.model_config,
            replica_rank=self.replica_rank,
            node_rank=0,
            counter=counter,
            kind=kind,
        )
        self.servers = [server]
        address, _ = await server.get_server_address.remote()
        self._server_handle = server
        self._server_address = address

    async def abort_all_requests(self, reject_request: bool = False):
        return {"aborted_count": 0, "request_ids": []}

    async def resume_generation(self):
        return None
