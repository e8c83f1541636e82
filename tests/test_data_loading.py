"""Reading user data (issue 23): formats, column mapping, derived ids, load-time checks, and errors
that name the file, row and column."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest

import resd.envs
from resd.data import read_rows
from resd.envs import DataError, Environment, Feedback

TRL_ROWS = [
    {"prompt": "What is 2 + 3?", "solution": "5"},
    {"prompt": [{"role": "user", "content": "What is 4 + 4?"}], "solution": "8"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


class QuestionEnv(Environment):
    """Reads 'question'; any row is valid otherwise."""

    def prompt_messages(self, example):
        return [{"role": "user", "content": example["question"]}]

    def score(self, response, example, *, truncated=False):
        return Feedback(0.0, 0.0)


# ---------------------------------------------------------------------------------------------- formats
def test_formats_give_the_same_rows(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": "a", "solution": "1"}, {"prompt": "b", "solution": "2"}]
    ds = datasets.Dataset.from_list(rows)
    write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "list.json").write_text(json.dumps(rows), encoding="utf-8")
    ds.to_json(str(tmp_path / "lines.json"))  # datasets writes JSON Lines into .json
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(str(tmp_path / "dict"))
    for name in ("d.jsonl", "list.json", "lines.json", "d.parquet", "saved"):
        assert read_rows(tmp_path / name) == rows, name
    assert read_rows(tmp_path / "dict", split="test") == rows[1:]
    with pytest.raises(DataError, match=r"dict: this DatasetDict has no split 'validation' \(splits: train, test\)"):
        read_rows(tmp_path / "dict", split="validation")


def test_a_datasetdict_split_follows_the_config_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"question": f"q{i}", "id": i} for i in range(3)])
    datasets.DatasetDict({"train": ds, "test": ds.select([2])}).save_to_disk(str(tmp_path / "dict"))
    env = QuestionEnv()
    assert [r["id"] for r in env.load_split("train", str(tmp_path / "dict"))] == [0, 1, 2]
    assert [r["id"] for r in env.load_split("test", str(tmp_path / "dict"))] == [2]


def test_a_plain_directory_is_not_a_dataset(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"not one written by datasets' save_to_disk"):
        read_rows(tmp_path)


def test_unsupported_and_missing_paths(tmp_path):
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"d\.csv: unsupported file type '\.csv'"):
        read_rows(tmp_path / "d.csv")
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file or directory"):
        read_rows(tmp_path / "nope.jsonl")


def test_hub_dataset_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"^hf:org/name: HF_HUB_OFFLINE"):
        read_rows("hf:org/name")
    with pytest.raises(DataError, match=r"^org/name: no such local file or directory, and HF_HUB_OFFLINE"):
        read_rows("org/name")


# ---------------------------------------------------------------------------------------------- errors
def test_trl_dataset_on_arithmetic_names_file_row_column_and_the_mapping(tmp_path):
    path = write_jsonl(tmp_path / "trl.jsonl", TRL_ROWS)
    env = resd.envs.load("arithmetic")
    with pytest.raises(DataError) as e:
        env.load_split("train", str(path))
    message = str(e.value)
    assert message.startswith(f"{path}: row 1: ") and "missing field 'question'" in message
    assert "['prompt', 'solution']" in message and "data.env_kwargs.columns" in message
    assert "data.env=functions" in message


def test_column_mapping(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"problem": "What is 1 + 1?", "meta": {"gold": "2"}}])
    env = resd.envs.load("arithmetic", columns={"question": "problem", "answer": "meta.gold"})
    (row,) = env.load_split("train", str(path))
    assert row["question"] == "What is 1 + 1?" and row["answer"] == "2" and row["problem"] == row["question"]
    assert env.score("<answer>2</answer>", row).score == 1.0
    bad = resd.envs.load("arithmetic", columns={"question": "text"})
    with pytest.raises(DataError, match=rf"{path}: row 1: no column 'text' to read field 'question' from "
                                        r"\(data.env_kwargs.columns\); the row's columns: \['meta', 'problem'\]"):
        bad.load_split("train", str(path))


def test_non_utf8_names_the_byte_offset(tmp_path):
    path = tmp_path / "latin.jsonl"
    data = b'{"question": "ok"}\n{"question": "caf\xe9"}\n'
    path.write_bytes(data)
    assert data.index(b"\xe9") == 36
    with pytest.raises(DataError, match=r"latin\.jsonl: not UTF-8 text: byte offset 36 \(row 2\) is 0xe9"):
        read_rows(path)
    path = tmp_path / "latin.json"
    path.write_bytes(b'[{"question": "caf\xe9"}]')
    with pytest.raises(DataError, match=r"latin\.json: not UTF-8 text: byte offset 18 is 0xe9"):
        read_rows(path)


def test_invalid_json_names_the_row(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "a"}\n{"question": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl: row 2: invalid JSON"):
        read_rows(path)
    path.write_text('{"question": "a"}\n[1]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl: row 2: expected a JSON object, got list"):
        read_rows(path)


def test_empty_dataset_names_the_path_and_split(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}: the 'train' split is empty"):
        QuestionEnv().load_split("train", str(path))
    full = write_jsonl(tmp_path / "full.jsonl", [{"question": "a"}])
    with pytest.raises(DataError, match=r"the 'test' split is empty after data.\*_limit=0"):
        QuestionEnv().load_split("test", str(full), 0)


def test_row_errors_of_a_custom_env_are_caught_at_load_time(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "a"}, {"text": "b"}])
    with pytest.raises(DataError, match=rf"{path}: row 2: missing field 'question' \(KeyError in prompt_messages\)"):
        QuestionEnv().load_split("train", str(path))

    class BadMessages(QuestionEnv):
        def prompt_messages(self, example):
            return [{"role": "user", "content": 3}]

    with pytest.raises(DataError, match=r"row 1: .*prompt_messages should return a non-empty list"):
        BadMessages().load_split("train", str(path))

    class BadId(QuestionEnv):
        def example_id(self, example):
            return example["uid"]

    ok = write_jsonl(tmp_path / "ok.jsonl", [{"question": "a", "uid": "u1"}, {"question": "b"}])
    with pytest.raises(DataError, match=rf"{ok}: row 2: .*example_id failed: missing field 'uid'"):
        BadId().load_split("train", str(ok))


def test_row_numbers_survive_an_envs_own_filtering(tmp_path):
    class Filtered(QuestionEnv):
        def load_split(self, split, path=None, limit=None):
            return [r for r in super().load_split(split, path, limit) if r.get("keep")]

    path = write_jsonl(tmp_path / "d.jsonl", [{"keep": 0}, {"keep": 0}, {"keep": 1, "question": "a"}, {"keep": 1}])
    with pytest.raises(DataError, match=rf"{path}: row 4: missing field 'question'"):
        Filtered().load_split("train", str(path))


# ---------------------------------------------------------------------------------------------- ids
def test_ids_are_derived_at_load_time_and_stable(tmp_path):
    rows = [{"question": "same"}, {"question": "same"}, {"question": "other", "id": "mine"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    env = QuestionEnv()
    loaded = env.load_split("train", str(path))
    assert loaded == rows  # the columns are untouched: the derived id is carried outside them
    ids = [env.example_id(r) for r in loaded]
    assert ids[2] == "mine" and ids[0].startswith("row1-") and ids[1].startswith("row2-") and ids[0] != ids[1]
    assert [env.example_id(pickle.loads(pickle.dumps(r))) for r in loaded] == ids  # crosses processes
    assert [env.example_id(r) for r in env.load_split("train", str(path))] == ids
    code = (f"import json, sys; sys.path.insert(0, {str(tmp_path)!r}); from test_data_loading_env import E; "
            f"e = E(); print(json.dumps([e.example_id(r) for r in e.load_split('train', {str(path)!r})]))")
    (tmp_path / "test_data_loading_env.py").write_text(
        "from resd.envs import Environment, Feedback\n"
        "class E(Environment):\n"
        "    def prompt_messages(self, example):\n"
        "        return [{'role': 'user', 'content': example['question']}]\n"
        "    def score(self, response, example, *, truncated=False):\n"
        "        return Feedback(0.0, 0.0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"})
    assert json.loads(out.stdout) == ids


def test_trainer_sees_the_data_errors_from_the_cli(tmp_path, capsys):
    from resd.cli import main

    path = write_jsonl(tmp_path / "trl.jsonl", TRL_ROWS)
    rc = main(["train", "--preset", "smoke", f"data.train_path={path}", f"logging.run_dir={tmp_path / 'run'}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"error: {path}: row 1: arithmetic example: missing field 'question'" in err
