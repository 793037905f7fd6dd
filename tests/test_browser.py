"""The page in a real browser: headless Chromium (Debian's package) driven by Playwright.

A live `serve` runs as a child process on a free loopback port; the test draws a "1" and a
"0" with mouse events on the canvas, uploads a PNG of a real validation digit (holding its
request back to see the page's waiting state), checks what the page shows, and checks that the
page fetched nothing but its own server. Without Chromium or
Playwright it skips, except under CI=true, where their absence fails.
"""

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.bench.serve_load import digit_bodies, expected_labels
from pipeline.data.datasets import TensorDigits

from conftest import skip_or_fail, under_ci

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # needed as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _missing() -> str | None:
    for module in ("playwright", "fastapi", "uvicorn"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed: pip install -e '.[serve,browser]' (make install)"
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing: apt-get install chromium (never `playwright install`)"
    return None


MISSING = _missing()
if MISSING and not under_ci():  # skip before any fixture trains a model
    pytest.skip(MISSING, allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    if MISSING:
        skip_or_fail(MISSING)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(browser, fast_checkpoint):
    from pipeline.bench.serve_load import running_server

    with running_server([fast_checkpoint]) as live:
        yield live.url


def _wait_idle(page) -> None:
    """Until the page has no request in flight and nothing left to send."""
    # A selector, not wait_for_function: the page's CSP forbids eval, which that one needs.
    page.locator("body[data-state='idle']").wait_for(timeout=15_000)


def _draw(page, points: list[tuple[float, float]]) -> None:
    """One mouse stroke through points given as fractions of the canvas."""
    box = page.locator("#pad").bounding_box()
    at = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for x, y in at[1:]:
        page.mouse.move(x, y, steps=4)
    page.mouse.up()
    _wait_idle(page)


def test_draw_upload_and_screenshot(browser, server, sample_processed_dir, tmp_path):
    page = browser.new_page(viewport={"width": 900, "height": 640})
    elsewhere, failures = [], []
    page.on("request", lambda r: r.url.startswith((server, "data:")) or elsewhere.append(r.url))
    page.on("response", lambda r: r.status < 400 or failures.append(f"{r.status} {r.url}"))
    blocked = []  # the page must satisfy its own Content-Security-Policy
    page.on("console", lambda m: "Content Security Policy" in m.text and blocked.append(m.text))
    page.goto(server)
    _wait_idle(page)
    assert "fastnet.pt" in page.locator("#model").inner_text()
    assert "validation accuracy" in page.locator("#model").inner_text()

    _draw(page, [(0.5, 0.15 + 0.7 * k / 10) for k in range(11)])  # one vertical stroke
    assert page.locator("#label").inner_text() == "1"
    bars = page.locator("#bars li")
    assert bars.count() == 10 and "top" in (bars.nth(1).get_attribute("class") or "")

    page.click("#clear")
    assert page.locator("#label").inner_text() == "?"
    loop = [  # a closed loop, taller than wide, as a 0 is written
        (0.5 + 0.22 * math.sin(2 * math.pi * k / 48), 0.5 - 0.32 * math.cos(2 * math.pi * k / 48))
        for k in range(49)
    ]
    _draw(page, loop)
    assert page.locator("#label").inner_text() == "0"
    seen = page.evaluate(
        "Array.from(document.getElementById('seen').getContext('2d')"
        ".getImageData(0, 0, 28, 28).data.filter((_, i) => i % 4 === 0))"
    )
    seen = np.array(seen).reshape(28, 28)
    assert seen.max() == 255 and seen[:, :3].max() == 0  # the model's input: centred, on black

    val = TensorDigits.load(sample_processed_dir, "val")
    answers = expected_labels(server, digit_bodies(sample_processed_dir, 10))
    first = next(i for i, answer in enumerate(answers) if answer == val.labels[i])
    digit, label = val.images[first, 0].numpy(), int(val.labels[first])  # one it reads right
    upload = tmp_path / "digit.png"
    Image.fromarray(255 - digit).resize((140, 140), Image.LANCZOS).save(upload)  # ink on paper
    held = []  # the prediction request, held back so the page's waiting state can be seen

    def hold(route) -> None:
        held.append(route)

    page.route("**/api/predict", hold)
    page.set_input_files("#upload", str(upload))
    page.wait_for_function("document.body.dataset.state === 'busy'", timeout=15_000)
    for _ in range(100):  # the request reaches the route once the picture is read
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the page sent no prediction request"
    assert page.locator("#label").inner_text() == "\u2026"  # the 0 drawn before is gone
    assert page.locator("#status").inner_text().startswith("Reading")
    spinner = "getComputedStyle(document.getElementById('status'), '::before').animationName"
    assert page.evaluate(spinner) == "spin"
    assert page.locator("#clear").is_disabled() and page.locator("#upload").is_disabled()
    assert page.locator("#result").get_attribute("aria-busy") == "true"
    held[0].continue_()
    page.unroute("**/api/predict", hold)
    _wait_idle(page)
    assert page.locator("#label").inner_text() == str(label)
    assert page.locator("#clear").is_enabled() and page.locator("#upload").is_enabled()
    assert page.locator("#result").get_attribute("aria-busy") == "false"
    assert page.evaluate(spinner) == "none"

    screenshot = tmp_path / "serve-screenshot.png"
    page.screenshot(path=str(screenshot))
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")
    assert elsewhere == [] and failures == [] and blocked == []
    page.close()
