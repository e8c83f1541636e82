"""Device placement: ``model.device`` resolution and the teacher's CPU offload.

On this CPU-only machine the offload moves are between CPU and CPU, so these tests check the
bookkeeping (identical results, the teacher parked on the CPU), not the memory saving on a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

from resd.distributed import resolve_device
from resd.trainer.trainer import Trainer


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(os.environ, "LOCAL_RANK", "3")
    assert resolve_device("auto") == torch.device("cuda", 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("kind", ["ema", "trust-region"])
def test_offloaded_teacher_gives_the_same_training(tiny_config, tmp_path, kind):
    runs = []
    for offload in (False, True):
        cfg = tiny_config("train.steps=2", f"teacher.kind={kind}", f"teacher.offload={str(offload).lower()}",
                          f"logging.run_dir={tmp_path / str(offload)}", "train.rollout_is_threshold=null")
        trainer = Trainer(cfg)
        trainer.train()
        assert all(p.device.type == "cpu" for p in trainer.teacher.module.parameters())
        runs.append(trainer)
    plain, offloaded = runs
    for (n, a), (_, b) in zip(plain.model.named_parameters(), offloaded.model.named_parameters(), strict=True):
        assert torch.equal(a, b), n
    for (n, a), (_, b) in zip(plain.teacher.module.named_parameters(), offloaded.teacher.module.named_parameters(),
                              strict=True):
        assert torch.equal(a, b), n
