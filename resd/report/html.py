"""The report page: one self-contained HTML string (inline CSS, plots as base64 PNG, no script).

Everything that comes from a run (model output, feedback, config values, run names) goes through
:func:`esc`. The x-axis selector (step / rollouts / wall-clock) is three radio buttons and CSS
``:checked`` rules, so it works without JavaScript.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from resd.evaluation.metrics import alias_note, value_aliases
from resd.report.loading import PlaybookSnapshot, RunData
from resd.report.playbook_diff import DiffLine, PlaybookDiff, diff_playbooks
from resd.report.plots import X_AXES, metric_sort_key, run_color, slug

#: longest text of one sample field shown in the page (a run may log very long responses)
MAX_FIELD_CHARS = 20_000
#: most per-example playbooks shown per snapshot
MAX_PLAYBOOK_KEYS = 30

#: config entries shown in each run's header card (dotted paths; absent ones skipped)
KEY_CONFIG: tuple[str, ...] = (
    "algorithm", "model.name", "model.precision", "data.env", "seed", "train.steps", "train.batch_size",
    "train.lr", "rollout.n", "rollout.temperature", "rollout.max_new_tokens", "loss.pg_weight", "loss.alpha",
    "teacher.kind", "teacher.update_rate", "stream.inner_steps", "stream.num_batches", "resd.playbook_mode",
    "eval.k", "eval.best_metric",
)


@dataclasses.dataclass
class Plot:
    """One rendered curve: ``file`` is the PNG's path relative to the page."""

    key: str
    x_axis: str
    png: bytes
    file: str

    @property
    def element_id(self) -> str:
        return f"plot-{slug(self.key)}-{self.x_axis}"


def esc(value: Any) -> str:
    """HTML-escaped text (quotes included), with NUL characters dropped."""
    return html.escape(str(value), quote=True).replace("\x00", "")


