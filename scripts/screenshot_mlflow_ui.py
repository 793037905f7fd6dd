"""Retake docs/mlflow-ui-screenshot.png: MLflow's runs table with its metric and param columns.

Run from the repository root, with Playwright installed (`make test` installs it) and Debian's
Chromium at /usr/bin/chromium, on a store that holds a few runs (the README's "Experiments"):

    python scripts/screenshot_mlflow_ui.py                        # experiments/mlflow.db
    MLFLOW_TRACKING_URI=sqlite:////tmp/runs.db python scripts/screenshot_mlflow_ui.py --out x.png

It starts `mlflow ui` on the store at 127.0.0.1 (as `make ui` does, on a free port), opens the
experiment's runs in Debian's Chromium through Playwright (never `playwright install`), ticks
the columns below in the table's own "Columns" selector, as a user would, expands the parent
runs (an ensemble's members, a study's trials), checks that every column is on screen and
writes the PNG; then it stops the server. A column the selector does not offer (no run logged
it) is an error, not a quieter screenshot.
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from pipeline import config

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
# (group in the selector, name): what compares runs at a glance.
COLUMNS = [
    ("Metrics", "val_acc"),
    ("Metrics", "val_loss"),
    ("Metrics", "train_seconds"),
    ("Parameters", "model"),
    ("Parameters", "recipe"),
    ("Parameters", "epochs"),
    ("Parameters", "lr"),
    ("Parameters", "batch_size"),
    ("Parameters", "width"),
]
ASSISTANT_SEEN = """
localStorage.setItem("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1", "true");
localStorage.setItem("mlflow.assistant.panelOpen_v1", "false");
"""
HIDE = [("Attributes", "Dataset"), ("Attributes", "Models")]  # empty for these runs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ui(store: str, port: int) -> subprocess.Popen:
    """`mlflow ui` on the store, serving once /health answers (its start takes a while)."""
    mlflow = Path(sys.executable).with_name("mlflow")
    env = os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true"}
    command = [str(mlflow), "ui", "--backend-store-uri", store, "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]  # fmt: skip
    log = tempfile.TemporaryFile()  # not a pipe: its log lines could fill one and stall it
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-2000:]
            sys.exit(f"mlflow ui exited ({server.returncode}):\n{tail}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            time.sleep(1)
    server.terminate()
    sys.exit("mlflow ui did not answer /health within 180 s")


def experiment_id(port: int, name: str) -> str:
    """The id of the experiment every pipeline run goes to, from the server's REST API."""
    import json
    from urllib.parse import quote

    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name"
    url += f"?experiment_name={quote(name)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.load(response)["experiment"]["experiment_id"]
    except urllib.error.HTTPError as error:
        if error.code != 404:
            raise
    sys.exit(f"the store holds no experiment {name!r}: track a few runs first (README)")


def toggle(dialog, group: str, name: str) -> None:
    """Click `name`'s checkbox under `group` (a metric and a param may share a name, e.g. lr).

    The selector's tree filters as one types and re-renders a moment later: look again until
    the node is there, for up to 15 s."""
    dialog.get_by_placeholder("Search columns").fill(name)
    for _ in range(30):
        dialog.page.wait_for_timeout(500)
        current = None
        for node in dialog.locator(".du-bois-light-tree-treenode").all():
            title = node.locator(".du-bois-light-tree-title")
            if not title.count():
                continue
            text = title.inner_text().strip()
            if not node.locator(".du-bois-light-tree-indent-unit").count():  # a group heading
                current = text.split(" (")[0]
                closed = node.locator(".du-bois-light-tree-switcher_close")
                if current == group and closed.count():  # the filter sometimes folds it
                    closed.click()
                    break
            elif current == group and text == name:
                node.locator(".du-bois-light-tree-checkbox").click()
                return
    sys.exit(f"the Columns selector offers no {group} column {name!r}: log it in a run first")


def screenshot(store: str, out: Path, width: int, height: int) -> None:
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = start_ui(store, port)
    try:
        runs = f"http://127.0.0.1:{port}/#/experiments/"
        runs += f"{experiment_id(port, config.TRACKING_EXPERIMENT)}/runs"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": width, "height": height})
            # The assistant's side panel opens itself on a first visit and hides the table:
            # tell the page, before its own scripts run, that it has been opened and closed.
            page.add_init_script(ASSISTANT_SEEN)
            page.goto(runs)
            page.get_by_text("Run Name", exact=True).wait_for(timeout=120_000)
            page.get_by_text("Model training", exact=True).click()  # not the GenAI side's menu
            page.get_by_role("button", name="Toggle sidebar").click()  # room for the columns
            # The selector lists the metrics and params of the runs loaded when it opens.
            page.get_by_text("matching runs").wait_for(timeout=60_000)
            page.get_by_role("button", name="Columns", exact=True).click()
            dialog = page.get_by_role("dialog", name="Popover content")
            for group, name in HIDE + COLUMNS:
                toggle(dialog, group, name)
            page.keyboard.press("Escape")
            # The button beside a parent run's name shows its children (members, trials).
            for expander in page.locator("button[data-component-id*=runnamecellrenderer]").all():
                expander.click()
            page.evaluate("document.activeElement.blur()")  # no focus ring in the picture,
            page.mouse.move(width - 1, height - 1)  # no hover buttons on a row
            page.wait_for_timeout(1500)
            for group, name in COLUMNS:
                header = page.get_by_role("columnheader", name=name, exact=True)
                box = header.first.bounding_box() if header.count() else None
                if box is None or box["x"] + box["width"] > width:
                    sys.exit(f"column {name!r} ({group}) is not on screen: widen with --width")
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="the MLflow store (MLFLOW_TRACKING_URI, else experiments/mlflow.db)",
    )
    parser.add_argument("--out", type=Path, default=config.ROOT / "docs/mlflow-ui-screenshot.png")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=640)
    args = parser.parse_args()
    store = args.store or f"sqlite:///{config.TRACKING_DB}"
    from pipeline.experiments.recorder import record_pending  # runs still pending would be missing

    record_pending(store)
    screenshot(store, args.out, args.width, args.height)
    print(f"{args.out}: {args.out.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
