"""The ``functions`` environment: TRL-style reward and feedback functions (issue 23), and RewardModel."""

from __future__ import annotations

import itertools
import json
import pickle
import sys
import textwrap

import pytest

import resd.envs
from resd.config import ConfigError, load_config
from resd.envs import DataError
from resd.envs.functions import FunctionsEnv, RewardFunctionError, RewardModel

_counter = itertools.count()

REWARDS = '''
import asyncio

CALLS = []


def accuracy(prompts, completions, solution, **kwargs):
    CALLS.append(dict(kwargs, prompts=prompts, completions=completions, solution=solution))
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    kwargs["log_extra"]("seen", [len(t) for t in texts])
    kwargs["log_metric"]("batch", float(len(texts)))
    return [1.0 if t.strip() == s else 0.0 for t, s in zip(texts, solution)]


def short(completions, **kwargs):
    return [None if len(c if isinstance(c, str) else c[0]["content"]) > 5 else 0.5 for c in completions]


def never(completions, **kwargs):
    return [None] * len(completions)


def explain(completions, solution, rewards, **kwargs):
    return [None if r >= 1 else f"expected {s}" for r, s in zip(rewards, solution)]


def also(completions, **kwargs):
    return ["check your work"] * len(completions)


def wrong_length(completions, **kwargs):
    return [1.0]


def broken(completions, **kwargs):
    raise ZeroDivisionError("oops")


def needs_ids(completions, completion_ids, **kwargs):
    return [0.0] * len(completions)


def needs_level(completions, level, **kwargs):
    return [0.0] * len(completions)


async def later(completions, **kwargs):
    await asyncio.sleep(0)
    return [0.25] * len(completions)


NOT_CALLABLE = 3
'''


@pytest.fixture()
def mod(tmp_path, monkeypatch):
    name = f"user_rewards_{next(_counter)}"
    (tmp_path / f"{name}.py").write_text(REWARDS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


ROWS = [
    {"prompt": "Say 5.", "solution": "5", "level": 1},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say 8."}], "solution": "8",
     "level": 2},
]


def test_trl_calling_convention(mod):
    env = resd.envs.load("functions", reward_funcs=[f"{mod}:accuracy"])
    fbs = env.score_batch(["5", "7"], ROWS)
    call = sys.modules[mod].CALLS[-1]
    assert call["prompts"] == [ROWS[0]["prompt"], ROWS[1]["prompt"]]
    # a string prompt gets a string completion, a conversational one a list of messages (as TRL)
    assert call["completions"] == ["5", [{"role": "assistant", "content": "7"}]]
    assert call["solution"] == ["5", "8"] and call["level"] == [1, 2]  # extra columns, one value per completion
    assert "prompt" not in call and "completion_ids" not in call and "trainer_state" not in call
    assert [(f.score, f.acc, f.feedback) for f in fbs] == [(1.0, 1.0, ""), (0.0, 0.0, "")]
    assert fbs[0].details["rewards"] == {"accuracy": 1.0} and fbs[0].details["seen"] == 1
    assert fbs[1].details["batch"] == 2.0
    assert env.prompt_messages(ROWS[0]) == [{"role": "user", "content": "Say 5."}]
    assert env.prompt_messages(ROWS[1]) == ROWS[1]["prompt"]
    assert env.score("5", ROWS[0]).score == 1.0


def test_weights_none_acc_and_feedback(mod):
    env = resd.envs.load("functions", reward_funcs=[f"{mod}:accuracy", f"{mod}:short", f"{mod}:later"],
                         reward_weights=[2.0, 1.0, 2.0], feedback_funcs=[f"{mod}:explain", f"{mod}:also"],
                         acc_func=f"{mod}:accuracy")
    a, b = env.score_batch(["5", "not eight"], ROWS)
    # a: 2*1 + 1*0.5 + 2*0.25; b: 2*0 + (None: left out) + 2*0.25
    assert (a.score, b.score) == (3.0, 0.5)
    assert (a.acc, b.acc) == (1.0, 0.0)  # acc_func named among reward_funcs: its value, not called again
    assert len(sys.modules[mod].CALLS) == 1
    assert a.feedback == "check your work" and b.feedback == "expected 8\n\ncheck your work"
    assert b.details["rewards"] == {"accuracy": 0.0, "short": None, "later": 0.25}
    default = resd.envs.load("functions", reward_funcs=[f"{mod}:accuracy", f"{mod}:short"], reward_weights=[2, 1])
    assert [f.acc for f in default.score_batch(["5", "7"], ROWS)] == [1.0, 0.5]  # the score clipped to [0, 1]
    nothing = resd.envs.load("functions", reward_funcs=[f"{mod}:never"])
    (fb,) = nothing.score_batch(["x"], ROWS[:1])
    assert (fb.score, fb.details["unscorable"]) == (0.0, True)


def test_function_errors_name_the_function(mod):
    with pytest.raises(RewardFunctionError, match=r"'wrong_length' returned 1 values for 2 completions"):
        resd.envs.load("functions", reward_funcs=[f"{mod}:wrong_length"]).score_batch(["a", "b"], ROWS)
    with pytest.raises(RewardFunctionError, match=r"reward function 'broken' raised ZeroDivisionError: oops"):
        resd.envs.load("functions", reward_funcs=[f"{mod}:broken"]).score_batch(["a"], ROWS[:1])


