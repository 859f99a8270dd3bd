"""Evaluation inputs shared by eval and ttsd: parquet rows as Questions (first rows or chosen rows, errors naming the
file and row) and grading one response with the reward function."""

from __future__ import annotations

import pytest

from scgrpo_verl.evaluation import EvalError
from scgrpo_verl.evaluation.data import Question, grade, load_questions, load_reward_fn


@pytest.fixture
def parquet(tmp_path):
    from scgrpo_verl.cpu_backend.assets import write_parquet

    rows = [{"data_source": "toy", "prompt": [{"role": "user", "content": f"q{i}"}], "ability": "toy",
             "reward_model": {"style": "rule", "ground_truth": str(i)}, "extra_info": {"index": 100 + i}}
            for i in range(4)]
    return write_parquet(rows, tmp_path / "q.parquet")


def test_rows_become_questions_by_limit_or_by_index(parquet):
    first = load_questions(parquet, limit=2)
    assert [(q.row, q.index, q.ground_truth, q.key) for q in first] == [(0, 100, "0", "q.parquet:0"),
                                                                          (1, 101, "1", "q.parquet:1")]
    assert first[0].messages == [{"role": "user", "content": "q0"}] and first[0].extra_info == {"index": 100}
    chosen = load_questions(parquet, indices=[3, 1])
    assert [q.row for q in chosen] == [3, 1] and [q.messages[0]["content"] for q in chosen] == ["q3", "q1"]
    assert len(load_questions(parquet)) == 4
    with pytest.raises(EvalError, match=r"q.parquet'?: question index 4 out of range \(the file has 4 rows\)"):
        load_questions(parquet, indices=[0, 4])
    with pytest.raises(EvalError, match="does not exist"):
        load_questions(parquet + ".missing")


def test_a_text_prompt_is_one_user_message_and_a_bad_one_names_the_row(tmp_path):
    from scgrpo_verl.cpu_backend.assets import write_parquet

    base = {"data_source": "toy", "reward_model": {"ground_truth": "1"}, "extra_info": {"index": 0}}
    path = write_parquet([{**base, "prompt": "plain question"}], tmp_path / "text.parquet")
    assert load_questions(path)[0].messages == [{"role": "user", "content": "plain question"}]
    path = write_parquet([{**base, "prompt": ["not", "messages"]}], tmp_path / "bad.parquet")
    with pytest.raises(EvalError, match=r"bad.parquet' row 0: 'prompt' must be a list of chat messages"):
        load_questions(path)


def test_grade_takes_the_rewards_acc_and_falls_back_to_the_threshold():
    question = Question(file="f", row=0, data_source="toy", index=0, messages=[], ground_truth="7",
                        extra_info={"k": 1})
    seen = {}

    def reward(data_source, solution_str, ground_truth, extra_info):
        seen.update(data_source=data_source, solution_str=solution_str, ground_truth=ground_truth,
                    extra_info=extra_info)
        return {"score": 0.5, "acc": True, "feedback": None}

    assert grade(reward, question, "resp") == {"score": 0.5, "acc": True, "feedback": ""}
    assert seen == {"data_source": "toy", "solution_str": "resp", "ground_truth": "7", "extra_info": {"k": 1}}
    assert grade(lambda **kw: {"score": 0.5, "feedback": "f"}, question, "r", 0.5) == {"score": 0.5, "acc": True,
                                                                                      "feedback": "f"}
    assert grade(lambda **kw: 0.4, question, "r", 0.5) == {"score": 0.4, "acc": False, "feedback": ""}


def test_reward_function_is_loaded_from_a_file_or_is_the_plugins(tmp_path):
    from scgrpo_verl.rewards import compute_score

    assert load_reward_fn(None) is compute_score
    path = tmp_path / "r.py"
    path.write_text("def my_score(**kw):\n    return 0.25\n")
    assert load_reward_fn(str(path), "my_score")() == 0.25
    with pytest.raises(EvalError, match="--reward-name 'nope': no such function"):
        load_reward_fn(str(path), "nope")
    with pytest.raises(EvalError, match="--reward-path .* does not exist"):
        load_reward_fn(str(tmp_path / "missing.py"))
