"""The batch contract between the trainer step, the workers and the actor loss: every key the plugin adds to
verl's batch (TransferQueue fields, micro-batch entries and non-tensor update options), in one place.
Tensor fields have one row per rollout.
"""

# -- staged by the trainer step next to verl's batch ----------------------------------------------------------
#: nested (B, j): teacher prompt ids + the rollout's own response ids (the student ids where it has no teacher)
TEACHER_INPUT_KEY = "teacher_input_ids"
#: (B,): 1.0 where the rollout has a teacher, else 0.0
TEACHER_MASK_KEY = "self_teacher_mask"
#: SC-GRPO (B,): ROUTE_* code of the rollout's group (scgrpo_verl.algos.sc_grpo)
SC_ROUTE_KEY = "sc_route"
#: SC-GRPO (B,): 1 for the drawn reference rollout of a solve-none group
SC_REFERENCE_KEY = "sc_reference"
#: SC-GRPO nested (B, r): D = KL(q || p) per response token, 0 on rows without a teacher
SC_DIVERGENCE_KEY = "sc_divergence"

# -- returned by the workers ---------------------------------------------------------------------------------
#: nested (B, j) over the input tokens, like verl's log-probs: D from the log-prob pass that ran the teacher
DIVERGENCE_KEY = "self_teacher_divergence"

# -- non-tensor options ---------------------------------------------------------------------------------------
#: set on verl's old-log-prob pass when it also runs the method's teacher (SelfTeacherWorker.compute_log_prob)
PASS_OPTION = "self_teacher_pass"
#: verl's training step k (SDPG's beta(k)); verl puts it in the batch, the trainer step into the update options
GLOBAL_STEPS_KEY = "global_steps"
#: SC-GRPO threshold_scope=batch: the one c of the whole batch
SC_THRESHOLD_KEY = "sc_threshold"
#: SDPO normalize=teacher_tokens: global counts of the tokens / rows with a teacher (summed over ranks)
TEACHER_TOKENS_KEY = "self_teacher_num_tokens"
TEACHER_ROWS_KEY = "self_teacher_num_rows"