def test_missing_columns_fail_at_load_time(mod, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "p", "solution": "1", "level": 0}) + "\n"
                    + json.dumps({"prompt": "q", "solution": "2"}) + "\n", encoding="utf-8")
    env = resd.envs.load("functions", reward_funcs=[f"{mod}:needs_level"])
    with pytest.raises(DataError, match=rf"{path}: row 2: reward function {mod}:needs_level needs column 'level', "
                                        r"which the row lacks \(columns: \['prompt', 'solution'\]"):
        env.load_split("train", str(path))
    mapped = resd.envs.load("functions", reward_funcs=[f"{mod}:needs_level"], columns={"level": "solution"})
    assert len(mapped.load_split("train", str(path))) == 2
    with pytest.raises(DataError, match=r"requires the argument 'completion_ids', which TRL passes but resd does not"):
        resd.envs.load("functions", reward_funcs=[f"{mod}:needs_ids"]).load_split("train", str(path))
    path.write_text(json.dumps({"question": "p"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}: row 1: missing column 'prompt'"):
        resd.envs.load("functions", reward_funcs=[f"{mod}:short"]).load_split("train", str(path))
    with pytest.raises(DataError, match=r"ships no data for split 'train'; pass a path \(data.train_path"):
        resd.envs.load("functions", reward_funcs=[f"{mod}:short"]).load_split("train")


def test_config_validation(mod):
    base = ["data.env=functions"]
    cfg = load_config("smoke", overrides=[*base, f"data.env_kwargs={{reward_funcs: [{mod}:accuracy]}}"])
    assert cfg.data.env_kwargs == {"reward_funcs": [f"{mod}:accuracy"]}  # the smoke preset's arithmetic kwargs: gone
    cases = {
        "{}": r"data.env_kwargs.reward_funcs: required by environment 'functions'",
        f"{{reward_funcs: [{mod}:nope]}}": rf"cannot import '{mod}:nope': module '{mod}' has no attribute 'nope'",
        f"{{reward_funcs: [{mod}:NOT_CALLABLE]}}": r"is not callable",
        "{reward_funcs: [no_such_module_xyz:f]}": r"No module named 'no_such_module_xyz'",
        f"{{reward_funcs: [{mod}:short], reward_weights: [1, 2]}}": r"2 weights for 1 reward functions",
        f"{{reward_funcs: [{mod}:short], feedback_funcs: [{mod}:nah]}}":
            r"data.env_kwargs.feedback_funcs: cannot import",
        f"{{reward_funcs: [{mod}:short], op: add}}":
            r"data.env_kwargs.op: environment 'functions' takes no argument 'op'",
        "{reward_funcs: [./no/such/model]}": r"'./no/such/model' is not 'module:function' and not a reward model",
    }
    for kwargs, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_config("smoke", overrides=[*base, f"data.env_kwargs={kwargs}"])


def test_scores_in_worker_processes(mod, tmp_path, monkeypatch):
    env = resd.envs.load("functions", reward_funcs=[f"{mod}:accuracy"], feedback_funcs=[f"{mod}:explain"])
    state = pickle.loads(pickle.dumps(env))
    assert state.reward_funcs[0] is sys.modules[mod].accuracy  # pickled by name, re-imported
    monkeypatch.chdir(tmp_path)  # the workers find the user's module in the current directory
    fbs = env.score_batch(["5", "7"], ROWS, workers=1, timeout_s=60)
    assert [(f.score, f.feedback) for f in fbs] == [(1.0, ""), (0.0, "expected 8")]


# ---------------------------------------------------------------------------------------------- reward model
@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    import torch
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    from resd.models import load_tokenizer

    tok = load_tokenizer("tiny")
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, num_labels=1, pad_token_id=tok.pad_token_id)
    path = tmp_path_factory.mktemp("rm")
    Qwen2ForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_reward_model_is_a_trl_reward_function(reward_model_dir):
    rm = RewardModel(reward_model_dir, batch_size=2)
    prompts = ["What is 2 + 2?", "Name a colour.", [{"role": "user", "content": "Hi"}]]
    completions = ["4", "blue, and a much longer answer", [{"role": "assistant", "content": "Hello"}]]
    scores = rm(prompts=prompts, completions=completions, solution=["4", "x", "y"])
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores) and len(set(scores)) == 3
    # batching and padding do not change a score
    assert rm(prompts=prompts[1:2], completions=completions[1:2]) == pytest.approx(scores[1:2], abs=1e-5)
    copy = pickle.loads(pickle.dumps(rm))
    assert copy._model is None and copy(prompts=prompts, completions=completions) == pytest.approx(scores, abs=1e-5)


def test_reward_model_path_in_reward_funcs(reward_model_dir, mod):
    env = resd.envs.load("functions", reward_funcs=[str(reward_model_dir), f"{mod}:accuracy"], reward_weights=[0.5, 1])
    (fb,) = env.score_batch(["5"], ROWS[:1])
    value = RewardModel(reward_model_dir)(prompts=[ROWS[0]["prompt"]], completions=["5"])[0]
    assert fb.score == pytest.approx(0.5 * value + 1.0, abs=1e-5)
    assert set(fb.details["rewards"]) == {f"RewardModel({reward_model_dir.name})", "accuracy"}
    cfg = load_config("smoke", overrides=["data.env=functions",
                                          f"data.env_kwargs={{reward_funcs: [{reward_model_dir}]}}"])
    assert cfg.data.env_kwargs["reward_funcs"] == [str(reward_model_dir)]


def test_docstring_example_module_is_valid_python():
    import resd.envs.functions as functions

    assert "reward_funcs" in functions.__doc__
    assert textwrap.dedent(FunctionsEnv.__doc__).splitlines()[0].startswith("TRL-style reward functions")
