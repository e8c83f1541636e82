"""Environment plugins (issue 23): ``module:Class`` from the current directory, ``resd.envs`` entry points,
``resd envs``, env arguments that stay with their environment, unknown environments at config time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import resd.envs
from resd.cli import main
from resd.config import ConfigError, load_config

MY_ENVS = '''
"""A user's own environments, in a module next to the data (not installed)."""

from resd.envs import Environment, Feedback, register

WORDS = ["apple", "river", "stone", "cloud", "grape", "light", "sound", "water"]


class ReverseEnv(Environment):
    """Reverse a word; the feedback spells the answer out.

    (more docstring lines that `resd envs` does not show)
    """

    task_description = "reversing words"

    def __init__(self, n=8):
        self.n = n

    def load_split(self, split, path=None, limit=None):
        if path is not None:
            return super().load_split(split, path, limit)
        rows = [{"word": w} for w in WORDS[: self.n]]  # no id column: resd derives one
        return rows[:limit] if limit is not None else rows

    def prompt_messages(self, example):
        return [{"role": "user", "content": f"Write the word {example['word']} backwards."}]

    def score(self, response, example, *, truncated=False):
        gold = example["word"][::-1]
        ok = response.strip() == gold
        return Feedback(float(ok), float(ok), "" if ok else f"The word backwards is {gold}.")


@register("reverse")
class RegisteredReverse(ReverseEnv):
    """Reverse a word (registered as 'reverse')."""
