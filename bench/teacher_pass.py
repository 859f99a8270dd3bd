"""Teacher-pass cost per method: time ratio next to token ratio, today's engine path vs the landed per-rollout pass.

Usage: python bench/teacher_pass.py [--rollouts 16] [--prompt 96] [--context 160] [--response 192]
                                    [--teacher-frac 0.75] [--repeats 3] [--layers 6] [--hidden 512] [--vocab 32768]

On a random Qwen2 (default 6 layers, hidden 512, vocab 32768: ~51M parameters) and one micro-batch of
rollouts, it times side by side in one run:
- the student log-prob pass: verl's log-prob pass on the micro-batch (``engine_path.log_prob_pass``);
- per method, the teacher's extra work in the pass where the plugin runs it (``after``):
  SC-GRPO: verl's log-prob pass with the teacher forward before the student's (D = KL(q || p) from both sides'
  hidden states), minus the plain pass;
  SDPO (top-k 100, JSD 0.5) and SDPG (full-vocabulary reverse KL): the actor update's forward step with the teacher
  (teacher forward of the rows that have a teacher + the fused divergence with its gradient formed), minus the
  same forward step without it;
- the landed implementation (``before``, commit 7087683's ``teacher/passes.py``, loaded from git at run time):
  one HF forward per rollout for the teacher AND the student, and for SDPG its in-update per-rollout forward.
Token ratio = tokens the teacher forwards (teacher prompt + response of the rows that have a teacher) / tokens
of the student pass. Goal (issue 7): teacher time / student time <= 1.1 x token ratio, for every method.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from types import SimpleNamespace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANDED = "7087683"


CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}


def best_time(fn, repeats: int, clock: str = "cpu") -> float:
    """Best of ``repeats`` timed calls after one untimed warm-up call (CPU seconds of this process by default:
    robust to a loaded machine)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = CLOCK[clock]()
        fn()
        best = min(best, CLOCK[clock]() - start)
    return best


