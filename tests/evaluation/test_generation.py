"""Sampling one prompt from a model in memory (ttsd): seeded, each response cut right after its first stop token."""

from __future__ import annotations

import pytest
import torch

from scgrpo_verl.evaluation.generation import sample_token_ids


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from scgrpo_verl.cpu_backend.assets import build_model, build_tokenizer

    folder = tmp_path_factory.mktemp("gen")
    tokenizer = build_tokenizer(folder)
    end, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")
    # the output layer favours the end token, so that most samples stop before max_new_tokens
    model = build_model(folder, vocab_size=len(tokenizer), eos_token_id=end, pad_token_id=pad, seed=0,
                        logit_bias={end: 4.0}).eval()
    return model, tokenizer, {end, pad}


def test_samples_are_seeded_and_cut_after_the_first_stop_token(tiny):
    model, tokenizer, stops = tiny
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)["input_ids"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        kwargs = dict(temperature=1.0, top_p=1.0, max_new_tokens=6)
        first = sample_token_ids(model, tokenizer, prompt, 8, seed=3, **kwargs)
        assert first == sample_token_ids(model, tokenizer, prompt, 8, seed=3, **kwargs)
        other = sample_token_ids(model, tokenizer, prompt, 8, seed=4, **kwargs)
    finally:
        torch.set_num_threads(threads)
    assert first != other
    assert len(first) == 8
    ended = [r for r in first if r[-1] in stops]
    assert ended and len(ended) < 8, "the samples must both stop early and run to max_new_tokens to test the cut"
    for response in first:
        assert not stops & set(response[:-1])  # nothing after a stop token
        assert 1 <= len(response) <= 6
        assert response[-1] in stops or len(response) == 6
