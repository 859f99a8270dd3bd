"""One self-teacher training step as plain functions over per-rollout data (no Ray, no TransferQueue).

The trainer (:mod:`scgrpo_verl.trainer`) reads verl's batch from TransferQueue, calls these functions in order and
writes what they return back; ``scgrpo-verl dry-run`` (:mod:`scgrpo_verl.dry_run`) calls the same functions on a
batch it sampled itself, so a passing dry-run exercises the production staging. Every decision that differs
between methods is the registered method's (:mod:`scgrpo_verl.methods`); the batch keys are
:mod:`scgrpo_verl.batch_keys`'.

The step, in the trainer's order:

1. :func:`context_fields` / :func:`rollouts_from_rows` / :func:`build_contexts` / :func:`stage_teacher_inputs`:
   the teacher context of every rollout, staged next to the batch;
2. :func:`teacher_pass`: which of verl's passes runs the teacher (the worker binds it there);
3. :func:`keep_log_prob_pass`: what a log-prob-pass method keeps of D (SC-GRPO);
4. :func:`adjust_advantages`: the method's change to the estimator's advantages (SC-GRPO's solve-none);
5. :func:`update_options`: the non-tensor options the actor update reads.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from scgrpo_verl.batch_keys import GLOBAL_STEPS_KEY, TEACHER_INPUT_KEY, TEACHER_MASK_KEY
from scgrpo_verl.methods import SelfTeacherMethod
from scgrpo_verl.methods.base import LogProbPassResult
from scgrpo_verl.teacher.engine_forward import jagged

logger = logging.getLogger(__name__)

#: the batch fields every method's contexts read
BASE_CONTEXT_FIELDS = ("uid", "raw_prompt", "input_ids", "responses", "rm_scores")


# -- 1. teacher contexts --------------------------------------------------------------------------------------
def context_fields(method: SelfTeacherMethod, settings) -> list[str]:
    """The batch fields the teacher contexts read: the base ones, ``extra_fields`` for the environment's feedback
    (``teacher.use_feedback``) and the method's own (:meth:`SelfTeacherMethod.context_fields`)."""
    fields = list(BASE_CONTEXT_FIELDS)
    if settings.teacher.use_feedback:
        fields.append("extra_fields")  # the reward function's extra keys are in extra_fields["reward_extra_info"]
    return list(dict.fromkeys([*fields, *method.context_fields(settings)]))


def _rows(values) -> list:
    if torch.is_tensor(values):
        return list(values.unbind())
    return values.tolist() if hasattr(values, "tolist") else list(values)


def rollouts_from_rows(method: SelfTeacherMethod, settings, rows: Mapping[str, Any], keys: Sequence) -> list:
    """One :class:`scgrpo_verl.teacher.contexts.Rollout` per row of the batch.

    ``rows`` maps each of :func:`context_fields` to its per-rollout values (verl's field names: ``uid``,
    ``raw_prompt`` chat messages, ``input_ids`` prompt + response ids, ``responses`` ids, ``rm_scores`` token
    rewards, ...); ``keys`` are verl's TransferQueue keys ``{uid}_{session}_{output}`` (they order the draws)."""
    from scgrpo_verl.teacher.contexts import Rollout

    responses = [row.tolist() if torch.is_tensor(row) else list(row) for row in _rows(rows["responses"])]
    scores = [float(row.sum()) if torch.is_tensor(row) else float(np.sum(row)) for row in _rows(rows["rm_scores"])]
    uids = [str(uid) if not torch.is_tensor(uid) else uid.item() for uid in _rows(rows["uid"])]
    input_ids = [torch.as_tensor(row) for row in _rows(rows["input_ids"])]
    n = len(responses)
    feedback = reward_feedback(_rows(rows["extra_fields"])) if settings.teacher.use_feedback else [""] * n
    own = {name: _rows(rows[name]) for name in method.context_fields(settings)}
    per_row = [{name: column[i] for name, column in own.items()} for i in range(n)]
    privileged = [method.privileged_text(settings, row) for row in per_row]
    groups, indices = canonical_keys(uids, input_ids, responses, keys)
    return [
        Rollout(uid=group, prompt=list(messages), response_ids=ids, response_text=None, score=score,
                feedback=str(fb or ""), privileged=priv, index=index)
        for group, messages, ids, score, fb, priv, index in zip(
            groups, _rows(rows["raw_prompt"]), responses, scores, feedback, privileged, indices)
    ]


def build_contexts(method: SelfTeacherMethod, settings, rollouts: Sequence, tokenizer,
                   generator: Optional[torch.Generator], chat_template_kwargs: Optional[dict] = None):
    """The teacher context of every rollout (:func:`scgrpo_verl.teacher.contexts.build_teacher_contexts` with the
    method's plan)."""
    from scgrpo_verl.teacher.contexts import build_teacher_contexts

    return build_teacher_contexts(rollouts, tokenizer, method, settings, generator=generator,
                                  chat_template_kwargs=chat_template_kwargs)


