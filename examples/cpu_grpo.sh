#!/usr/bin/env bash
# Real verl main_ppo GRPO run on the CPU debugging backend (tiny random Qwen2, local tokenizer, 16 math prompts):
# 2 steps in ~70 s, ~4.5 GB RAM, no GPU, no downloads. Extra args are hydra overrides, e.g. trainer.total_training_steps=3.
# Hard timeout inside (kills only this run's processes); log and checkpoints under --workdir (default: a new temp dir).
exec python -m scgrpo_verl.cpu_backend.run --config-name grpo --steps 2 --timeout 600 "$@"
