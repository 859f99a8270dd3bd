"""One builder of chat prompt ids (teacher/templates.py) for the teacher contexts, eval and ttsd: the ids verl's
student prompt has, with the thinking switch, whatever the tokenizer's apply_chat_template returns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizer_utils import build_byte_level_tokenizer

from scgrpo_verl.teacher.templates import chat_prompt_ids, chat_template_kwargs

THINKING_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% if enable_thinking is defined and not enable_thinking %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    tok = build_byte_level_tokenizer(tmp_path_factory.mktemp("chat_ids"))
    tok.chat_template = THINKING_TEMPLATE
    return tok


@pytest.mark.parametrize("kwargs", [{}, {"enable_thinking": False}, {"enable_thinking": True}])
def test_ids_are_the_rendered_text_tokenised_without_added_specials(tokenizer, kwargs):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3? ünïcode"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)
    assert text.endswith("<think>\n\n</think>\n\n") == (kwargs.get("enable_thinking") is False)
    expected = tokenizer(text, add_special_tokens=False)["input_ids"]  # how eval built them (render, then tokenise)
    ids = chat_prompt_ids(tokenizer, messages, kwargs)
    assert ids == expected and all(type(i) is int for i in ids)
    assert tokenizer.decode(ids) == text


def test_every_shape_apply_chat_template_returns_becomes_a_flat_list():
    class Fake:
        def __init__(self, out):
            self.out = out

        def apply_chat_template(self, messages, **kwargs):
            assert kwargs["add_generation_prompt"] and kwargs["tokenize"]
            return self.out

    for out in ([1, 2], [[1, 2]], {"input_ids": [1, 2]}, {"input_ids": [[1, 2]]}, torch.tensor([[1, 2]]),
                torch.tensor([1, 2]), np.array([[1, 2]]), [torch.tensor([1, 2])], [np.int64(1), np.int64(2)]):
        assert chat_prompt_ids(Fake(out), []) == [1, 2], out
    with pytest.raises(ValueError, match="returned 2 sequences"):
        chat_prompt_ids(Fake([[1], [2]]), [])


def test_thinking_switch_is_merged_into_the_template_kwargs():
    assert chat_template_kwargs() == {}
    assert chat_template_kwargs({"a": 1}) == {"a": 1}
    assert chat_template_kwargs({"enable_thinking": True, "a": 1}, False) == {"enable_thinking": False, "a": 1}
    base = {"a": 1}
    assert chat_template_kwargs(base, True) == {"a": 1, "enable_thinking": True} and base == {"a": 1}
