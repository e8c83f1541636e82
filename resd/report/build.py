"""Read run directories, draw the curves, write the HTML page and the PNGs."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

from resd.evaluation.metrics import value_aliases
from resd.report.html import Plot, render_page
from resd.report.loading import RunData, assign_labels, load_run
from resd.report.plots import TRAIN_METRICS, X_AXES, metric_png, metric_sort_key, slug, val_metric_order

#: validation curves shown open (the others sit in a collapsed "all validation metrics" block)
_VAL_MAIN = re.compile(r"^val/(task|test_case)/(mean|best)@\d+$|^val/pass@\d+$")


def choose_metrics(runs: list[RunData], patterns: list[str] | None = None) -> tuple[list[str], list[str], list[str]]:
    """(training keys, main validation keys, other validation keys) to plot, only those with data.

    Without ``patterns``: :data:`TRAIN_METRICS` and every ``val/`` metric. With ``patterns``
    (shell-style, e.g. ``reward/*`` or ``val/pass@*``): every logged metric matching one of them.
    """
    logged = {k for run in runs for row in run.metrics.values() for k in row}
    val_keys = val_metric_order(logged)
    if patterns:
        chosen = [k for k in sorted(logged) if any(fnmatch.fnmatchcase(k, p) for p in patterns)]
        train = [k for k in chosen if not k.startswith("val/")]
        return train, sorted((k for k in chosen if k.startswith("val/")), key=metric_sort_key), []
    train = [k for k in TRAIN_METRICS if k in logged]
    # val/score/* and val/acc/* repeat val/task/* and val/test_case/* in most environments: plotted once
    aliases = value_aliases([row for run in runs for row in run.metrics.values()], prefix="val/")
    val_keys = [k for k in val_keys if not (k.startswith("val/") and k[4:].split("/", 1)[0] in aliases and "/" in k[4:])]
    main = [k for k in val_keys if _VAL_MAIN.match(k)] or val_keys[:6]
    return train, main, [k for k in val_keys if k not in main]


def default_output(run_dirs: list[Path]) -> Path:
    return run_dirs[0] / "report" / "index.html" if len(run_dirs) == 1 else Path("report-compare") / "index.html"


def write_report(run_dirs: list[str | Path], out: str | Path | None = None, *, steps: list[int] | None = None,
                 metrics: list[str] | None = None, samples_per_step: int = 4) -> Path:
    """Write the report of one run (or the comparison of several) and its PNGs; returns the HTML path.

    The PNGs go to ``plots/`` next to the HTML. Missing or damaged run files only produce warnings
    in the page; a path that is not a directory raises :class:`FileNotFoundError`.
    """
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise ValueError("give at least one run directory")
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"{d} is not a directory")
    page = Path(out) if out is not None else default_output(dirs)
    plot_dir = page.parent / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    runs = [load_run(d) for d in dirs]
    assign_labels(runs)
    train, val_main, val_more = choose_metrics(runs, metrics)
    plots: list[Plot] = []
    used: set[str] = set()
    for key in [*train, *val_main, *val_more]:
        for axis in X_AXES:
            png = metric_png(runs, key, axis)
            if png is None:
                continue
            name = f"{slug(key)}__{axis}"
            while name in used:  # two keys with the same slug (e.g. a/b and a-b)
                name += "_"
            used.add(name)
            (plot_dir / f"{name}.png").write_bytes(png)
            plots.append(Plot(key, axis, png, f"plots/{name}.png"))
    text = render_page(runs, plots, train, val_main, val_more, page.parent.resolve(), steps, samples_per_step)
    page.write_bytes(text.encode("utf-8", errors="replace"))  # lone surrogates from model output
    return page