def landed_passes():
    """commit 7087683's teacher/passes.py and algos/divergence.py as modules (None outside a git checkout)."""
    try:
        tmp = tempfile.mkdtemp()
        modules = {}
        for name, path in (("divergence", "scgrpo_verl/algos/divergence.py"), ("passes", "scgrpo_verl/teacher/passes.py")):
            source = subprocess.run(["git", "-C", ROOT, "show", f"{LANDED}:{path}"], check=True, capture_output=True,
                                    text=True).stdout
            source = source.replace("from scgrpo_verl.algos.divergence import", "from landed_divergence import")
            file = os.path.join(tmp, f"landed_{name}.py")
            with open(file, "w") as handle:
                handle.write(source)
        sys.path.insert(0, tmp)
        for name in ("divergence", "passes"):
            spec = importlib.util.spec_from_file_location(f"landed_{name}", os.path.join(tmp, f"landed_{name}.py"))
            module = importlib.util.module_from_spec(spec)
            sys.modules[f"landed_{name}"] = module
            spec.loader.exec_module(module)
            modules[name] = module
        return modules
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=96, help="student prompt tokens")
    parser.add_argument("--context", type=int, default=160, help="extra teacher-prompt tokens (demonstration)")
    parser.add_argument("--response", type=int, default=192, help="mean response tokens")
    parser.add_argument("--teacher-frac", type=float, default=0.75, help="fraction of rollouts with a teacher")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--no-before", action="store_true", help="skip the landed implementation")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: robust to a loaded machine)")
    parser.add_argument("--clock", choices=tuple(CLOCK), default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    timed = partial(best_time, repeats=args.repeats, clock=args.clock)

    from transformers import Qwen2Config, Qwen2ForCausalLM

    from scgrpo_verl.batch_keys import TEACHER_INPUT_KEY, TEACHER_MASK_KEY
    from scgrpo_verl.engine_path import StandInEngine, build_micro_batch, log_prob_pass, stand_in_teacher
    from scgrpo_verl.losses import self_teacher_log_prob_pass
    from scgrpo_verl.settings import SDPOConfig, SelfTeacherConfig

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4,
                         max_position_embeddings=4096, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config).float().eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    g = torch.Generator().manual_seed(1)
    lengths = [max(8, int(args.response * (0.5 + i / max(args.rollouts - 1, 1)))) for i in range(args.rollouts)]
    responses = [torch.randint(args.vocab, (n,), generator=g).tolist() for n in lengths]
    prompts = [torch.randint(args.vocab, (args.prompt,), generator=g).tolist() for _ in lengths]
    teacher_prompts = [p + torch.randint(args.vocab, (args.context,), generator=g).tolist() for p in prompts]
    has_teacher = [i < round(args.teacher_frac * args.rollouts) for i in range(args.rollouts)]
    student_tokens = sum(len(p) + len(r) for p, r in zip(prompts, responses))
    teacher_tokens = sum(len(t) + len(r) for t, r, m in zip(teacher_prompts, responses, has_teacher) if m)
    token_ratio = teacher_tokens / student_tokens

    def micro_batch():
        return build_micro_batch(prompts, responses, fields={
            TEACHER_INPUT_KEY: [torch.tensor(t + r) for t, r in zip(teacher_prompts, responses)],
            TEACHER_MASK_KEY: torch.tensor(has_teacher, dtype=torch.float32)})

    student = timed(lambda: log_prob_pass(model, micro_batch()))
    teacher_fn = stand_in_teacher(model)

    def loss_config(mode, **sdpo):
        return SimpleNamespace(policy_loss=SimpleNamespace(loss_mode=mode, self_teacher=SelfTeacherConfig(
            sdpo=SDPOConfig(**sdpo) if sdpo else SDPOConfig())))

    def sc_grpo_pass():
        log_prob_pass(model, micro_batch(), partial(self_teacher_log_prob_pass, config=loss_config("sc_grpo")),
                      teacher_fn)

    def update_term(kind, alpha=None, topk=None):
        """The update's self-teacher work on top of verl's student forward: the teacher forward and the divergence
        with its gradient formed (what the actor update adds; the student forward is subtracted)."""
        def loss(model_output=None, data=None, dp_group=None, self_teacher=None):
            weights = torch.ones(len(responses), max(lengths))
            return self_teacher.divergence(weights, kind, alpha, topk=topk)[0], {}

        def run():
            with torch.enable_grad():
                StandInEngine(model).teacher_forward_step(micro_batch(), loss, teacher_fn)
        return run

    student_with_grad = timed(lambda: StandInEngine(model).forward_step(
        micro_batch(), lambda **kw: (torch.zeros(()), {})))
    after = {
        "sc_grpo": max(timed(sc_grpo_pass) - student, 0.0),
        "sdpo": max(timed(update_term("jsd", 0.5, topk=100)) - student_with_grad, 0.0),
        "sdpg": max(timed(update_term("reverse_kl")) - student_with_grad, 0.0),
    }
    before = {}
    landed = None if args.no_before else landed_passes()
    if landed is not None:
        passes = landed["passes"]
        student_seqs = [p + r for p, r in zip(prompts, responses)]
        teacher_seqs = [(t if m else p) + r for t, p, r, m in zip(teacher_prompts, prompts, responses, has_teacher)]
        before["sc_grpo"] = timed(lambda: passes.teacher_pass(model, student_seqs, teacher_seqs, lengths,
                                                                  divergence_kind="forward_kl"))
        before["sdpo"] = timed(lambda: passes.teacher_pass(model, student_seqs, teacher_seqs, lengths,
                                                               divergence_kind=None, topk=100))

        def landed_sdpg():
            passes.teacher_pass(model, student_seqs, teacher_seqs, lengths, divergence_kind=None)
            passes.teacher_response_logits(model, teacher_seqs, lengths)

        before["sdpg"] = timed(landed_sdpg)

    print(f"model: {params:.0f}M parameters; {args.rollouts} rollouts, student pass {student_tokens} tokens in "
          f"{student:.3f} s; teacher tokens {teacher_tokens} (token ratio {token_ratio:.2f})")
    print(f"{'method':>8} | {'after: time ratio':>17} {'/ token ratio':>13} | {'before: time ratio':>18} "
          f"{'/ token ratio':>13} | goal <= 1.1")
    met = True
    for method, seconds in after.items():
        ratio = seconds / student
        ok = ratio / token_ratio <= 1.1
        met &= ok
        old = before.get(method)
        old_text = f"{old / student:18.2f} {old / student / token_ratio:13.2f}" if old is not None else f"{'-':>18} {'-':>13}"
        print(f"{method:>8} | {ratio:17.2f} {ratio / token_ratio:13.2f} | {old_text} | {'met' if ok else 'NOT met'}")
    print("goal (teacher time <= 1.1 x token ratio x student time, every method):", "met" if met else "NOT met")


if __name__ == "__main__":
    main()
