"""The self-teacher's head under FSDP2, as the workers run it (one gloo rank on the CPU, verl's own ``apply_fsdp2``:
decoder layers, embeddings and the untied lm_head each sharded on their own, ``reshard_after_forward``): the
update's loss and every parameter gradient equal the plain model's. The student's lm_head runs twice per step
(verl's logits, then the divergence's projection through ``through_module``), so this checks that FSDP2 gathers
the head for the second call and reduces both calls' gradients."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import copy, functools, os, sys
    import torch
    import torch.distributed as dist
    sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
    from conftest import HIDDEN, VOCAB, make_micro_batch, nested
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from torch.distributed.device_mesh import init_device_mesh
    from verl.utils.fsdp_utils import apply_fsdp2
    from verl.utils.config import omega_conf_to_dataclass
    from scgrpo_verl.compose import compose_config
    from scgrpo_verl.engine_path import StandInEngine, stand_in_teacher
    from scgrpo_verl.losses import self_teacher_loss

    dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=False, attn_implementation="sdpa")
    plain = Qwen2ForCausalLM(config).float()
    sharded = copy.deepcopy(plain)
    apply_fsdp2(sharded, {"mesh": init_device_mesh("cpu", (1,)), "reshard_after_forward": True}, {})
    g = torch.Generator().manual_seed(1)
    prompts, responses = [3, 2, 4], [4, 5, 3]
    td = make_micro_batch(prompts, responses, extra={
        "teacher_input_ids": nested(torch.randint(VOCAB, (p + 2 + r,), generator=g) for p, r in zip(prompts, responses)),
        "self_teacher_mask": torch.tensor([1.0, 0.0, 1.0]),
        "ref_log_prob": nested(-torch.rand(r, generator=g) for r in responses),
        "advantages": nested(torch.full((r,), 0.7) for r in responses),
    }, non_tensor={"global_steps": 60})
    for name, overrides in (("sdpg", ["self_teacher.sdpg.beta_base=0.5"]),
                            ("sdpo", ["self_teacher.sdpo.distillation=topk", "self_teacher.sdpo.topk=5"])):
        actor = omega_conf_to_dataclass(compose_config(name, overrides).actor_rollout_ref.actor)
        results = []
        for model in (plain, sharded):
            model.zero_grad(set_to_none=True)
            loss_fn = functools.partial(self_teacher_loss, config=actor)
            (loss, metrics), _ = StandInEngine(model).teacher_forward_step(td, loss_fn, stand_in_teacher(model))
            loss.backward()
            grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
                     for n, p in model.named_parameters()}
            results.append((loss.detach(), grads))
        (loss_a, grads_a), (loss_b, grads_b) = results
        torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-7)
        assert grads_a.keys() == grads_b.keys()
        for key in grads_a:
            torch.testing.assert_close(grads_b[key], grads_a[key], rtol=1e-4, atol=1e-6, msg=key)
        assert grads_a["lm_head.weight"].abs().sum() > 0
        print(name, "ok", float(loss_a))
    dist.destroy_process_group()
''')


@pytest.mark.slow  # a process with its own gloo group (~30 s quiet, minutes under load)
def test_self_teacher_gradients_under_fsdp2_equal_the_plain_model(tmp_path):
    script = tmp_path / "fsdp2_head.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "rendezvous")], capture_output=True, text=True,
                         timeout=300, env=env, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "sdpg ok" in out.stdout and "sdpo ok" in out.stdout
