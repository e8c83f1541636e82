"""One reading of the Hugging Face Hub's offline switches (``resd.hub.offline``)."""

from __future__ import annotations

import pytest

from resd.envs.functions import RewardModel
from resd.hub import offline

SWITCHES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


@pytest.fixture()
def online(monkeypatch):
    from huggingface_hub import constants

    for name in SWITCHES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return monkeypatch


@pytest.mark.parametrize(("switch", "datasets", "models"), [
    ("HF_HUB_OFFLINE", True, True), ("HF_DATASETS_OFFLINE", True, False), ("TRANSFORMERS_OFFLINE", False, True)])
@pytest.mark.parametrize("value", ["1", "true", " YES ", "on"])
def test_each_switch_forbids_what_it_names(online, switch, datasets, models, value):
    assert not offline("datasets") and not offline("models")
    online.setenv(switch, value)
    assert (offline("datasets"), offline("models")) == (datasets, models)


def test_a_switch_set_to_a_false_value_or_in_the_hub_library(online):
    online.setenv("HF_HUB_OFFLINE", "0")
    assert not offline("models")
    from huggingface_hub import constants

    online.setattr(constants, "HF_HUB_OFFLINE", True)  # as a program may set it after import
    assert offline("models") and offline("datasets")


def test_a_reward_model_hub_id_is_refused_only_when_models_are_offline(online):
    online.setenv("HF_DATASETS_OFFLINE", "1")  # datasets only: a model id is still fine
    RewardModel.check_path("org/reward-model")
    online.setenv("TRANSFORMERS_OFFLINE", "1")
    with pytest.raises(ValueError, match="offline for models"):
        RewardModel.check_path("org/reward-model")
