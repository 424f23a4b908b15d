"""The app in a real browser: `streamlit run app.py` on 127.0.0.1, Debian's chromium
driven by Playwright; the heatmap and the spectra chart must draw. Screenshots go to
test-output/ (gitignored)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "test-output"
CHROMIUM = os.environ.get("SFTSCOPE_CHROMIUM", "/usr/bin/chromium")

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Done: no "running" status widget, no stale or skeleton element, and every chart
# drawn (an svg or canvas inside it); held for a few polls in a row.
SETTLED = """() => {
  if (!document.querySelector('h1')) return false;
  if (document.querySelector('[data-testid="stStatusWidget"]')) return false;
  if (document.querySelector('[data-stale="true"], [data-testid="stSkeleton"]'))
    return false;
  const charts = [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')];
  return charts.every(c => c.querySelector('svg, canvas'));
}"""

# What a chart drew: marks in its svg, or non-blank pixels of its canvas.
DRAWN = """(chart) => {
  const svg = chart.querySelector('svg');
  if (svg) return svg.querySelectorAll('path, rect, line, text').length;
  const canvas = chart.querySelector('canvas');
  if (!canvas || !canvas.width) return 0;
  const px = canvas.getContext('2d').getImageData(0, 0, canvas.width,
                                                  canvas.height).data;
  let n = 0;
  for (let i = 0; i < px.length; i += 4) if (px[i + 3] && px[i] < 250) n++;
  return n;
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_app(demo_warehouse, tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium, or "
                    "make browser-deps)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    work = tmp_path_factory.mktemp("browser")
    db = work / "warehouse.duckdb"
    shutil.copy(demo_warehouse, db)
    port = free_port()
    env = dict(os.environ, SFTSCOPE_DB=str(db), PYTHONPATH=str(ROOT))
    log = (work / "streamlit.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless",
         "true", "--server.port", str(port), "--server.address", "127.0.0.1",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("streamlit did not start:\n"
                        + (work / "streamlit.log").read_text()[-3000:])
        time.sleep(0.25)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser(served_app):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking"])
        yield b
        b.close()


def open_settled(browser, url: str, shot: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector('[data-testid="stVegaLiteChart"]', timeout=60_000)
    stable = 0
    deadline = time.monotonic() + 60
    while stable < 4:  # settled for four polls in a row (~1 s)
        assert time.monotonic() < deadline, "the app did not finish running"
        stable = stable + 1 if page.evaluate(SETTLED) else 0
        page.wait_for_timeout(250)
    assert not page.locator('[data-testid="stException"]').count()
    OUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUT / shot), full_page=True)
    charts = page.locator('[data-testid="stVegaLiteChart"]')
    drawn = [charts.nth(i).evaluate(DRAWN) for i in range(charts.count())]
    page.close()
    assert not errors, errors
    return drawn


def test_heatmap_renders(browser, served_app):
    drawn = open_settled(browser, f"{served_app}/heatmap", "app-heatmap.png")
    assert len(drawn) == 1
    # 6 layers x 7 modules: at least the 42 cells
    assert drawn[0] >= 42, drawn
    assert (OUT / "app-heatmap.png").stat().st_size > 10_000


def test_spectra_renders(browser, served_app):
    drawn = open_settled(browser, f"{served_app}/spectra", "app-spectra.png")
    assert len(drawn) == 2  # spectra, energy of dW
    assert all(n > 20 for n in drawn), drawn
    assert (OUT / "app-spectra.png").stat().st_size > 10_000


def test_overview_renders(browser, served_app):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(served_app)
    page.get_by_text("What is in the warehouse").wait_for(timeout=60_000)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
        timeout=60_000)
    assert not page.locator('[data-testid="stException"]').count()
    page.screenshot(path=str(OUT / "app-overview.png"), full_page=True)
    page.close()
