"""Learning-efficacy benchmark: GRPO (n=8), SDPO, SDPO+ss and RESD (n=1) at the same rollout budget.

Each (task, method, seed) is one ``resd train`` run in its own process (so memory is returned
between runs); its held-out accuracy at fixed rollout counts is copied into a small JSON file in
``benchmarks/efficacy/results/<task>/``. Finished runs are skipped, so the benchmark can be run task
by task, stopped and continued. ``--summarize`` turns the JSON files into ``summary.csv``,
``summary.md`` (means over seeds, each seed's accuracies, paired differences between evaluations
where the runs kept their per-problem sample accuracies, and on Manufactoria the held-out answers by
kind of factory) and curves (mean over seeds with the min-max band).

    python benchmarks/efficacy/run.py --task arithmetic            # 4 methods x 3 seeds
    python benchmarks/efficacy/run.py --task manufactoria --methods resd --seeds 0
    python benchmarks/efficacy/run.py --summarize
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from resd.config import deep_merge
from resd.evaluation.metrics import paired_difference
from resd.report.loading import read_jsonl

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
RESULTS = HERE / "results"
METHODS = ("grpo", "sdpo", "sdpo-ss", "resd")  # the four arms, run by default


def defined_methods() -> list[str]:
    """The four arms, then any extra arm of methods.yaml (e.g. a RESD variant), in file order."""
    names = list(yaml.safe_load((CONFIGS / "methods.yaml").read_text()))
    return [*METHODS, *(m for m in names if m not in METHODS)]


ACC_KEY = "val/acc/mean@{k}"


def run_config(task: str, method: str, budget: int | None) -> tuple[dict[str, Any], int]:
    """The merged config of one run and its rollout budget (outer batches are sized to hit it exactly)."""
    config = yaml.safe_load((CONFIGS / f"{task}.yaml").read_text())
    methods = yaml.safe_load((CONFIGS / "methods.yaml").read_text())
    budget = budget or int(config.pop("budget_rollouts"))
    config.pop("budget_rollouts", None)
    config = deep_merge(config, methods[method])
    per_batch = config["train"]["batch_size"] * config["rollout"]["n"] * config["stream"]["inner_steps"]
    if budget % per_batch:
        raise SystemExit(f"{task}/{method}: budget {budget} is not a multiple of {per_batch} rollouts per outer batch")
    config["stream"]["num_batches"] = budget // per_batch
    config["name"] = f"efficacy-{task}-{method}"
    return config, budget


def eval_rows(run_dir: Path, step: int) -> list[dict[str, Any]] | None:
    """The sample rows of the run's evaluation at ``step``, or None when it kept no sample file."""
    path = run_dir / "eval" / f"step-{step:06d}_samples.jsonl"
    return read_jsonl(path, warnings=[]) if path.exists() else None


def eval_samples(rows: list[dict[str, Any]] | None) -> dict[str, list[float]] | None:
    """Per held-out problem, the ``acc`` of each of its samples (for the paired comparisons of the
    summary), in sample order."""
    if rows is None:
        return None
    by_problem: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        by_problem.setdefault(row["example_id"], []).append((row["sample"], round(float(row["acc"]), 4)))
    return {problem: [acc for _, acc in sorted(samples)] for problem, samples in by_problem.items()}


def held_out_tests(config: dict[str, Any]) -> dict[str, list[Any]]:
    """The test tapes of a Manufactoria run's held-out problems, by example id."""
    from resd import envs

    data = config["data"]
    env = envs.load(data["env"], **data.get("env_kwargs", {}))
    rows = env.load_split(data.get("val_split", "test"), data.get("val_path"), data.get("val_limit"))
    return {env.example_id(row): env.tests(row) for row in rows}