'''


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    # -P: the current directory is NOT put on sys.path (as with the installed `resd` script), so this
    # checks that resd imports the user's module from there by itself
    return subprocess.run([sys.executable, "-P", "-m", "resd.cli", *args], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def registry(monkeypatch):
    """Undo what a test adds to the environment registry."""
    monkeypatch.setattr(resd.envs, "_REGISTRY", dict(resd.envs._REGISTRY))
    monkeypatch.setattr(resd.envs, "_REGISTERED", set(resd.envs._REGISTERED))


@pytest.mark.slow
def test_module_class_env_trains_from_the_cli_and_is_listed(tmp_path):
    (tmp_path / "my_envs.py").write_text(MY_ENVS, encoding="utf-8")
    out = run_cli(["train", "--preset", "smoke", "data.env=my_envs:ReverseEnv", "data.env_kwargs.n=6",
                   "logging.run_dir=run", "logging.progress=false", "rollout.max_new_tokens=8", "rollout.n=2",
                   "train.batch_size=2"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "reward/mean" in m] == [1, 2]
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["example_id"].startswith("row") for s in samples)
    assert any(s["feedback"].startswith("The word backwards is") for s in samples)

    listed = run_cli(["envs", "my_envs"], tmp_path, timeout=120)
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert "Reverse a word; the feedback spells the answer out." in lines["my_envs:ReverseEnv"]
    assert "more docstring lines" not in listed.stdout
    assert "registered (my_envs:RegisteredReverse)" in lines["reverse"]
    assert "[built-in]" in lines["arithmetic"] and "[built-in]" in lines["functions"]


def test_registered_name_and_module_colon_name(tmp_path, monkeypatch, registry):
    (tmp_path / "my_envs2.py").write_text(MY_ENVS.replace('register("reverse")', 'register("reverse2")'),
                                          encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    # a name only @register gives is unknown until something imports the module: the error says how
    with pytest.raises(ConfigError, match=r"unknown environment 'reverse2'; known: .*'module:Class'"):
        load_config("smoke", overrides=["data.env=reverse2"])
    cfg = load_config("smoke", overrides=["data.env=my_envs2:reverse2"])  # module:registered-name
    assert cfg.data.env_kwargs == {}
    assert str(tmp_path) == sys.path[-1]  # the current directory, appended (installed packages win)
    env = resd.envs.load(cfg.data.env)
    assert type(env).__name__ == "RegisteredReverse" and env.name == "reverse2"
    assert "reverse2" in resd.envs.available()
    sys.modules.pop("my_envs2", None)


def test_entry_point_env(tmp_path, monkeypatch, registry, capsys):
    site = tmp_path / "site"
    (site / "plugpkg").mkdir(parents=True)
    (site / "plugpkg" / "__init__.py").write_text(textwrap.dedent('''
        from resd.envs import Environment, Feedback

        class PlugEnv(Environment):
            """An environment from an installed package."""

            def __init__(self, level=1):
                self.level = level

            def load_split(self, split, path=None, limit=None):
                return [{"id": str(i), "q": f"q{i}"} for i in range(4)]

            def prompt_messages(self, example):
                return [{"role": "user", "content": example["q"]}]

            def score(self, response, example, *, truncated=False):
                return Feedback(0.0, 0.0)
    '''), encoding="utf-8")
    dist = site / "plugpkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plugpkg\nVersion: 0.1\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text("[resd.envs]\nplug-task = plugpkg:PlugEnv\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    assert "plug-task" in resd.envs.available()
    source, doc = resd.envs.describe("plug-task")
    assert source == "entry point (plugpkg:PlugEnv, plugpkg)" and doc == "An environment from an installed package."
    cfg = load_config("smoke", overrides=["data.env=plug-task", "data.env_kwargs.level=3"])
    env = resd.envs.load(cfg.data.env, **cfg.data.env_kwargs)
    assert env.level == 3 and len(env.load_split("train")) == 4
    with pytest.raises(ConfigError, match=r"data.env_kwargs.op: environment 'plug-task' takes no argument 'op' "
                                          r"\(its arguments: level"):
        load_config("smoke", overrides=["data.env=plug-task", "data.env_kwargs={op: add}"])
    assert main(["envs"]) == 0
    assert any(line.startswith("plug-task") and "entry point (plugpkg:PlugEnv, plugpkg)" in line
               for line in capsys.readouterr().out.splitlines())
    sys.modules.pop("plugpkg", None)


def test_unknown_env_fails_at_config_validation(capsys):
    with pytest.raises(ConfigError, match=r"data.env: unknown environment 'nosuch'; known: ") as e:
        load_config("smoke", overrides=["data.env=nosuch"])
    known = str(e.value).split("known: ")[1].split(". ")[0].split(", ")
    assert {"arithmetic", "bouncingsim", "code", "finer", "functions", "manufactoria", "mcq"} <= set(known)
    assert main(["train", "--preset", "smoke", "data.env=nosuch", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "unknown environment 'nosuch'" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match=r"data.env='no_such_mod_xyz:Env': .*no_such_mod_xyz"):
        load_config("smoke", overrides=["data.env=no_such_mod_xyz:Env"])
    with pytest.raises(ConfigError, match=r"'resd.config:Config' is not an Environment subclass"):
        load_config("smoke", overrides=["data.env=resd.config:Config"])


def test_env_kwargs_stay_with_their_env(tmp_path):
    smoke = load_config("smoke").data.env_kwargs
    assert smoke["op"] == "add"
    # switching the environment drops the preset's arguments (they were written for arithmetic) ...
    assert load_config("smoke", overrides=["data.env=mcq"]).data.env_kwargs == {}
    # ... keeping it keeps them; an explicit data.env_kwargs wins in either case
    assert load_config("smoke", overrides=["data.env=arithmetic"]).data.env_kwargs == smoke
    assert load_config("smoke", overrides=["data.env=mcq", "data.env_kwargs={columns: {prompt: q}}"]
                       ).data.env_kwargs == {"columns": {"prompt": "q"}}
    # the command-line overrides are one layer: their order does not matter
    assert load_config("smoke", overrides=["data.env_kwargs={columns: {prompt: q}}", "data.env=mcq"]
                       ).data.env_kwargs == {"columns": {"prompt": "q"}}
    config = tmp_path / "c.yaml"
    config.write_text("data: {env: finer}\n", encoding="utf-8")  # a config file layer switching env
    assert load_config("smoke", path=config).data.env_kwargs == {}
    assert load_config("smoke", path=config, overrides=["data.env_kwargs.format_feedback=false"]
                       ).data.env_kwargs == {"format_feedback": False}
    # an argument the environment does not take is named at validation
    with pytest.raises(ConfigError, match=r"data.env_kwargs.op: environment 'finer' takes no argument 'op'"):
        load_config("smoke", overrides=["data.env=finer", "data.env_kwargs={op: add}"])
    with pytest.raises(ConfigError, match=r"data.env_kwargs.columns must map field names to column names"):
        load_config("smoke", overrides=["data.env_kwargs={columns: [a]}"])


def test_import_target_looks_in_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "cwd_only_mod.py").write_text("VALUE = 42\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    with pytest.raises(ModuleNotFoundError, match=r"no module named 'absent_mod_xyz' \(looked on sys.path and in "
                                                  r"the current directory"):
        resd.envs.import_target("absent_mod_xyz:X")
    assert str(tmp_path) not in sys.path  # not left behind by a failed import
    assert resd.envs.import_target("cwd_only_mod:VALUE") == 42
    assert sys.path[-1] == str(tmp_path) and sys.path.count(str(tmp_path)) == 1
    sys.modules.pop("cwd_only_mod", None)
