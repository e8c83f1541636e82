"""Render a report in headless Chromium (Debian ``chromium`` + ``chromium-driver``) and check what a
reader sees: decoded plot images, the playbook section, a screenshot of real size.

The browser is driven through ChromeDriver's W3C WebDriver HTTP API with the standard library
(no selenium). Run as a script to save a screenshot of a run's report::

    python tests/test_report_browser.py RUN_DIR [RUN_DIR ...] --png docs/report_screenshot.png \
        [--out FILE.html] [--full-page --max-height 4600] [--click 'details.sample > summary']
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
WIDTH = 1400

# Collects, inside the page, what the test asserts on: every plot image with its decoded size,
# which x-axis image set is displayed, the playbook section and its highlighted lines.
PROBE = """
const imgs = Array.from(document.querySelectorAll('img.plot')).map(i => ({
  id: i.id, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
  shown: i.getBoundingClientRect().width > 0}));
const pb = document.querySelector('section#playbook');
return {
  title: document.title,
  imgs: imgs,
  sections: Array.from(document.querySelectorAll('section[id]')).map(s => s.id),
  playbook_text: pb ? pb.innerText : null,
  playbook_visible: pb ? pb.getBoundingClientRect().height > 0 : false,
  added: document.querySelectorAll('#playbook .pbtext .add').length,
  removed: document.querySelectorAll('#playbook .pbtext .del').length,
  scripts: document.querySelectorAll('script').length,
  height: Math.ceil(document.documentElement.scrollHeight),
};
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriver:
    """A minimal W3C WebDriver client for one ChromeDriver session."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.session = ""

    def call(self, method: str, path: str, body: dict | None = None, timeout: float = 30.0):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"webdriver {method} {path}: {e.read()[:500]!r}") from None

    def session_call(self, method: str, path: str, body: dict | None = None):
        return self.call(method, f"/session/{self.session}{path}", body)


@contextlib.contextmanager
def browser(height: int = 2400) -> Iterator[WebDriver]:
    """A headless Chromium session, closed (with its ChromeDriver) on exit."""
    port = _free_port()
    profile = tempfile.mkdtemp(prefix="resd-chromium-")
    driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = WebDriver(port)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if client.call("GET", "/status", timeout=2).get("ready"):
                    break
            except (OSError, RuntimeError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.1)
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars", f"--window-size={WIDTH},{height}", f"--user-data-dir={profile}"]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome",
                                                 "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}}}
        client.session = client.call("POST", "/session", caps, timeout=60)["sessionId"]
        try:
            yield client
        finally:
            client.call("DELETE", f"/session/{client.session}")
    finally:
        driver.terminate()
        try:
            driver.wait(10)
        except subprocess.TimeoutExpired:
            driver.kill()
        shutil.rmtree(profile, ignore_errors=True)


def click(client: WebDriver, css: str) -> None:
    element = client.session_call("POST", "/element", {"using": "css selector", "value": css})
    client.session_call("POST", f"/element/{next(iter(element.values()))}/click", {})


def render(page: Path, png: Path | None = None, full_page: bool = False, max_height: int = 6000,
           clicks: tuple[str, ...] = ()) -> dict:
    """Open ``page`` in headless Chromium, click the ``clicks`` CSS selectors in order, return the
    probe's findings, and save a screenshot to ``png`` (the first 2400 px, or with ``full_page``
    the whole page up to ``max_height``)."""
    with browser() as client:
        client.session_call("POST", "/url", {"url": page.resolve().as_uri()})
        for css in clicks:
            click(client, css)
        found = client.session_call("POST", "/execute/sync", {"script": PROBE, "args": []})
        if png is not None:
            height = min(found["height"], max_height) if full_page else 2400
            # a viewport as tall as the shot: content beyond the viewport (scroll boxes) paints reliably
            client.session_call("POST", "/goog/cdp/execute", {
                "cmd": "Emulation.setDeviceMetricsOverride",
                "params": {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False},
            })
            client.session_call("POST", "/execute/sync", {"script": "window.scrollTo(0, 0);", "args": []})
            shot = client.session_call("POST", "/goog/cdp/execute", {
                "cmd": "Page.captureScreenshot",
                "params": {"format": "png", "clip": {"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1}},
            })
            png.write_bytes(base64.b64decode(shot["data"]))
    return found


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG header; raises ValueError for anything else."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return struct.unpack(">II", data[16:24])


def _synthetic_runs():
    """``make_run`` of test_report.py (imported by path, whatever pytest's import mode)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_report_fixtures", Path(__file__).with_name("test_report.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_run


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless Chromium not installed (apt-get install chromium chromium-driver)",
)


@needs_chromium
def test_report_renders_in_chromium(tmp_path):
    from resd.report import write_report

    make_run = _synthetic_runs()

    run = make_run(tmp_path / "resd-run", algorithm="resd", steps=6)
    page = write_report([run])
    shot = tmp_path / "shot.png"
    found = render(page, shot)

    data = shot.read_bytes()
    assert png_size(data) == (WIDTH, 2400)
    assert len(data) > 50_000  # a blank page compresses to a few kB
    assert found["scripts"] == 0
    assert {"runs", "curves", "validation", "playbook", "eval", "samples"} <= set(found["sections"])
    by_id = {i["id"]: i for i in found["imgs"]}
    for key in ("reward-mean", "acc-mean", "loss-distill", "playbook-size", "val-task-mean-4"):
        for axis in ("step", "rollouts", "time"):
            img = by_id[f"plot-{key}-{axis}"]
            assert img["complete"] and (img["w"], img["h"]) == (480, 300), img
    # the x-axis selector shows the step set only
    assert by_id["plot-reward-mean-step"]["shown"] and not by_id["plot-reward-mean-rollouts"]["shown"]
    assert found["playbook_visible"]
    assert "step 6" in found["playbook_text"] and "Check the units" in found["playbook_text"]
    assert found["added"] > 0 and found["removed"] > 0


@needs_chromium
def test_x_axis_selector_works_without_javascript(tmp_path):
    from resd.report import write_report

    make_run = _synthetic_runs()

    page = write_report([make_run(tmp_path / "run", steps=4)])
    found = render(page, clicks=("label[for=x-time]",))
    shown = {i["id"] for i in found["imgs"] if i["shown"]}
    assert "plot-reward-mean-time" in shown and "plot-val-task-mean-4-time" in shown
    assert not any(i.endswith(("-step", "-rollouts")) for i in shown)


@needs_chromium
def test_script_in_model_output_is_not_run(tmp_path):
    from resd.report import write_report

    make_run = _synthetic_runs()

    run = make_run(tmp_path / "run", steps=2, response="<script>document.title='pwned'</script><img src=x onerror=alert(1)>")
    found = render(write_report([run]))
    assert found["scripts"] == 0
    assert found["title"].startswith("Run report")


def main(argv: list[str]) -> int:
    import argparse

    from resd.report import write_report

    parser = argparse.ArgumentParser(description="write a report and save its screenshot")
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--png", required=True)
    parser.add_argument("--out", help="HTML file (default: the report's default place)")
    parser.add_argument("--full-page", action="store_true")
    parser.add_argument("--max-height", type=int, default=6000)
    parser.add_argument("--click", action="append", default=[], help="CSS selector to click first (repeatable)")
    args = parser.parse_args(argv)
    page = write_report(args.run_dirs, args.out)
    found = render(page, Path(args.png), args.full_page, args.max_height, tuple(args.click))
    print(f"{page}: {len(found['imgs'])} plots, page height {found['height']} px; screenshot {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