def eval_kinds(rows: list[dict[str, Any]] | None, tests: dict[str, list[Any]]) -> dict[str, int] | None:
    """How many held-out answers are of each kind of factory (:mod:`resd.envs.manufactoria.kinds`)."""
    from resd.envs.manufactoria.kinds import KINDS, program_kind

    if rows is None:
        return None
    counts = dict.fromkeys(KINDS, 0)
    for row in rows:
        counts[program_kind(row.get("response"), tests[str(row["example_id"])])] += 1
    return counts


def extract(run_dir: Path, k: int, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Held-out accuracy points (with per-problem sample accuracies, and on Manufactoria the kinds of
    answer) and training statistics from a finished run's metrics.jsonl and evaluation files."""
    tests = held_out_tests(config) if config and config["data"]["env"] == "manufactoria" else None
    points, train = [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if ACC_KEY.format(k=k) in row:
            rows = eval_rows(run_dir, int(row["step"]))
            points.append({"rollouts": int(row["progress/rollouts"]), "elapsed_s": round(row["progress/elapsed_s"], 1),
                           "acc_mean": row[ACC_KEY.format(k=k)], "acc_best": row.get(f"val/acc/best@{k}"),
                           "test_case_mean": row.get(f"val/test_case/mean@{k}"),
                           "task_mean": row.get(f"val/task/mean@{k}"),
                           "response_length": row.get("val/response_length/mean"),
                           "samples": eval_samples(rows)})
            if tests is not None:
                points[-1]["kinds"] = eval_kinds(rows, tests)
        elif "reward/mean" in row:
            train.append({key: row.get(key) for key in ("step", "progress/rollouts", "reward/mean", "loss/distill", "loss/pg",
                                                        "actor/grad_norm", "playbook/size", "time/step_s")})
    return {"points": points, "train": train}


def run_one(task: str, method: str, seed: int, budget: int | None, runs_root: Path, overrides: list[str]) -> Path:
    out = RESULTS / task / f"{method}-seed{seed}.json"
    if out.exists():
        print(f"skip {task}/{method}/seed {seed}: {out.relative_to(HERE.parent.parent)} exists", flush=True)
        return out
    config, budget = run_config(task, method, budget)
    # Before training every method is the same model (a LoRA adapter starts as a no-op) evaluated
    # with the same seeds: evaluate it once per task and seed and share that point.
    base = shared_base_point(task, seed)
    if base is not None:
        config["eval"]["before_train"] = False
    run_dir = runs_root / task / f"{method}-seed{seed}"
    if run_dir.exists():  # an unfinished attempt (benchmark runs keep no checkpoints): start over
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    config_path = run_dir.parent / f"{method}-seed{seed}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "resd.cli", "train", "--config", str(config_path), f"seed={seed}",
               f"logging.run_dir={run_dir}", *overrides]
    print(f"run {task}/{method}/seed {seed}: {' '.join(command[2:])}", flush=True)
    started = time.time()
    with (run_dir.parent / f"{method}-seed{seed}.log").open("w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - started
    if code != 0:
        raise SystemExit(f"{task}/{method}/seed {seed} failed with exit code {code}; see {log.name}")
    k = config["eval"]["k"]
    result = {"task": task, "method": method, "seed": seed, "budget_rollouts": budget, "wall_s": round(wall, 1),
              "eval_k": k, "overrides": overrides, "config": config, **extract(run_dir, k, config)}
    if base is not None:
        result["points"].insert(0, {**base, "shared": True})
    playbook = sorted((run_dir / "playbook").glob("step-*.txt"))
    if playbook:
        result["final_playbook"] = playbook[-1].read_text()[:4000]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"done {task}/{method}/seed {seed} in {wall / 60:.1f} min: "
          + ", ".join(f"{p['rollouts']}:{p['acc_mean']:.3f}" for p in result["points"]), flush=True)
    return out


def shared_base_point(task: str, seed: int) -> dict[str, Any] | None:
    """The rollouts=0 evaluation of an earlier method's run on this task and seed, if any."""
    for path in sorted((RESULTS / task).glob(f"*-seed{seed}.json")):
        for point in json.loads(path.read_text())["points"]:
            if point["rollouts"] == 0 and not point.get("shared"):
                return {k: v for k, v in point.items() if k != "shared"}
    return None


def attach_samples(task: str, run_dir: Path) -> Path:
    """Add the per-problem sample accuracies (and on Manufactoria the kinds of answer) to a result
    written by a runner that did not keep them (the Manufactoria runs of commit 59eec33), from its
    run directory; a shared rollout-0 point takes them from the run that measured it (attach that
    run first)."""
    out = RESULTS / task / f"{run_dir.name}.json"
    result = json.loads(out.read_text())
    measured = ({p["rollouts"]: p for p in extract(run_dir, result["eval_k"], result.get("config"))["points"]}
                if (run_dir / "metrics.jsonl").exists() else {})
    for point in result["points"]:
        for field in ("samples", "kinds"):
            if point.get(field) is None:
                if point.get("shared"):
                    value = (shared_base_point(task, result["seed"]) or {}).get(field)
                else:
                    value = measured.get(point["rollouts"], {}).get(field)
                if value is not None:
                    point[field] = value
    out.write_text(json.dumps(result, indent=1) + "\n")
    return out


# ---------------------------------------------------------------------------------------------- summary
def load_results(task_dir: Path) -> dict[str, list[dict[str, Any]]]:
    by_method: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(task_dir.glob("*-seed*.json")):
        result = json.loads(path.read_text())
        by_method.setdefault(result["method"], []).append(result)
    return {m: by_method[m] for m in defined_methods() if m in by_method}


def curve(results: list[dict[str, Any]], field: str = "acc_mean") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rollout counts shared by all seeds, the per-seed values there and the per-seed training time
    (both seeds x points)."""
    common = sorted(set.intersection(*[{p["rollouts"] for p in r["points"]} for r in results]))
    values = np.array([[next(p[field] for p in r["points"] if p["rollouts"] == x) for x in common] for r in results])
    times = np.array([[next(p["elapsed_s"] for p in r["points"] if p["rollouts"] == x) for x in common] for r in results])
    return np.array(common), values, times


def first_reaching(xs: np.ndarray, mean: np.ndarray, target: float) -> int | None:
    hits = [int(x) for x, m in zip(xs, mean, strict=True) if m >= target - 1e-9]
    return hits[0] if hits else None


def pooled_samples(results: list[dict[str, Any]], rollouts: int) -> dict[str, list[float]]:
    """The per-problem sample accuracies at ``rollouts`` of every seed that kept them, keyed seed/problem."""
    pooled = {}
    for result in results:
        point = next((p for p in result["points"] if p["rollouts"] == rollouts), None)
        for problem, accs in ((point or {}).get("samples") or {}).items():
            pooled[f"{result['seed']}/{problem}"] = accs
    return pooled


def paired_comparisons(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Paired differences of held-out ``acc`` where the runs kept their samples: each method's change
    from the base model at every evaluation, then every other method against RESD at the final one.
    Units are (seed, problem), so only the draws of a seed that both sides evaluated are compared."""
    rows = []

    def add(label: str, a: dict[str, list[float]], b: dict[str, list[float]]) -> None:
        if any(key in b for key in a):
            diff = paired_difference(a, b)
            rows.append({"comparison": label, "seeds": len({key.split("/")[0] for key in a if key in b}),
                         "problems": diff.prompts, "difference": diff.mean, "low": diff.low, "high": diff.high})

    for method, method_results in results.items():
        xs = curve(method_results)[0]
        for x in xs[1:]:
            add(f"{method}: {int(x)} vs 0 rollouts", pooled_samples(method_results, 0), pooled_samples(method_results, int(x)))
    if "resd" in results:
        final = int(curve(results["resd"])[0][-1])
        for method in results:
            if method != "resd":
                add(f"resd - {method} at {final} rollouts", pooled_samples(results[method], final),
                    pooled_samples(results["resd"], final))
    return rows


def trivial_accs(results: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """On Manufactoria, the held-out ``acc`` of the prompt's example factory (``example``) and of a
    factory that rejects every tape (``reject``); empty for other tasks."""
    from resd.envs.manufactoria.kinds import EXAMPLE_CODE, REJECT_ALL, program_acc

    config = next((r["config"] for rs in results.values() for r in rs if r.get("config")), None)
    if not config or config["data"]["env"] != "manufactoria":
        return {}
    tests = held_out_tests(config)
    return {name: sum(program_acc(code, t) for t in tests.values()) / len(tests)
            for name, code in (("example", EXAMPLE_CODE), ("reject", REJECT_ALL))}


def kind_lines(results: dict[str, list[dict[str, Any]]], trivial: dict[str, float]) -> list[str]:
    """On Manufactoria, a table of the held-out answers by kind of factory (share of each method's
    answers at each evaluation, pooled over the seeds that kept them) and the ``acc`` that the
    trivial programs get on the same problems (``trivial``, from :func:`trivial_accs`), then the counts
    of each run; nothing for other tasks."""
    from resd.envs.manufactoria.kinds import KINDS

    table = []
    for method, method_results in results.items():
        for x in curve(method_results)[0]:
            counts = [p["kinds"] for r in method_results for p in r["points"] if p["rollouts"] == x and p.get("kinds")]
            total = sum(sum(c.values()) for c in counts)
            if total:
                shares = " | ".join(f"{sum(c[kind] for c in counts) / total:.2f}" for kind in KINDS)
                table.append(f"| {method} | {int(x)} | {len(counts)} | {shares} |")
    if not table:
        return []
    counts_table = [f"| {method} | {r['seed']} | {p['rollouts']} | {p['acc_mean']:.3f} | "
                    + " | ".join(str(p["kinds"][kind]) for kind in KINDS) + " |"
                    for method, method_results in results.items()
                    for r in sorted(method_results, key=lambda r: r["seed"]) for p in r["points"] if p.get("kinds")]
    return ["", "Held-out answers by kind of factory (share of the answers of the seeds counted; "
            "`resd.envs.manufactoria.kinds`). On these problems the prompt's example factory scores "
            f"`acc` {trivial['example']:.3f} and a factory that rejects every tape {trivial['reject']:.3f}:", "",
            "| method | rollouts | seeds | " + " | ".join(KINDS) + " |", "|---|---|---|" + "---|" * len(KINDS), *table,
            "", "The same, per run (number of held-out answers of each kind):", "",
            "| method | seed | rollouts | acc | " + " | ".join(KINDS) + " |", "|---|---|---|---|" + "---|" * len(KINDS),
            *counts_table]


def seed_lines(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """A table of every run's held-out accuracy at each of its evaluations (one row per method and
    seed), so that per-seed numbers are read from the summary, not re-added by hand."""
    xs_all = sorted({p["rollouts"] for rs in results.values() for r in rs for p in r["points"]})
    lines = ["", "Per seed (held-out accuracy at each evaluation):", "",
             "| method | seed | " + " | ".join(f"{x} rollouts" for x in xs_all) + " |", "|---|---|" + "---|" * len(xs_all)]
    for method, method_results in results.items():
        for result in sorted(method_results, key=lambda r: r["seed"]):
            acc = {p["rollouts"]: p["acc_mean"] for p in result["points"]}
            cells = [f"{acc[x]:.3f}" if x in acc else "" for x in xs_all]
            lines.append(f"| {method} | {result['seed']} | " + " | ".join(cells) + " |")
    return lines


def table_lines(curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], with_time: bool) -> list[str]:
    """A markdown table: one row per method, mean ± std over seeds at each rollout count."""
    xs_all = sorted({int(x) for xs, _, _ in curves.values() for x in xs})
    header = "| method | seeds | " + " | ".join(f"{x} rollouts" for x in xs_all) + " |"
    lines = [header + (" train time per run |" if with_time else ""),
             "|" + "---|" * (len(xs_all) + 2 + with_time)]
    for method, (xs, values, times) in curves.items():
        mean, std = values.mean(axis=0), values.std(axis=0)
        column = {int(x): j for j, x in enumerate(xs)}
        cells = [f"{mean[column[x]]:.3f} ± {std[column[x]]:.3f}" if x in column else "" for x in xs_all]
        time_cell = f" {times[:, -1].mean() / 60:.1f} min |" if with_time else ""
        lines.append(f"| {method} | {len(values)} | " + " | ".join(cells) + " |" + time_cell)
    return lines


def summarize_task(task: str) -> list[str]:
    from resd.report.plots import seed_band_png

    task_dir = RESULTS / task
    results = load_results(task_dir)
    if not results:
        return [f"no results for {task}"]
    curves = {m: curve(rs) for m, rs in results.items()}
    lines = [f"### {task}", "", *table_lines(curves, with_time=True)]
    # Where accuracy is partial credit (Manufactoria: the fraction of test tapes handled), a second
    # table gives the problems solved outright (every test passed), the sparse training reward.
    points = [p for rs in results.values() for r in rs for p in r["points"]]
    partial = all(p.get("task_mean") is not None for p in points) and any(p["task_mean"] != p["acc_mean"] for p in points)
    solved_curves = {m: curve(rs, "task_mean") for m, rs in results.items()} if partial else {}
    if solved_curves:
        lines += ["", "Held-out problems solved (every test case passed):", "", *table_lines(solved_curves, with_time=False)]
    rows = []
    for method, (xs, values, _) in curves.items():
        solved = solved_curves[method][1] if solved_curves else None
        for i, seed_result in enumerate(results[method]):
            for j, x in enumerate(xs):
                rows.append({"task": task, "method": method, "seed": seed_result["seed"], "rollouts": int(x),
                             "acc_mean": values[i, j], "solved_mean": solved[i, j] if solved is not None else ""})
    with (task_dir / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["task", "method", "seed", "rollouts", "acc_mean", "solved_mean"])
        writer.writeheader()
        writer.writerows(rows)
    lines += seed_lines(results)
    trivial = trivial_accs(results)  # runs the interpreter on every held-out test: once per summary
    lines += kind_lines(results, trivial)
    paired = paired_comparisons(results)
    if paired:
        lines += ["", "Paired differences of held-out `acc` (mean over (seed, problem) pairs of the change in a problem's",
                  "mean@k; 95% bootstrap interval resampling those pairs):", "",
                  "| comparison | seeds | pairs | difference | 95% interval |", "|---|---|---|---|---|",
                  *(f"| {r['comparison']} | {r['seeds']} | {r['problems']} | {r['difference']:+.3f} | "
                    f"[{r['low']:+.3f}, {r['high']:+.3f}] |" for r in paired)]
    lines.append("")
    verdict: dict[str, Any] = {}
    if "grpo" in curves and "resd" in curves:
        gx, gv, _ = curves["grpo"]
        rx, rv, _ = curves["resd"]
        grpo_final = float(gv.mean(axis=0)[-1])
        reach = first_reaching(rx, rv.mean(axis=0), grpo_final)
        verdict["grpo_final"] = grpo_final
        verdict["resd_rollouts_to_grpo_final"] = reach
        verdict["target_quarter_budget"] = bool(reach is not None and reach <= gx[-1] / 4)
        base = float(gv.mean(axis=0)[0])
        verdict["grpo_improved"] = grpo_final > base + 1e-9
        reached = f"first reaches it at {reach} rollouts" if reach is not None else "never reaches it within the budget"
        met = "met" if verdict["target_quarter_budget"] else "not met"
        if not verdict["grpo_improved"]:  # the base model already has GRPO's final accuracy
            met += f" (trivially: GRPO ended at or below the base model's {base:.3f})"
        lines.append(f"- GRPO's final held-out accuracy: {grpo_final:.3f}; RESD's mean {reached} "
                     f"(target: at most {int(gx[-1] / 4)}): {met}.")
    if "sdpo" in curves and "resd" in curves:
        s_final = float(curves["sdpo"][1].mean(axis=0)[-1])
        r_final = float(curves["resd"][1].mean(axis=0)[-1])
        verdict.update(sdpo_final=s_final, resd_final=r_final, resd_beats_sdpo=r_final > s_final)
        lines.append(f"- Final accuracy RESD {r_final:.3f} vs SDPO {s_final:.3f}: "
                     f"{'RESD higher' if r_final > s_final else 'RESD not higher'}.")
    (task_dir / "summary.json").write_text(json.dumps(
        {"task": task, "verdict": verdict, "paired": paired,
         "curves": {m: {"rollouts": xs.tolist(), "acc_mean": v.mean(axis=0).tolist(), "acc_std": v.std(axis=0).tolist(),
                        "acc_min": v.min(axis=0).tolist(), "acc_max": v.max(axis=0).tolist(),
                        "elapsed_s": t.mean(axis=0).tolist(), "seeds": len(v)} for m, (xs, v, t) in curves.items()}},
        indent=1) + "\n")
    groups = {m: (xs, v, t) for m, (xs, v, t) in curves.items()}
    k = next(iter(results.values()))[0]["eval_k"]
    y_label = f"mean@{k} (band: min-max over seeds)"
    # on Manufactoria, a line at the score of a copy of the prompt's example, an answer that ignores the task
    references = {f"copy of the prompt's example ({acc:.3f})": acc
                  for name, acc in trivial.items() if name == "example"}
    (task_dir / "accuracy_vs_rollouts.png").write_bytes(
        seed_band_png({m: (xs, v) for m, (xs, v, _) in groups.items()}, "rollouts", f"{task}: held-out accuracy",
                      y_label, references=references))
    (task_dir / "accuracy_vs_time.png").write_bytes(
        seed_band_png({m: (t / 60, v) for m, (_, v, t) in groups.items()}, "training wall-clock (min)",
                      f"{task}: held-out accuracy", y_label, references=references))
    (task_dir / "summary.md").write_text("\n".join(lines) + "\n")
    return lines


def main() -> None:
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", action="append", help="task file in configs/ (repeatable)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budget", type=int, default=None, help="rollouts per run (default: the task file's)")
    parser.add_argument("--runs", default="runs/efficacy", help="where run directories go (not kept in git)")
    parser.add_argument("--results", default=str(HERE / "results"), help="where result JSON files and summaries go")
    parser.add_argument("--summarize", action="store_true", help="only rebuild summaries and plots")
    parser.add_argument("--attach-samples", nargs="+", metavar="RUN_DIR", type=Path,
                        help="add per-problem sample accuracies from these run directories to their results (one --task)")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    args = parser.parse_args()
    RESULTS = Path(args.results)
    tasks = args.task or sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem != "methods")
    if args.attach_samples:
        if len(tasks) != 1:
            raise SystemExit("--attach-samples needs exactly one --task")
        for run_dir in args.attach_samples:
            print(f"attached samples: {attach_samples(tasks[0], run_dir)}")
    elif not args.summarize:
        for task in tasks:
            for seed in [int(s) for s in args.seeds.split(",")]:
                for method in args.methods.split(","):
                    if method not in defined_methods():
                        raise SystemExit(f"unknown method {method!r}; choose from {defined_methods()}")
                    run_one(task, method, seed, args.budget, Path(args.runs), args.overrides)
    for task in tasks:
        print("\n".join(summarize_task(task)))


if __name__ == "__main__":
    main()