def fmt(value: Any) -> str:
    """A compact number: integers as such, others with 4 significant digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return esc(value)
    if float(value).is_integer() and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.4g}"


def _clip(text: str) -> str:
    if len(text) <= MAX_FIELD_CHARS:
        return text
    return text[:MAX_FIELD_CHARS] + f"\n... ({len(text) - MAX_FIELD_CHARS} more characters not shown)"


def _get(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def pick_steps(available: Iterable[int], wanted: list[int] | None = None, count: int = 4) -> list[int]:
    """Steps to show: the ``wanted`` ones that exist, else ``count`` evenly spaced ones and the last."""
    steps = sorted(set(available))
    if not steps:
        return []
    if wanted:
        return sorted(set(wanted) & set(steps))
    if len(steps) <= count + 1:
        return steps
    picked = {steps[round(i * (len(steps) - 1) / count)] for i in range(count)}
    picked.add(steps[-1])
    return sorted(picked)


# ---------------------------------------------------------------------------------------- styles
CSS = """
*{box-sizing:border-box}
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;background:#f5f6f8;color:#1d2330;font-size:14px}
main{max-width:1400px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:24px;margin:8px 0 4px}h2{font-size:19px;margin:0 0 12px;border-bottom:2px solid #dde1e8;padding-bottom:4px}
h3{font-size:16px;margin:16px 0 8px}h4{font-size:14px;margin:12px 0 6px}
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:16px 20px;margin:16px 0}
.sub{color:#5b6475;font-size:13px}
nav a{margin-right:14px;color:#2456a6;text-decoration:none;font-size:13px}
.cards{display:grid;gap:14px}
.tiles{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0 10px}
.tile{background:#f7f8fa;border:1px solid #eef0f3;border-radius:6px;padding:6px 12px;min-width:120px}
.tile .k{color:#5b6475;font-size:12px}.tile .v{font-size:17px;font-weight:600;margin-top:2px}
.kv{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:2px 16px;font-size:13px;margin-bottom:6px}
.kv .k{color:#5b6475;font-weight:600}
.card{border:1px solid #dde1e8;border-radius:6px;padding:10px 14px;border-top:5px solid var(--c)}
.card h3{margin:4px 0 8px}
table{border-collapse:collapse;font-size:13px}
td,th{padding:3px 10px 3px 0;text-align:left;vertical-align:top}
th{color:#5b6475;font-weight:600}
table.num td,table.num th{text-align:right;padding:3px 8px;border-bottom:1px solid #eef0f3;white-space:nowrap}
table.num th{white-space:normal;min-width:64px;vertical-align:bottom}
table.num tr.best td{background:#e6f4ea;font-weight:600}
.scroll{overflow-x:auto}
table.diff td,table.diff th{border-bottom:1px solid #eef0f3;padding:3px 14px 3px 0}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;background:var(--c);margin-right:6px;vertical-align:-1px}
.warn{color:#8a4b00;background:#fff4e0;border-radius:4px;padding:4px 8px;margin:4px 0;font-size:13px}
.xsel-input{position:absolute;opacity:0;pointer-events:none}
.xsel{margin:12px 0 0}
.xsel label{display:inline-block;padding:5px 14px;border:1px solid #c5ccd8;background:#fff;cursor:pointer;margin-right:-1px}
.xsel label:first-of-type{border-radius:5px 0 0 5px}.xsel label:last-of-type{border-radius:0 5px 5px 0}
#x-step:checked~.xsel label[for=x-step],#x-rollouts:checked~.xsel label[for=x-rollouts],#x-time:checked~.xsel label[for=x-time]{background:#2456a6;color:#fff;border-color:#2456a6}
.plots{display:none;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:10px}
#x-step:checked~section .set-step,#x-rollouts:checked~section .set-rollouts,#x-time:checked~section .set-time{display:grid}
.plots img{width:100%;height:auto;border:1px solid #eef0f3;border-radius:4px;display:block}
.pb{border:1px solid #dde1e8;border-radius:6px;margin:8px 0;padding:4px 10px}
.pb>summary{cursor:pointer;font-weight:600;padding:4px 0}
.pbtext{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px;line-height:1.5;white-space:pre-wrap;word-break:break-word}
.pbtext div{padding:1px 6px;border-left:4px solid transparent}
.pbtext .h{font-weight:700;color:#2456a6;margin-top:6px}
.pbtext .add{background:#e6f4ea;border-left-color:#1e8e3e}
.pbtext .del{background:#fce8e6;border-left-color:#d93025;text-decoration:line-through;color:#7a1c14}
.pbtext .edit{background:#fef7e0;border-left-color:#f9ab00}
.pbtext .cnt{border-left-color:#f9ab00}
.pbtext mark{background:#fde293;border-radius:3px;padding:0 2px}
.pbtext .was{color:#6b7280;font-size:11.5px;padding-left:22px}
.badge{display:inline-block;border-radius:10px;padding:0 8px;margin-left:6px;font-size:12px;font-weight:600}
.b-add{background:#e6f4ea;color:#137333}.b-del{background:#fce8e6;color:#a50e0e}.b-chg{background:#fef7e0;color:#8a5a00}
.sample{border:1px solid #dde1e8;border-radius:6px;margin:6px 0;padding:4px 10px}
.sample>summary{cursor:pointer;padding:3px 0}
.sample pre,.config pre{background:#f7f8fa;border:1px solid #eef0f3;border-radius:4px;padding:8px;white-space:pre-wrap;word-break:break-word;font-size:12.5px;max-height:480px;overflow:auto;margin:4px 0 10px}
.ok{color:#137333;font-weight:600}.bad{color:#a50e0e;font-weight:600}.part{color:#b06000;font-weight:600}
.field{font-weight:600;color:#5b6475;font-size:12px;text-transform:uppercase;letter-spacing:.03em}
.muted{color:#8a93a3}
"""


# ---------------------------------------------------------------------------------------- header
def _run_status(run: RunData) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    train_steps = [step for step, row in run.metrics.items()
                   if any(not k.startswith(("val/", "progress/")) for k in row)]
    if train_steps:
        rows.append(("last training step", fmt(max(train_steps))))
    last = run.metrics[max(run.metrics)] if run.metrics else {}
    if "progress/rollouts" in last:
        rows.append(("rollouts", fmt(last["progress/rollouts"])))
    if "progress/elapsed_s" in last:
        rows.append(("wall-clock", _duration(last["progress/elapsed_s"])))
    for key in ("reward/mean", "acc/mean"):
        values = run.series(key)[1]
        if values:
            rows.append((f"final {key}", fmt(values[-1])))
    if run.best:
        rows.append(("best validation", f"step {fmt(run.best.get('step'))}: {esc(run.best.get('metric', '?'))} = "
                     f"{fmt(run.best.get('value', '?'))}"))
    return rows


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def run_card(run: RunData, index: int) -> str:
    """A run's header card: headline numbers, the key config entries, warnings and the full config."""
    tiles = "".join(f'<div class="tile"><div class="k">{esc(k)}</div><div class="v">{v}</div></div>'
                    for k, v in _run_status(run))
    items = [(key, _get(run.config, key)) for key in KEY_CONFIG]
    config = "".join(f"<div><span class=\"k\">{esc(k)}</span> {esc(v)}</div>" for k, v in items if v is not None)
    warnings = "".join(f'<div class="warn">{esc(w)}</div>' for w in run.warnings)
    full = ""
    if run.config:
        dumped = yaml.safe_dump(run.config, sort_keys=False, allow_unicode=True)
        full = f'<details class="config"><summary>full config</summary><pre>{esc(dumped)}</pre></details>'
    return (
        f'<div class="card" style="--c:{run_color(index)}"><h3><span class="swatch"></span>{esc(run.label or run.name)}'
        f' <span class="sub">{esc(run.path)}</span></h3>{warnings}'
        f'<div class="tiles">{tiles}</div><div class="kv">{config}</div>{full}</div>'
    )


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_differences(runs: list[RunData], limit: int = 40) -> list[tuple[str, list[Any]]]:
    """Config entries (dotted) whose values differ between runs, with each run's value (None: absent);
    the run name and output directory are left out."""
    flat = [_flatten(r.config) for r in runs]
    keys = sorted({k for f in flat for k in f} - {"name", "logging.run_dir"})
    differing = [(k, [f.get(k) for f in flat]) for k in keys]
    return [(k, values) for k, values in differing if any(v != values[0] for v in values)][:limit]


def differences_table(runs: list[RunData]) -> str:
    rows = config_differences(runs)
    if not rows:
        return '<p class="sub">The runs have the same configuration.</p>'
    head = "<tr><th>config entry</th>" + "".join(
        f'<th style="--c:{run_color(i)}"><span class="swatch"></span>{esc(r.label or r.name)}</th>'
        for i, r in enumerate(runs)) + "</tr>"
    body = "".join(f"<tr><td>{esc(k)}</td>" + "".join(f"<td>{esc(v)}</td>" for v in values) + "</tr>"
                   for k, values in rows)
    return f'<h3>Configuration differences</h3><div class="scroll"><table class="diff">{head}{body}</table></div>'


# ---------------------------------------------------------------------------------------- curves
def _plot_sets(plots: list[Plot], keys: list[str]) -> str:
    out = []
    for axis in X_AXES:
        figures = []
        for key in keys:
            plot = next((p for p in plots if p.key == key and p.x_axis == axis), None)
            if plot is None:
                continue
            data = base64.b64encode(plot.png).decode("ascii")
            figures.append(f'<img id="{plot.element_id}" class="plot" src="data:image/png;base64,{data}" '
                           f'alt="{esc(key)} against {esc(X_AXES[axis][1])}" title="{esc(plot.file)}">')
        body = "".join(figures) or '<p class="muted">no data for this axis</p>'
        out.append(f'<div class="plots set-{axis}">{body}</div>')
    return "".join(out)


def curves_block(plots: list[Plot], train_keys: list[str], val_main: list[str], val_more: list[str]) -> str:
    """The x-axis selector and the training and validation curve sections."""
    radios = "".join(
        f'<input class="xsel-input" type="radio" name="xaxis" id="x-{axis}"{" checked" if axis == "step" else ""}>'
        for axis in X_AXES
    )
    labels = "".join(f'<label for="x-{axis}">{esc(label)}</label>' for axis, (_, label) in X_AXES.items())
    selector = f'<div class="xsel"><span class="sub">x-axis:&nbsp;</span>{labels}</div>'
    train = _plot_sets(plots, train_keys) if train_keys else '<p class="muted">no training metrics logged</p>'
    if val_main or val_more:
        val = _plot_sets(plots, val_main)
        if val_more:
            val += (f"<details><summary>all validation metrics ({len(val_more)} more)</summary>"
                    f"{_plot_sets(plots, val_more)}</details>")
    else:
        val = '<p class="muted">no validation logged</p>'
    train = f'<section id="curves"><h2>Training curves</h2>{train}</section>'
    val = f'<section id="validation"><h2>Validation curves</h2>{val}</section>'
    return f'<div id="curve-sets">{radios}{selector}{train}{val}</div>'


# ---------------------------------------------------------------------------------------- playbook
def _bullet_line(line: DiffLine) -> str:
    b, old = line.bullet, line.old
    if line.kind == "counters" and b is not None and old is not None:
        helpful = f"<mark>{old.helpful}&rarr;{b.helpful}</mark>" if old.helpful != b.helpful else str(b.helpful)
        harmful = f"<mark>{old.harmful}&rarr;{b.harmful}</mark>" if old.harmful != b.harmful else str(b.harmful)
        return (f'<div class="cnt">[{esc(b.id)}] helpful={helpful} harmful={harmful} :: {esc(b.content)}</div>')
    if line.kind == "edited" and old is not None:
        return f'<div class="edit">~ {esc(line.text)}</div><div class="was">was: {esc(old.content)}</div>'
    css = {"added": "add", "removed": "del", "header": "h"}.get(line.kind, "")
    mark = {"added": "+ ", "removed": "&minus; "}.get(line.kind, "")
    return f'<div class="{css}">{mark}{esc(line.text)}</div>'


def _badges(diff: PlaybookDiff, baseline: bool) -> str:
    parts = [f'<span class="badge" style="background:#eef0f3">{diff.bullets} bullets</span>']
    if baseline:
        return parts[0] + '<span class="sub"> &middot; first shown step (no comparison)</span>'
    if diff.added:
        parts.append(f'<span class="badge b-add">+{diff.added} added</span>')
    if diff.removed:
        parts.append(f'<span class="badge b-del">&minus;{diff.removed} removed</span>')
    if diff.edited:
        parts.append(f'<span class="badge b-chg">{diff.edited} edited</span>')
    if diff.counters:
        parts.append(f'<span class="badge b-chg">{diff.counters} counter{"s" if diff.counters > 1 else ""} changed</span>')
    if len(parts) == 1:
        parts.append('<span class="sub"> no change</span>')
    return "".join(parts)


def _diff_html(diff: PlaybookDiff) -> str:
    """The diff's lines; headers of sections with nothing under them are left out."""
    out, header = [], None
    for line in diff.lines:
        if line.kind == "header":
            header = line
            continue
        if header is not None:
            out.append(_bullet_line(header))
            header = None
        out.append(_bullet_line(line))
    return "".join(out) or '<div class="muted">(empty playbook: no bullets yet)</div>'


def playbook_html(run: RunData, wanted: list[int] | None, run_index: int) -> str:
    """The playbook at the chosen steps, each diffed against the previous shown step."""
    by_step = {p.step: p for p in run.playbooks}
    steps = pick_steps(by_step, wanted)
    if not steps:
        note = ("no playbook snapshots" if not by_step
                else f"none of the requested steps exist (steps {min(by_step)}..{max(by_step)})")
        return f'<p class="muted">{esc(note)}</p>'
    blocks = []
    previous: PlaybookSnapshot | None = None
    missing = sorted(set(wanted or []) - set(by_step))
    if missing:
        blocks.append(f'<div class="warn">no snapshot at step(s) {esc(", ".join(map(str, missing)))}</div>')
    for step in steps:
        snap = by_step[step]
        baseline = previous is None
        keys = sorted(snap.texts)
        inner, total = [], PlaybookDiff([])
        for key in keys[:MAX_PLAYBOOK_KEYS]:
            old = None if previous is None else previous.texts.get(key, "")
            diff = diff_playbooks(old, snap.texts[key])
            for field in ("added", "removed", "edited", "counters", "bullets"):
                setattr(total, field, getattr(total, field) + getattr(diff, field))
            title = f"<h4>example {esc(key)}</h4>" if snap.per_example else ""
            inner.append(f'{title}<div class="pbtext">{_diff_html(diff)}</div>')
        if len(keys) > MAX_PLAYBOOK_KEYS:
            inner.append(f'<p class="muted">{len(keys) - MAX_PLAYBOOK_KEYS} more per-example playbooks not shown</p>')
        if not keys:
            inner.append('<p class="muted">(no playbooks)</p>')
        is_last = step == steps[-1]
        blocks.append(
            f'<details class="pb" id="playbook-{run_index}-step-{step}"{" open" if is_last else ""}>'
            f"<summary>step {step}{_badges(total, baseline)}</summary>{''.join(inner)}</details>"
        )
        previous = snap
    return "".join(blocks)


# ---------------------------------------------------------------------------------------- samples
_SAMPLE_FIELDS = ("prompt", "response", "feedback", "reflection")
_SAMPLE_KNOWN = {"step", "example_id", "score", "acc", "sd_mask", "teacher_prompt", *_SAMPLE_FIELDS}


def _pre(label: str, value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return f'<div class="field">{esc(label)}</div><pre>{esc(_clip(text))}</pre>'


def sample_html(sample: dict[str, Any]) -> str:
    score, acc = sample.get("score"), sample.get("acc")
    numeric = isinstance(score, (int, float)) and not isinstance(score, bool)
    css = "muted" if not numeric else "ok" if score >= 1.0 else "part" if score > 0 else "bad"
    summary = [f"example <b>{esc(sample.get('example_id', '?'))}</b>",
               f'score <span class="{css}">{fmt(score) if score is not None else "?"}</span>']
    if acc is not None:
        summary.append(f"acc {fmt(acc)}")
    if "sd_mask" in sample:
        summary.append("self-distilled" if sample.get("sd_mask") else '<span class="muted">not self-distilled</span>')
    parts = [_pre(key, sample[key]) for key in _SAMPLE_FIELDS if sample.get(key) not in (None, "")]
    extra = {k: v for k, v in sample.items() if k not in _SAMPLE_KNOWN and isinstance(v, (str, int, float, bool))}
    if extra:
        pairs = " &middot; ".join(f"{esc(k)}={esc(v)}" for k, v in sorted(extra.items()))
        parts.append(f'<div class="sub">{pairs}</div>')
    if sample.get("teacher_prompt"):
        teacher = _pre("", sample["teacher_prompt"])
        parts.append(f'<details><summary class="field">teacher prompt</summary>{teacher}</details>')
    return f'<details class="sample"><summary>{" &middot; ".join(summary)}</summary>{"".join(parts)}</details>'


def samples_html(run: RunData, wanted: list[int] | None, per_step: int) -> str:
    by_step: dict[int, list[dict[str, Any]]] = {}
    for sample in run.samples:
        by_step.setdefault(int(sample["step"]), []).append(sample)
    steps = pick_steps(by_step, wanted)
    if not steps:
        return '<p class="muted">no sample rollouts logged' + (" at the requested steps" if by_step else "") + "</p>"
    blocks = []
    for step in steps:
        shown = by_step[step][:per_step]
        more = len(by_step[step]) - len(shown)
        note = f' <span class="sub">({more} more not shown)</span>' if more > 0 else ""
        blocks.append(f"<h4>step {step}{note}</h4>" + "".join(sample_html(s) for s in shown))
    return "".join(blocks)


# ---------------------------------------------------------------------------------------- eval
def _eval_columns(evals) -> list[str]:
    return sorted({k for e in evals for k in e.summary}, key=metric_sort_key)


def eval_html(run: RunData, page_dir: Path) -> str:
    parts = []
    if run.best:
        step = run.best.get("step")
        present = isinstance(step, int) and step in run.checkpoints
        where = f"checkpoints/step-{step:06d}" if isinstance(step, int) else "?"
        state = ('<span class="ok">present</span>' if present else '<span class="bad">missing</span>')
        parts.append(f'<p id="best-{esc(slug(run.label or run.name))}"><b>Best checkpoint:</b> step {fmt(step)} '
                     f"({esc(run.best.get('metric', '?'))} = {fmt(run.best.get('value', '?'))}) &rarr; "
                     f"<code>{esc(where)}</code> {state}</p>")
    else:
        parts.append('<p class="muted">no best.json (no validation ran)</p>')
    if run.checkpoints:
        parts.append(f'<p class="sub">checkpoints: {esc(", ".join(str(s) for s in run.checkpoints))}</p>')
    if not run.evals:
        parts.append('<p class="muted">no eval summaries</p>')
        return "".join(parts)
    # a family with the same values as another in every row (task and score, test_case and acc in most
    # environments) is one quantity under two names: shown once
    aliases = value_aliases([e.summary for e in run.evals])
    columns = [c for c in _eval_columns(run.evals) if c.split("/", 1)[0] not in aliases or "/" not in c]
    head = ("<tr><th>evaluation</th>" + "".join(f"<th>{esc(c).replace('/', '/<wbr>')}</th>" for c in columns)
            + "<th>samples</th></tr>")
    rows = []
    best_step = run.best.get("step") if run.best else None
    for e in run.evals:
        css = ' class="best"' if e.step is not None and e.step == best_step else ""
        cells = "".join(f"<td>{fmt(e.summary[c]) if c in e.summary else ''}</td>" for c in columns)
        link = ""
        if e.samples_path is not None:
            rel = os.path.relpath(e.samples_path, page_dir)
            link = f'<a href="{esc(Path(rel).as_posix())}">jsonl</a>'
        label = f"step {e.step}" if e.step is not None else e.name
        rows.append(f"<tr{css}><td>{esc(label)}</td>{cells}<td>{link}</td></tr>")
    parts.append(f'<div class="scroll"><table class="num">{head}{"".join(rows)}</table></div>')
    if aliases:
        parts.append(f'<p class="sub">same values, shown once: {esc(alias_note(aliases))}</p>')
    return "".join(parts)


# ---------------------------------------------------------------------------------------- page
def _per_run(runs: list[RunData], render) -> str:
    if len(runs) == 1:
        return render(runs[0], 0)
    return "".join(
        f'<h3 style="--c:{run_color(i)}"><span class="swatch"></span>{esc(run.label or run.name)}</h3>{render(run, i)}'
        for i, run in enumerate(runs)
    )


def render_page(runs: list[RunData], plots: list[Plot], train_keys: list[str], val_main: list[str],
                val_more: list[str], page_dir: Path, steps: list[int] | None = None, samples_per_step: int = 4) -> str:
    """The whole HTML document."""
    if len(runs) == 1:
        title = f"Run report: {runs[0].label or runs[0].name}"
    else:
        title = "Comparison: " + " vs ".join(r.label or r.name for r in runs)
    algorithms = sorted({str(r.config.get("algorithm")) for r in runs if r.config.get("algorithm")})
    models = sorted({str(_get(r.config, "model.name")) for r in runs if _get(r.config, "model.name")})
    envs = sorted({str(_get(r.config, "data.env")) for r in runs if _get(r.config, "data.env")})
    subtitle = " &middot; ".join(filter(None, [
        f"algorithm: {esc(', '.join(algorithms))}" if algorithms else "",
        f"model: {esc(', '.join(models))}" if models else "",
        f"environment: {esc(', '.join(envs))}" if envs else "",
        f"generated {datetime.now():%Y-%m-%d %H:%M} by <code>resd report</code>",
    ]))
    nav = "".join(f'<a href="#{i}">{t}</a>' for i, t in (
        ("runs", "runs"), ("curves", "training curves"), ("validation", "validation curves"),
        ("playbook", "playbook"), ("eval", "evaluations"), ("samples", "sample rollouts")))
    cards = "".join(run_card(r, i) for i, r in enumerate(runs))
    legend = ("Bullets added since the previous shown step in green, removed in red, edited in amber; "
              "changed helpful/harmful counters are marked.")
    playbook = _per_run(runs, lambda r, i: playbook_html(r, steps, i))
    evals = _per_run(runs, lambda r, i: eval_html(r, page_dir))
    samples = _per_run(runs, lambda r, i: samples_html(r, steps, samples_per_step))
    body = (
        f'<header id="header"><h1>{esc(title)}</h1><div class="sub">{subtitle}</div><nav>{nav}</nav></header>'
        f'<section id="runs"><h2>{"Run" if len(runs) == 1 else "Runs"}</h2><div class="cards">{cards}</div>'
        f'{differences_table(runs) if len(runs) > 1 else ""}</section>'
        f"{curves_block(plots, train_keys, val_main, val_more)}"
        f'<section id="playbook"><h2>Playbook</h2><p class="sub">{legend}</p>{playbook}</section>'
        f'<section id="eval"><h2>Evaluations and best checkpoint</h2>{evals}</section>'
        f'<section id="samples"><h2>Sample rollouts</h2>{samples}</section>'
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>{body}</main></body></html>\n"
    )