def stage_teacher_inputs(method: SelfTeacherMethod, contexts, responses, student_input_ids) -> dict:
    """The fields staged next to the batch: ``teacher_input_ids`` (nested (B, j)), ``self_teacher_mask`` (B,) and
    the method's own (:meth:`SelfTeacherMethod.stage_fields`)."""
    return {
        TEACHER_INPUT_KEY: teacher_input_tensor(contexts.teacher_prompt_ids, responses, student_input_ids),
        TEACHER_MASK_KEY: contexts.mask.float(),
        **method.stage_fields(contexts),
    }


# -- 2. which pass runs the teacher ---------------------------------------------------------------------------
def teacher_pass(method: SelfTeacherMethod, settings) -> Optional[str]:
    """``"log_prob"`` (verl's old-log-prob pass), ``"update"`` (the actor update) or ``None``."""
    return method.teacher_pass(settings) if settings.enable else None


# -- 3.-5. after the passes ------------------------------------------------------------------------------------
def keep_log_prob_pass(method: SelfTeacherMethod, settings, divergence: Sequence[torch.Tensor], contexts,
                       metrics: dict) -> LogProbPassResult:
    """What the method keeps of the log-prob pass's D (one (r_i,) tensor per rollout, over its response)."""
    return method.after_log_prob_pass(settings, list(divergence), contexts, metrics)


def adjust_advantages(method: SelfTeacherMethod, settings, advantages: torch.Tensor, response_mask: torch.Tensor,
                      uids, fields: dict, metrics: dict) -> Optional[torch.Tensor]:
    """The method's (B, T) advantages replacing the estimator's, or ``None`` to keep them."""
    return method.adjust_advantages(settings, advantages, response_mask, uids, fields, metrics)


def update_options(method: SelfTeacherMethod, settings, global_steps: int, state: Optional[dict]) -> dict:
    """Non-tensor options of the actor update: the step k (SDPG's beta(k)) and the method's."""
    return {GLOBAL_STEPS_KEY: global_steps, **method.update_options(settings, dict(state or {}))}


# -- helpers of step 1 ---------------------------------------------------------------------------------------
def canonical_keys(uids, input_ids, responses, keys) -> tuple[list, list]:
    """Group keys and rollout indices for the teacher draws that no batch order, world size or run changes.

    verl's uids are random per run, and the session a sample gets depends on request arrival: the draws follow
    the content instead. Groups sort by (digest of the prompt ids, uid) and rollouts within a group by (response
    ids, verl's session / output index); the uid and the session only break ties between identical prompts or
    identical responses, whose teachers are the same texts whichever way the tie goes.
    """
    sessions = rollout_indices(keys)
    groups, indices = [], []
    for uid, ids, response, session in zip(uids, input_ids, responses, sessions):
        prompt = ids[: len(ids) - len(response)].to(torch.int64).numpy().tobytes()
        groups.append((hashlib.sha1(prompt).hexdigest(), str(uid)))
        indices.append((tuple(response), session if session is not None else ()))
    return groups, indices


def rollout_indices(keys) -> list:
    """Each sample's index within its group, from verl's TransferQueue key ``{uid}_{session_id}_{output}``.

    The draws of teacher contexts follow (uid, index), so they do not depend on the batch order, which verl
    changes with the number of ranks. Keys of another form give ``None`` for all (batch order)."""
    indices = []
    for key in keys:
        parts = str(key).rsplit("_", 2)
        if len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit()):
            logger.warning("TransferQueue key %r is not {uid}_{session}_{output}: teacher draws follow batch order", key)
            return [None] * len(keys)
        indices.append((int(parts[1]), int(parts[2])))
    return indices


def chat_template_kwargs(config) -> dict:
    """verl's ``data.apply_chat_template_kwargs``: the teacher prompt is rendered as the student's."""
    from omegaconf import OmegaConf

    value = config.get("data", {}).get("apply_chat_template_kwargs", None)
    return dict(OmegaConf.to_container(value, resolve=True)) if value else {}


def teacher_input_tensor(teacher_prompt_ids, responses, student_input_ids) -> torch.Tensor:
    """``teacher_input_ids`` nested (B, j): teacher prompt ids + the rollout's own response ids (taken from
    ``responses`` as they are, never via Python lists); a row without a teacher (prompt ``None``) keeps its student
    ids as a placeholder, which costs no teacher forward."""
    response_rows, student_rows = _rows(responses), _rows(student_input_ids)
    if len(teacher_prompt_ids) != len(response_rows):
        raise ValueError(f"{len(teacher_prompt_ids)} teacher prompts for {len(response_rows)} responses")
    rows = []
    for prompt, response, student in zip(teacher_prompt_ids, response_rows, student_rows):
        response, student = torch.as_tensor(response), torch.as_tensor(student)
        if prompt is None:
            rows.append(student)
        else:
            head = torch.from_numpy(np.asarray(prompt, dtype=np.int64)).to(response.dtype)
            rows.append(torch.cat([head, response.to(head.device)]))
    return jagged(rows)


def reward_feedback(extra_fields: list) -> list[str]:
    """The ``feedback`` string the reward function returned for each rollout ("" when it returned none).

    verl's agent loop keeps a reward function's extra keys (everything but ``score``) per sample in the
    ``extra_fields`` TransferQueue field, under ``reward_extra_info``.
    """
    out = []
    for fields in extra_fields:
        info = (fields or {}).get("reward_extra_info") or {}
        value = info.get("feedback", "")
        out.append("" if value is None else str(value))
    return out
