"""How much the teacher context raises the probability of the correct answer (the signal SDPO and
RESD distil), for the efficacy benchmark's arithmetic task and the embedded model.

For each problem the previous attempt is a wrong answer and the feedback states the right one (as
the arithmetic environment does). The teacher scores the correct response
``<answer>GOLD</answer><|im_end|>`` and we report its mean log-probability, the fraction of problems
where it is the greedy continuation's first token's top choice, and the probability that the
response opens with a step-by-step reasoning prefix instead, under the contexts below. It also
scores the wrong previous attempt itself, which is the response distillation runs on: a teacher
that gives it more probability than the student does pulls the student towards its own mistake.

- ``student``: the task prompt alone;
- ``sdpo``: SDPO's reprompt (prompt + feedback);
- ``resd-default``: RESD's teacher template (bullets ask to reason step by step), with a short
  reflection and an empty playbook;
- ``resd-direct``: the same with the ``direct`` template (answer in the form the task asks for);
- ``resd-direct-no-trial``: the same without the previous trial
  (``resd.use_previous_trial_in_teacher_prompt=false``).

    python benchmarks/teacher_context_signal.py [--problems 24]
"""

from __future__ import annotations

import argparse
import random
import statistics

import torch


def response_logprob(model, context_ids: list[int], response_ids: list[int]) -> tuple[float, torch.Tensor]:
    ids = torch.tensor([context_ids + response_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(context_ids) - 1 : -1].float()
    logp = torch.log_softmax(logits, -1)
    total = float(logp.gather(-1, torch.tensor(response_ids)[:, None]).sum())
    return total, logp[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=24)
    args = parser.parse_args()

    from resd.context.reprompt import RepromptConfig, build_teacher_contexts
    from resd.context.playbook import Playbook
    from resd.context.teacher_prompt import TeacherPromptConfig, build_teacher_prompt, load_template
    from resd.envs import load as load_env
    from resd.models import chat_prompt_ids, load_model, load_tokenizer

    tokenizer = load_tokenizer("embedded")
    model = load_model("embedded", "bf16", tokenizer)
    env = load_env("arithmetic", op="mul", digits=[2, 2], n_train=512, n_test=64)
    rows = env.load_split("train")[: args.problems]
    rng = random.Random(0)
    opener = tokenizer.encode("Let", add_special_tokens=False)[0]
    templates = {"resd-default": (load_template("default"), TeacherPromptConfig()),
                 "resd-direct": (load_template("direct"), TeacherPromptConfig()),
                 "resd-direct-no-trial": (load_template("direct"), TeacherPromptConfig(use_previous_trial=False))}
    stats: dict[str, list[tuple[float, bool, float, float]]] = {}
    for row in rows:
        gold = int(row["answer"])
        wrong = gold + rng.choice([-1, 1]) * rng.randint(10, 300)
        attempt = f"<answer>{wrong}</answer>"
        feedback = env.score(attempt, row).feedback
        target = tokenizer.encode(f"<answer>{gold}</answer>", add_special_tokens=False) + [tokenizer.eos_token_id]
        attempt_ids = tokenizer.encode(attempt, add_special_tokens=False) + [tokenizer.eos_token_id]
        messages = env.prompt_messages(row)
        contexts = {"student": messages}
        sdpo, _ = build_teacher_contexts([messages], [attempt], [0.0], [feedback], [0], RepromptConfig())
        contexts["sdpo"] = sdpo[0].messages
        reflection = f"The product was computed wrongly: {wrong} is not {row['question'][8:-1]}; the correct answer is {gold}."
        for name, (template, prompt_config) in templates.items():
            parts = build_teacher_prompt(template, prompt=messages[-1]["content"], previous_trial=attempt,
                                         feedback=feedback, reflection=reflection, solution=None,
                                         playbook=Playbook().render(), task_description=env.task_description,
                                         final_instruction="Correctly solve the original task with the above information:",
                                         config=prompt_config)
            contexts[name] = [{"role": "user", "content": parts.text}]
        for name, msgs in contexts.items():
            ids = chat_prompt_ids(tokenizer, msgs)[0]
            total, first = response_logprob(model, ids, target)
            top_is_target = int(first.argmax()) == target[0]
            attempt_logp, _ = response_logprob(model, ids, attempt_ids)
            stats.setdefault(name, []).append((total, top_is_target, float(first[opener].exp()), attempt_logp))
    print(f"{len(rows)} problems, embedded model (bf16); target = '<answer>GOLD</answer>' + end of turn; "
          "attempt = the wrong previous answer + end of turn")
    print(f"{'context':<22} {'mean log P(target)':>19} {'gain':>8} {'first token = target':>21} "
          f"{'P(opens with Let)':>18} {'log P(attempt) vs student':>26}")
    base = statistics.mean(v[0] for v in stats["student"])
    base_wrong = statistics.mean(v[3] for v in stats["student"])
    for name, values in stats.items():
        mean = statistics.mean(v[0] for v in values)
        print(f"{name:<22} {mean:>19.2f} {mean - base:>+8.2f} {statistics.mean(v[1] for v in values):>21.2f} "
              f"{statistics.mean(v[2] for v in values):>18.3f} {statistics.mean(v[3] for v in values) - base_wrong:>+26.2f}")


if __name__ == "__main__":
    main()
