"""verl's ``model.use_fused_kernels=True`` (its torch backend: log-probs from hidden states, no (T, V) logits) against
``False``, through verl's own engine forward step and patched model forward, for every method: the self-teacher
reads hidden states on both sides, so its losses, gradients and metrics agree to float noise (1e-5, fp32).

The whole CPU-backend run (``scgrpo-verl cpu-run ... actor_rollout_ref.model.use_fused_kernels=True``) cannot show
this with the backend's tiny model: verl 0.9.1's own fused forward fails there for GRPO too (``aten.mm got mixed
torch.Tensor and DTensor``: FSDP2 wraps an untied lm_head on its own and the fused forward reads its sharded weight
outside its forward). The plugin's head runs as that module's forward, which FSDP2 handles."""

import copy
import functools

import pytest
import torch

from conftest import HIDDEN, VOCAB, make_micro_batch, nested
from scgrpo_verl.algos.sc_grpo import ROUTE_WEIGHTED
from scgrpo_verl.engine_path import StandInEngine, stand_in_teacher
from scgrpo_verl.batch_keys import DIVERGENCE_KEY
from scgrpo_verl.losses import self_teacher_log_prob_pass, self_teacher_loss

PROMPTS, RESPONSES = [3, 2, 4, 3], [4, 6, 3, 5]


@pytest.fixture(scope="module")
def models():
    """(plain model, the same weights with verl's fused-kernel forward patched into a subclass of its own)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from verl.models.transformers.monkey_patch import apply_monkey_patch

    class FusedQwen2(Qwen2ForCausalLM):  # verl patches the class: keep the patch off the plain one
        pass

    torch.manual_seed(3)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=False, attn_implementation="sdpa")
    plain = Qwen2ForCausalLM(config).float().eval()
    fused = FusedQwen2(config).float().eval()
    fused.load_state_dict(plain.state_dict())
    apply_monkey_patch(model=fused, use_remove_padding=True, use_fused_kernels=True, fused_kernels_backend="torch")
    assert FusedQwen2.forward is not Qwen2ForCausalLM.forward
    return plain, fused


def actor_config(name, *overrides):
    from verl.utils.config import omega_conf_to_dataclass

    from scgrpo_verl.compose import compose_config

    return omega_conf_to_dataclass(compose_config(name, list(overrides)).actor_rollout_ref.actor)


def micro_batch(fused: bool, packed: bool):
    g = torch.Generator().manual_seed(5)
    extra = {
        "teacher_input_ids": nested(torch.randint(VOCAB, (p + 3 + r,), generator=g) for p, r in zip(PROMPTS, RESPONSES)),
        "self_teacher_mask": torch.tensor([1.0, 0.0, 1.0, 1.0]),
        "ref_log_prob": nested(-torch.rand(r, generator=g) for r in RESPONSES),
        "sc_divergence": nested(torch.rand(r, generator=g) for r in RESPONSES),
        "sc_route": torch.full((4,), ROUTE_WEIGHTED),
    }
    td = make_micro_batch(PROMPTS, RESPONSES, extra=extra, non_tensor={"global_steps": 60})
    # teacher_input_ids = teacher prompt + the same response
    rows = [torch.cat([t[: len(t) - r], resp]) for t, r, resp in
            zip(td["teacher_input_ids"].unbind(), RESPONSES, td["responses"].unbind())]
    td["teacher_input_ids"] = nested(rows)
    from verl.utils import tensordict_utils as tu

    tu.assign_non_tensor(td, use_fused_kernels=fused, use_remove_padding=packed, temperature=0.8)
    return td


def run(model, name, overrides, fused, packed):
    config = actor_config(name, *overrides)
    td = micro_batch(fused, packed)
    engine = StandInEngine(model)
    model.zero_grad(set_to_none=True)
    if name == "sc_grpo":  # the log-prob pass's D
        loss_fn = functools.partial(self_teacher_log_prob_pass, config=config)
        with torch.no_grad():
            (_, _), output = engine.teacher_forward_step(td, loss_fn, stand_in_teacher(model))
        return output[DIVERGENCE_KEY].values(), {}, []
    loss_fn = functools.partial(self_teacher_loss, config=config)
    (loss, metrics), _ = engine.teacher_forward_step(td, loss_fn, stand_in_teacher(model))
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    scalars = {k: float(v.values[0]) if hasattr(v, "values") else float(v) for k, v in metrics.items()
               if k.startswith(("self_teacher/", "actor/pg_loss", "kl_loss"))}
    return loss.detach(), scalars, grads


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("name,overrides", [
    ("sc_grpo", ()),
    ("sdpo", ("self_teacher.sdpo.distillation=full", "self_teacher.sdpo.alpha=0.5")),
    ("sdpo", ("self_teacher.sdpo.distillation=topk", "self_teacher.sdpo.topk=5")),
    ("sdpo", ("self_teacher.sdpo.distillation=sampled_token", "self_teacher.sdpo.alpha=1.0")),
    ("sdpg", ("self_teacher.sdpg.beta_base=0.5",)),
])
def test_fused_kernels_on_equals_off(models, name, overrides, packed):
    plain, fused = models
    value_off, metrics_off, grads_off = run(plain, name, overrides, False, packed)
    value_on, metrics_on, grads_on = run(fused, name, overrides, True, packed)
    torch.testing.assert_close(value_on, value_off, rtol=1e-5, atol=1e-6)
    assert metrics_on.keys() == metrics_off.keys()
    for key in metrics_off:
        assert metrics_on[key] == pytest.approx(metrics_off[key], rel=1e-5, abs=1e-6), key
    assert len(grads_on) == len(grads_off)
    for a, b in zip(grads_on, grads_off):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if name != "sc_grpo":
        assert any(k.startswith("self_teacher/") for k in metrics_off)
    else:
        assert value_off.abs().sum() > 0  # D was computed, not left at 0
