"""``resd report``: run-directory loading, playbook diffs, plots, and the HTML page."""

from __future__ import annotations

import argparse
import io
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from resd.report import add_report_parser, choose_metrics, load_run, write_report
from resd.report.html import config_differences, esc, pick_steps, render_page, sample_html
from resd.report.loading import assign_labels, merge_metrics
from resd.report.playbook_diff import diff_playbooks
from resd.report.plots import _time_scale, metric_png

HEADERS = ("## STRATEGIES & INSIGHTS", "## COMMON MISTAKES TO AVOID")


def playbook_at(step: int) -> str:
    """A global playbook that changes every step: one bullet whose helpful counter grows, one
    bullet added per step, and the bullet added two steps earlier removed."""
    strategies = [f"[sai-00001] helpful={step - 1} harmful=0 :: Check the units before answering."]
    mistakes = [f"[err-{k:05d}] helpful=0 harmful=0 :: Lesson learned at step {k}." for k in range(max(1, step - 1), step + 1)]
    return f"{HEADERS[0]}\n" + "\n".join(strategies) + f"\n\n{HEADERS[1]}\n" + "\n".join(mistakes) + "\n"


def make_run(root: Path, *, algorithm: str = "sdpo", steps: int = 4, name: str | None = None,
             response: str = "The answer is <answer>12</answer>.", reward_offset: float = 0.0) -> Path:
    """A synthetic run directory in the trainer's formats (config, metrics with val lines, samples,
    playbook snapshots for resd, eval summaries, best.json, checkpoints)."""
    root.mkdir(parents=True)
    config = {"name": name or f"{algorithm}-run", "algorithm": algorithm, "model": {"name": "tiny"},
              "data": {"env": "arithmetic"}, "train": {"steps": steps}, "eval": {"k": 4}}
    (root / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    lines = []
    for step in range(1, steps + 1):
        row = {"step": step, "reward/mean": reward_offset + step / steps, "acc/mean": step / (2 * steps),
               "loss/distill": 1.0 / step, "self_distillation/reprompt_sample_fraction": 0.5,
               "response_length/mean": 10.0 + step, "actor/grad_norm": 0.1 * step,
               "progress/rollouts": 8.0 * step, "progress/elapsed_s": 3.5 * step}
        if algorithm == "resd":
            row["playbook/size"] = float(min(step, 2) + 1)
        lines.append(json.dumps(row))
        if step % 2 == 0:
            lines.append(json.dumps({"step": step, "val/task/mean@4": 0.1 * step, "val/task/best@4": 0.2 * step,
                                     "val/pass@1": 0.05 * step, "val/prompts": 8.0,
                                     "val/response_length/mean": 12.0, "progress/rollouts": 8.0 * step,
                                     "progress/elapsed_s": 3.5 * step + 1}))
    (root / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    samples = []
    for step in range(1, steps + 1):
        for i in range(2):
            sample = {"step": step, "example_id": f"train-{i}", "prompt": "What is 6 + 6?", "response": response,
                      "score": float(i), "acc": float(i), "feedback": "Wrong: expected 12 & not \"13\".",
                      "teacher_prompt": f"TEACHER CONTEXT step {step}", "sd_mask": i == 0}
            if algorithm == "resd":
                sample["reflection"] = f"REFLECTION at step {step}"
            samples.append(json.dumps(sample))
    (root / "samples.jsonl").write_text("\n".join(samples) + "\n", encoding="utf-8")
    if algorithm == "resd":
        (root / "playbook").mkdir()
        for step in range(1, steps + 1):
            (root / "playbook" / f"step-{step:06d}.txt").write_text(playbook_at(step), encoding="utf-8")
    (root / "eval").mkdir()
    for step in range(2, steps + 1, 2):
        summary = {"task/mean@4": 0.1 * step, "task/best@4": 0.2 * step, "pass@1": 0.05 * step, "prompts": 8}
        (root / "eval" / f"step-{step:06d}_summary.json").write_text(json.dumps(summary), encoding="utf-8")
        (root / "eval" / f"step-{step:06d}_samples.jsonl").write_text("{}\n", encoding="utf-8")
    best = steps - steps % 2
    (root / "best.json").write_text(json.dumps({"step": best, "metric": "task/mean@4", "value": 0.1 * best}))
    for step in sorted({best, steps}):
        (root / "checkpoints" / f"step-{step:06d}").mkdir(parents=True)
    return root


def png_ok(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def img_ids(page: str) -> set[str]:
    return set(re.findall(r'<img id="([^"]+)"', page))


# ------------------------------------------------------------------------------------------ loading
def test_merge_metrics_joins_training_and_validation_lines_of_a_step():
    warnings: list[str] = []
    rows = [{"step": 2, "reward/mean": 0.5, "progress/rollouts": 8}, {"step": 2, "val/pass@1": 0.25},
            {"step": 1, "reward/mean": 0.1}, {"step": 1, "reward/mean": 0.2},
            {"reward/mean": 9.0}, {"step": "3", "x": 1}, {"step": True, "x": 1},
            {"step": 4, "a": None, "b": "inf", "c": True, "d": float("nan"), "e": [1], "f": 3}]
    merged = merge_metrics(rows, warnings)
    assert merged == {2: {"reward/mean": 0.5, "progress/rollouts": 8.0, "val/pass@1": 0.25},
                      1: {"reward/mean": 0.2}, 4: {"f": 3.0}}
    assert warnings == ["metrics.jsonl: 3 line(s) without a valid step skipped"]


def test_series_against_rollouts_skips_points_without_an_x(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    lines = [{"step": 1, "reward/mean": 0.1, "progress/rollouts": 4}, {"step": 2, "reward/mean": 0.2},
             {"step": 3, "reward/mean": 0.3, "progress/rollouts": 12}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    run = load_run(run_dir)
    assert run.series("reward/mean") == ([1.0, 2.0, 3.0], [0.1, 0.2, 0.3])
    assert run.series("reward/mean", "progress/rollouts") == ([4.0, 12.0], [0.1, 0.3])
    assert run.series("acc/mean") == ([], [])


def test_load_run_survives_a_crashed_run(tmp_path):
    run_dir = make_run(tmp_path / "crashed", algorithm="resd", steps=4)
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "reward/me')  # cut by the crash
    with (run_dir / "samples.jsonl").open("a") as f:
        f.write('[1, 2]\n{"step": 5, "resp')
    (run_dir / "playbook" / "step-000005.json").write_text("{not json")
    (run_dir / "eval" / "step-000006_summary.json").write_text("[]")
    (run_dir / "config.yaml").write_text("name: [unclosed")
    (run_dir / "best.json").write_text(json.dumps({"step": 9, "metric": "task/mean@4", "value": 1.0}))
    run = load_run(run_dir)
    assert max(run.metrics) == 4 and len(run.samples) == 8 and [p.step for p in run.playbooks] == [1, 2, 3, 4]
    assert run.config == {} and run.name == "crashed"
    assert set(run.warnings) == {
        "metrics.jsonl: 1 unreadable line(s) skipped", "samples.jsonl: 2 unreadable line(s) skipped",
        "playbook/: 1 unreadable snapshot(s) skipped", "eval/step-000006_summary.json is not a JSON object",
        "config.yaml cannot be parsed (ParserError)",
    }
    page = write_report([run_dir]).read_text()
    assert "metrics.jsonl: 1 unreadable line(s) skipped" in page
    assert re.search(r"step 9 .*checkpoints/step-000009</code> <span class=\"bad\">missing", page)


def test_empty_directory_still_gives_a_report(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    page_path = write_report([empty])
    page = page_path.read_text()
    assert page_path == empty / "report" / "index.html"
    for note in ("config.yaml is missing", "metrics.jsonl is missing", "no training metrics logged",
                 "no validation logged", "no playbook snapshots", "no best.json", "no sample rollouts logged"):
        assert note in page
    assert img_ids(page) == set() and list((page_path.parent / "plots").iterdir()) == []


def test_a_path_that_is_not_a_directory_is_an_error(tmp_path, capsys):
    with pytest.raises(FileNotFoundError):
        write_report([tmp_path / "nope"])
    args = _parse(["report", str(tmp_path / "nope")])
    assert args.func(args) == 2
    assert "is not a directory" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ playbook diff
def test_playbook_diff_classifies_each_bullet():
    old = ("## A\n[a-1] helpful=1 harmful=0 :: keep\n[a-2] helpful=0 harmful=0 :: counted\n"
           "[a-3] helpful=0 harmful=0 :: old text\n[a-4] helpful=0 harmful=0 :: dropped\n"
           "## GONE\n[g-1] helpful=0 harmful=0 :: whole section dropped\n")
    new = ("## A\n[a-1] helpful=1 harmful=0 :: keep\n[a-2] helpful=1 harmful=2 :: counted\n"
           "[a-3] helpful=0 harmful=0 :: new text\n[a-5] helpful=0 harmful=0 :: fresh\nfree text line\n")
    diff = diff_playbooks(old, new)
    kinds = [(line.kind, line.bullet.id if line.bullet else line.text) for line in diff.lines]
    assert kinds == [("header", "## A"), ("same", "a-1"), ("counters", "a-2"), ("edited", "a-3"), ("added", "a-5"),
                     ("text", "free text line"), ("removed", "a-4"), ("header", "## (removed sections)"),
                     ("removed", "g-1")]
    assert (diff.added, diff.removed, diff.edited, diff.counters, diff.bullets) == (1, 2, 1, 1, 4)
    counted = diff.lines[2]
    assert (counted.old.helpful, counted.old.harmful, counted.bullet.helpful, counted.bullet.harmful) == (0, 0, 1, 2)
    assert diff.lines[3].old.content == "old text"


def test_playbook_diff_baseline_and_moved_bullet():
    text = "## A\n[x-1] helpful=0 harmful=0 :: lesson\n"
    baseline = diff_playbooks(None, text)
    assert [line.kind for line in baseline.lines] == ["header", "same"] and baseline.added == 0
    moved = diff_playbooks(text, "## B\n[x-1] helpful=0 harmful=0 :: lesson\n")
    assert [line.kind for line in moved.lines] == ["header", "same"] and moved.removed == 0
    assert diff_playbooks("", "").lines == []


def test_playbook_diff_never_crashes_on_random_text():
    rng = random.Random(0)
    pieces = ["## S", "[a-1] helpful=1 harmful=0 :: x", "[a-1] helpful=2 harmful=0 :: y", "[b] helpful=0 harmful=9 ::",
              "[] helpful=1 harmful=1 :: z", "##", "[c-2] helpful=x harmful=0 :: q", "", "\x00<script>", "ü\u202e"]
    for _ in range(2000):
        old = "\n".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        new = "\n".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        if rng.random() < 0.2:
            new = "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 60)))
        diff = diff_playbooks(old if rng.random() < 0.9 else None, new)
        assert diff.bullets == sum(line.kind in {"same", "added", "edited", "counters"} for line in diff.lines)


def test_pick_steps():
    assert pick_steps([]) == []
    assert pick_steps([3, 1, 2]) == [1, 2, 3]
    assert pick_steps(range(1, 101)) == [1, 26, 51, 75, 100]
    assert pick_steps(range(1, 11), [10, 2, 99]) == [2, 10]
    assert pick_steps(range(1, 11), [99]) == []


# ------------------------------------------------------------------------------------------ plots
def test_metric_png_overlays_runs_in_their_colors(tmp_path):
    runs = [load_run(make_run(tmp_path / "a")), load_run(make_run(tmp_path / "b", reward_offset=1.0))]
    assign_labels(runs)
    assert [r.label for r in runs] == ["sdpo-run (a)", "sdpo-run (b)"]

    def red_pixels(png: bytes) -> int:
        rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
        return int(((rgb[..., 0] > 190) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)).sum())

    single = metric_png(runs[:1], "reward/mean", "step")
    both = metric_png(runs, "reward/mean", "rollouts")
    assert Image.open(io.BytesIO(single)).size == (480, 300)
    assert red_pixels(single) == 0 and red_pixels(both) > 100  # the second run's curve is red
    assert metric_png(runs, "no/such", "step") is None


def test_time_axis_unit():
    assert _time_scale(30) == (1.0, "s") and _time_scale(600) == (60.0, "min") and _time_scale(9000) == (3600.0, "h")


def test_diverged_values_are_left_out_of_plots(tmp_path):
    run_dir = tmp_path / "diverged"
    run_dir.mkdir()
    rows = [{"step": 1, "reward/mean": 1e308, "progress/rollouts": 1e308}, {"step": 2, "reward/mean": -1e308},
            {"step": 3, "reward/mean": 0.5, "progress/rollouts": 4}, {"step": 4, "loss/distill": 1e99}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = [load_run(run_dir)]
    for key, axis in (("reward/mean", "step"), ("reward/mean", "rollouts"), ("loss/distill", "step")):
        assert Image.open(io.BytesIO(metric_png(runs, key, axis))).size == (480, 300)
    page = write_report([run_dir]).read_text()
    assert "plot-reward-mean-step" in page and "plot-loss-distill-step" in page


def test_unusual_run_names_do_not_break_plots(tmp_path):
    run = make_run(tmp_path / "r", name="_$x^2$ {bad} \\frac ünï")
    page = write_report([run]).read_text()
    assert "plot-reward-mean-step" in page


# ------------------------------------------------------------------------------------------ page
def test_single_run_report(tmp_path):
    run = make_run(tmp_path / "resd-run", algorithm="resd", steps=6)
    page_path = write_report([run])
    page = page_path.read_text()
    assert page_path == run / "report" / "index.html"
    for section in ("runs", "curves", "validation", "playbook", "eval", "samples"):
        assert f'<section id="{section}">' in page
    assert "<title>Run report: resd-run</title>" in page and "algorithm: resd" in page and "model: tiny" in page
    # no network: nothing is loaded from elsewhere
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page) and "<script" not in page and "<link" not in page

    keys = ["reward-mean", "acc-mean", "loss-distill", "self-distillation-reprompt-sample-fraction",
            "response-length-mean", "playbook-size", "actor-grad-norm", "val-task-mean-4", "val-task-best-4",
            "val-pass-1", "val-response-length-mean"]
    expected = {f"plot-{k}-{axis}" for k in keys for axis in ("step", "rollouts", "time")}
    assert img_ids(page) == expected  # loss/pg is absent: no plot; val/prompts is bookkeeping
    plot_files = sorted((page_path.parent / "plots").glob("*.png"))
    assert len(plot_files) == len(expected)
    for path in plot_files:
        assert png_ok(path) == (480, 300)
    # the main validation curves are open, the rest sits in the collapsed block
    assert page.index("plot-val-pass-1-step") < page.index("all validation metrics (1 more)") < page.index(
        "plot-val-response-length-mean-step")

    # playbook: default steps 1,2,3,5 and the last (6), each diffed against the previous shown one
    shown = re.findall(r'id="playbook-0-step-(\d+)"', page)
    assert shown == ["1", "2", "3", "5", "6"]
    last = page[page.index('id="playbook-0-step-6"'):page.index('<section id="eval">')]
    assert '<div class="add">+ [err-00006]' in last and '<div class="del">&minus; [err-00004]' in last
    assert "helpful=<mark>4&rarr;5</mark>" in last and "+1 added" in last and "&minus;1 removed" in last
    assert 'id="playbook-0-step-6" open' in page

    # evaluations, best checkpoint, samples with their fields
    assert '<tr class="best"><td>step 6</td>' in page and "checkpoints/step-000006</code> <span class=\"ok\">present" in page
    assert 'href="../eval/step-000002_samples.jsonl"' in page
    assert "REFLECTION at step 6" in page and "TEACHER CONTEXT step 6" in page
    assert "Wrong: expected 12 &amp; not &quot;13&quot;." in page
    assert page.count('<details class="sample">') == 5 * 2


def test_model_text_is_escaped(tmp_path):
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    run = make_run(tmp_path / "r", algorithm="resd", name="</title><script>x()</script>", response=evil)
    (run / "playbook" / "step-000004.txt").write_text(f"## A\n[a-9] helpful=0 harmful=0 :: {evil}\n")
    with (run / "samples.jsonl").open("a") as f:
        f.write(json.dumps({"step": 4, "example_id": "<b>id</b>", "response": "\ud800 lone surrogate", "score": 0,
                            "feedback": None, "custom": "<i>x</i>"}) + "\n")
    page = write_report([run]).read_text()
    assert "<script" not in page and "<img src=x" not in page and "<b>id" not in page and "<i>x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    assert "&lt;/title&gt;&lt;script&gt;x()&lt;/script&gt;" in page
    assert "? lone surrogate" in page
    assert esc('a"b\'c&\x00') == "a&quot;b&#x27;c&amp;"


def test_sample_block_fields_and_score_colours():
    block = sample_html({"step": 3, "example_id": "ex-7", "prompt": "P?", "response": "R!", "score": 0.5, "acc": 0,
                         "feedback": "", "reflection": None, "teacher_prompt": "T", "sd_mask": False, "note": "n1",
                         "nested": {"skip": 1}})
    assert block.startswith('<details class="sample">') and "example <b>ex-7</b>" in block
    assert 'score <span class="part">0.5</span>' in block and "not self-distilled" in block
    assert '<div class="field">prompt</div><pre>P?</pre>' in block and '<div class="field">response</div><pre>R!</pre>' in block
    assert "feedback" not in block and "reflection" not in block  # empty fields are left out
    assert "note=n1" in block and "skip" not in block and "teacher prompt</summary>" in block
    assert 'score <span class="ok">1</span>' in sample_html({"score": 1.0})
    assert 'score <span class="bad">0</span>' in sample_html({"score": 0})
    assert 'score <span class="muted">x</span>' in sample_html({"score": "x"})


def test_comparison_of_two_runs(tmp_path):
    sdpo = make_run(tmp_path / "sdpo", algorithm="sdpo", name="SDPO")
    resd = make_run(tmp_path / "resd", algorithm="resd", name="RESD", steps=6)
    out = tmp_path / "cmp" / "page.html"
    page = write_report([sdpo, resd], out).read_text()
    assert "<title>Comparison: SDPO vs RESD</title>" in page and "algorithm: resd, sdpo" in page
    assert config_differences([load_run(sdpo), load_run(resd)]) == [("algorithm", ["sdpo", "resd"]), ("train.steps", [4, 6])]
    assert "<h3>Configuration differences</h3>" in page and "<tr><td>train.steps</td><td>4</td><td>6</td></tr>" in page
    assert page.count('<div class="card"') == 2
    assert "plot-playbook-size-step" in page  # logged by one run only
    assert (out.parent / "plots" / "reward-mean__time.png").is_file()
    playbook = page[page.index('<section id="playbook">'):page.index('<section id="eval">')]
    assert "SDPO</h3><p class=\"muted\">no playbook snapshots" in playbook and 'id="playbook-1-step-6"' in playbook


def test_default_output_of_a_comparison(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = make_run(tmp_path / "a", steps=2), make_run(tmp_path / "b", steps=2)
    assert write_report([a, b]) == Path("report-compare") / "index.html"
    assert (tmp_path / "report-compare" / "plots" / "reward-mean__step.png").is_file()


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="resd")
    add_report_parser(parser.add_subparsers())
    return parser.parse_args(argv)


def test_cli_steps_and_metrics(tmp_path, capsys):
    run = make_run(tmp_path / "r", algorithm="resd", steps=6)
    out = tmp_path / "o.html"
    args = _parse(["report", str(run), "--out", str(out), "--steps", "2,6,40", "--metrics", "reward/*,val/pass@*",
                   "--samples-per-step", "1"])
    assert args.func(args) == 0 and str(out) in capsys.readouterr().out
    page = out.read_text()
    assert img_ids(page) == {f"plot-{k}-{a}" for k in ("reward-mean", "val-pass-1") for a in ("step", "rollouts", "time")}
    assert re.findall(r'id="playbook-0-step-(\d+)"', page) == ["2", "6"]
    assert "no snapshot at step(s) 40" in page
    assert page.count('<details class="sample">') == 2 and "(1 more not shown)" in page
    with pytest.raises(SystemExit):
        _parse(["report", str(run), "--steps", "a,b"])


def test_the_command_line_part_does_not_load_matplotlib():
    code = "import sys, resd.report; assert 'matplotlib' not in sys.modules; resd.report.write_report; " \
           "assert 'matplotlib' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_choose_metrics_defaults(tmp_path):
    runs = [load_run(make_run(tmp_path / "r", steps=2))]
    train, main, more = choose_metrics(runs)
    assert train == ["reward/mean", "acc/mean", "loss/distill", "self_distillation/reprompt_sample_fraction",
                     "response_length/mean", "actor/grad_norm"]
    assert main == ["val/task/mean@4", "val/task/best@4", "val/pass@1"] and more == ["val/response_length/mean"]
    assert choose_metrics(runs, ["val/prompts", "acc/*", "nothing*"]) == (["acc/mean"], ["val/prompts"], [])


def test_per_example_playbooks(tmp_path):
    run = make_run(tmp_path / "r", steps=2)
    (run / "playbook").mkdir()
    (run / "playbook" / "step-000001.json").write_text(json.dumps({"ex-1": "## A\n[a-1] helpful=0 harmful=0 :: one"}))
    (run / "playbook" / "step-000002.json").write_text(json.dumps({
        "ex-1": "## A\n[a-1] helpful=1 harmful=0 :: one", "ex-2": "## A\n[a-7] helpful=0 harmful=0 :: two"}))
    page = write_report([run]).read_text()
    step2 = page[page.index('id="playbook-0-step-2"'):]
    assert "<h4>example ex-1</h4>" in step2 and "helpful=<mark>0&rarr;1</mark>" in step2
    assert '<div class="add">+ [a-7] helpful=0 harmful=0 :: two</div>' in step2


def test_fuzzed_run_directories_never_crash(tmp_path):
    rng = random.Random(1)
    base = make_run(tmp_path / "base", algorithm="resd", steps=3)
    files = ["metrics.jsonl", "samples.jsonl", "config.yaml", "best.json", "playbook/step-000002.txt",
             "eval/step-000002_summary.json"]
    originals = {name: (base / name).read_bytes() for name in files}
    for _ in range(150):
        for name in files:
            data = bytearray(originals[name])
            for _ in range(rng.randint(0, 6)):
                roll = rng.random()
                pos = rng.randrange(len(data) + 1)
                if roll < 0.4 and data:
                    del data[pos: pos + rng.randint(1, 40)]
                elif roll < 0.8:
                    data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
                else:
                    data[pos:pos] = rng.choice([b'{"step": 1e999}', b'{"step": 2, "score": "x", "response": [1]}',
                                                b"\xff\xfe", b'{"step": -1}', b"null", b'{"step": 2.0, "example_id": {}}'])
            (base / name).write_bytes(bytes(data))
        run = load_run(base)
        assign_labels([run])
        train, main, more = choose_metrics([run])
        page = render_page([run], [], train, main, more, tmp_path, None, 4)
        assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>\n")
    assert write_report([base]).is_file()


@pytest.mark.slow
def test_report_of_a_real_training_run(tiny_config, tmp_path):
    """One real SDPO step of the tiny model with validation, through the trainer."""
    from resd.trainer import build_trainer

    config = tiny_config("train.steps=1", "rollout.n=2", "rollout.max_new_tokens=4", "eval.every_steps=1",
                         "eval.k=2", "data.val_limit=2", "logging.samples_per_step=2")
    run_dir = build_trainer(config).train()
    page = write_report([run_dir]).read_text()
    ids = img_ids(page)
    assert {"plot-reward-mean-step", "plot-loss-distill-rollouts", "plot-val-task-mean-2-time",
            "plot-val-pass-1-step"} <= ids
    assert '<tr class="best"><td>step 1</td>' in page and 'class="ok">present' in page
    assert page.count('<details class="sample">') == 2


def test_seed_band_png_draws_shared_and_per_seed_x():
    from resd.report.plots import seed_band_png

    values = [[0.1, 0.2, 0.3], [0.1, 0.3, 0.2]]
    shared = seed_band_png({"sdpo": ([0, 64, 128], values)}, "rollouts", "acc", "mean@2")
    per_seed = seed_band_png({"sdpo": ([[0, 1, 2], [0, 1.5, 2.5]], values), "grpo": ([0, 1, 2], [[0.1, 0.1, 0.2]])},
                             "minutes", "acc")
    for png in (shared, per_seed):
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # a reference line (drawn and named in the legend) changes the picture
    with_line = seed_band_png({"sdpo": ([0, 64, 128], values)}, "rollouts", "acc", "mean@2",
                              references={"trivial answer": 0.25})
    assert with_line[:8] == b"\x89PNG\r\n\x1a\n" and with_line != shared
