"""The app in a real browser: `streamlit run app.py` on 127.0.0.1, Debian's chromium
driven by Playwright, one browser for the module. Every page at a desktop (1440 px)
and a laptop (1024 px) width, each waited on until the app's own script state says
it finished: a takeaway on top, no exception, no empty chart, no legend or label cut
or sticking out of its chart; the running indicator and Stop while a query runs.
Screenshots go to test-output/app-<page>-<width>.png (gitignored)."""

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

from tests.conftest import run_dbt
from tests.patch_rows import insert_patch_rows

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "test-output"
CHROMIUM = os.environ.get("SFTSCOPE_CHROMIUM", "/usr/bin/chromium")

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# The app's own script state (the root element's data-test-script-state): Streamlit
# sets it to "running" while the page's script runs and to "notRunning" when it has
# finished; done when it reads notRunning, nothing is stale and every chart has
# drawn, held for a few polls in a row.
SETTLED = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning')
    return false;
  if (!document.querySelector('h1')) return false;
  if (document.querySelector('[data-stale="true"], [data-testid="stSkeleton"]'))
    return false;
  const charts = [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')];
  return charts.every(c => c.querySelector('svg, canvas'));
}"""

# Per chart: the data marks it drew (Vega's role-mark items: bars, lines, points,
# cell texts; axes and legends are other roles) or, for a canvas, non-blank pixels;
# the texts Vega cut with an ellipsis (a legend label, a title past its limit); the
# texts that stick out of the chart's element (cut at the page's edge of it).
INSPECT = """(chart) => {
  const svg = chart.querySelector('svg');
  if (!svg) {
    const canvas = chart.querySelector('canvas');
    if (!canvas || !canvas.width) return {marks: 0, cut: [], outside: []};
    const px = canvas.getContext('2d').getImageData(0, 0, canvas.width,
                                                    canvas.height).data;
    let n = 0;
    for (let i = 0; i < px.length; i += 4) if (px[i + 3] && px[i] < 250) n++;
    return {marks: n, cut: [], outside: [], overlaps: 0};
  }
  const box = chart.getBoundingClientRect();
  const texts = [...svg.querySelectorAll('text')].filter(t => t.textContent.trim());
  // text marks (cell values) drawn over one another by more than half their area
  const boxes = [...svg.querySelectorAll('g.role-mark text')]
    .filter(t => t.textContent.trim()).map(t => t.getBoundingClientRect())
    .filter(r => r.width && r.height);
  let overlaps = 0;
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const a = boxes[i], b = boxes[j];
    const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
    const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
    if (w > 0 && h > 0 && w * h > 0.5 * Math.min(a.width * a.height,
                                                b.width * b.height)) overlaps++;
  }
  return {
    overlaps: overlaps,
    marks: svg.querySelectorAll('g.role-mark > *').length,
    cut: texts.filter(t => t.textContent.endsWith('\u2026')).map(t => t.textContent),
    outside: texts.filter(t => {
      const r = t.getBoundingClientRect();
      // glyph boxes overhang their text by a few pixels: 6 px of slack
      return r.width && (r.left < box.left - 6 || r.right > box.right + 6
                         || r.top < box.top - 6 || r.bottom > box.bottom + 6);
    }).map(t => t.textContent),
  };
}"""

# Every page of app.py, by URL path; the desktop and the laptop width.
PAGES = ["", "heatmap", "layers", "spectra", "directions", "perplexity", "token-shift",
         "drift", "posts", "attribution", "sql"]
WIDTHS = {"desktop": 1440, "laptop": 1024}


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
    # the Attribution page's rows (made up: tests/patch_rows.py), its marts built
    insert_patch_rows(db, "planted", 6)
    run_dbt(db, "build", "--quiet", "--select", "stg_compute__patch_models+",
            "stg_compute__patch_posts+", "int_patch_group_weights+")
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


def open_settled(page, url: str) -> None:
    """Go to `url` and wait until the app has finished running it (SETTLED held
    for four polls, about a second)."""
    page.goto(url)
    page.wait_for_selector('[data-testid="stApp"]', timeout=60_000)
    stable = 0
    deadline = time.monotonic() + 90
    while stable < 4:
        assert time.monotonic() < deadline, f"{url}: the app did not finish running"
        stable = stable + 1 if page.evaluate(SETTLED) else 0
        page.wait_for_timeout(250)


def screenshot(page, path: Path, width: int) -> None:
    """The whole page: Streamlit scrolls inside its main block, so the viewport is
    made as tall as that block for the shot."""
    height = page.evaluate("""() => Math.max(1000, ...[...document.querySelectorAll(
        '[data-testid="stMain"], [data-testid="stMainBlockContainer"]')]
        .map(e => e.scrollHeight))""")
    page.set_viewport_size({"width": width, "height": min(height + 80, 12_000)})
    page.wait_for_timeout(600)
    page.screenshot(path=str(path), full_page=True)


@pytest.fixture(scope="module")
def every_page(browser, served_app) -> dict:
    """Every page at both widths, in one browser: per (width, page) the
    exceptions, the browser's errors and each chart's INSPECT, and a screenshot
    test-output/app-<page>-<width>.png."""
    OUT.mkdir(exist_ok=True)
    seen = {}
    for kind, width in WIDTHS.items():
        page = browser.new_page(viewport={"width": width, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
        for path in PAGES:
            errors.clear()
            open_settled(page, f"{served_app}/{path}")
            charts = page.locator('[data-testid="stVegaLiteChart"]')
            seen[kind, path or "overview"] = {
                "exceptions": [page.locator('[data-testid="stException"]').nth(i)
                               .inner_text()[:300] for i in range(page.locator(
                                   '[data-testid="stException"]').count())],
                "errors": list(errors),
                "charts": [charts.nth(i).evaluate(INSPECT)
                           for i in range(charts.count())],
                "takeaway": page.locator('[aria-label="lightbulb icon"]').count(),
            }
            screenshot(page, OUT / f"app-{path or 'overview'}-{kind}.png", width)
            page.set_viewport_size({"width": width, "height": 1000})
        page.close()
    return seen


@pytest.mark.parametrize("kind", list(WIDTHS))
@pytest.mark.parametrize("path", [p or "overview" for p in PAGES])
def test_page_reads_at_both_widths(every_page, path, kind):
    """A takeaway on top; no exception, no browser error, no empty chart, no legend
    or label cut."""
    got = every_page[kind, path]
    assert got["takeaway"] >= 1, f"{path}: no takeaway"
    assert not got["exceptions"], got["exceptions"]
    assert not got["errors"], got["errors"]
    for i, chart in enumerate(got["charts"]):
        assert chart["marks"] > 0, f"chart {i} of {path} drew nothing"
        assert not chart["cut"], f"chart {i} of {path}: cut texts {chart['cut']}"
        assert not chart["outside"], (f"chart {i} of {path}: texts past its edge "
                                      f"{chart['outside']}")
    shot = OUT / f"app-{path}-{kind}.png"
    assert shot.stat().st_size > 10_000


def test_pages_draw_what_they_should(every_page):
    """The charts each page must draw on the demo warehouse: the heatmap's cells
    (6 layers x 7 modules), the spectra, energy and ESD-tail curves."""
    heat = every_page["desktop", "heatmap"]["charts"]
    assert len(heat) == 1 and heat[0]["marks"] >= 42, heat
    spectra = every_page["desktop", "spectra"]["charts"]  # spectra, energy, ESD tail
    assert len(spectra) == 3 and all(c["marks"] >= 3 for c in spectra), spectra
    assert every_page["desktop", "overview"]["charts"]  # the training curves
    # attribution: both layer x module heatmaps (6 x 7 cells and their texts), the
    # top groups, the rank curves and toward-the-SFT vs moved from the base
    attribution = every_page["desktop", "attribution"]["charts"]
    assert len(attribution) == 5, attribution
    assert all(c["marks"] >= 42 for c in attribution[:2]), attribution
    # the cells' values each in a cell of its own (a heatmap of fixed height drew
    # its 6 layers in one row, values over one another)
    assert [c["overlaps"] for c in attribution[:2]] == [0, 0], attribution
    assert heat[0]["overlaps"] == 0, heat


def test_running_indicator_and_stop_show(browser, served_app):
    """While a page runs, the running indicator and its Stop button are on screen
    (the toolbar's "minimal" mode hid them), and Stop stops the script."""
    page = browser.new_page(viewport={"width": WIDTHS["desktop"], "height": 900})
    open_settled(page, f"{served_app}/sql")
    page.locator("textarea").fill("select count(*) from range(3000000000) t(x) "
                                  "where x % 7 = 3")
    page.locator("textarea").press("Control+Enter")
    page.get_by_role("button", name="Run").click()
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="running"]',
                           timeout=20_000)
    widget = page.locator('[data-testid="stStatusWidget"]')
    widget.wait_for(state="visible", timeout=10_000)
    stop = widget.get_by_role("button", name="Stop")
    assert stop.is_visible()
    stop.click()
    page.wait_for_selector(
        '[data-testid="stApp"]:not([data-test-script-state="running"])',
        timeout=30_000)
    page.close()
