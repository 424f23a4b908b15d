"""Server time of every page of the app on the demo warehouse, cold and warm.

    python bench/app_pages.py                        # data/warehouse.duckdb (make demo)
    python bench/app_pages.py --db other.duckdb --warm 5 --json data/bench/pages.json

For each page of app.py, a fresh `streamlit run app.py` serves a copy of the
warehouse (its own process: nothing cached); one client of the app's WebSocket
protocol (bench/app_load.py's, what the browser speaks) runs the page once (cold:
every query reaches DuckDB) and then `--warm` times more (warm: the app's caches
hold the queries; the median is reported). A page's time is from the rerun request
to the server's `script_finished`: the server's time to run the page, without the
browser's drawing. The goal is every warm page under `--goal` seconds (1 s); the
JSON gives per page cold and warm seconds, `warm_over_cold`, and
`slowest_warm_over_goal` (below 1: every page meets it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.app_load import free_port, load_page, pages, run, start_app
from bench.common import ROOT, ratio, report


async def visit(port: int, page: str, warm: int, timeout: float) -> dict:
    """One session: the page once cold, then `warm` times; seconds and failures."""
    import websockets

    async with websockets.connect(f"ws://127.0.0.1:{port}/_stcore/stream",
                                  subprotocols=["streamlit"], max_size=None,
                                  ping_interval=None) as ws:
        cold, problem = await load_page(ws, page, timeout)
        times, problems = [], [problem] if problem else []
        for _ in range(warm):
            secs, problem = await load_page(ws, page, timeout)
            times.append(secs)
            if problem:
                problems.append(problem)
    return {"cold_s": round(cold, 3), "warm_s": round(statistics.median(times), 3),
            "warm_max_s": round(max(times), 3), "problems": sorted(set(problems))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, default=ROOT / "data" / "warehouse.duckdb",
                    help="the warehouse to copy (default: make demo's)")
    ap.add_argument("--warm", type=int, default=3, help="warm runs per page")
    ap.add_argument("--goal", type=float, default=1.0, help="warm seconds per page")
    ap.add_argument("--page-timeout", type=float, default=120.0)
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    a = ap.parse_args(argv)
    if not a.db.exists():
        raise SystemExit(f"no warehouse at {a.db}: run `make demo` first (or --db)")

    work = Path(tempfile.mkdtemp(prefix="sftscope-app-pages-"))
    db = work / "warehouse.duckdb"
    env = {**os.environ, "SFTSCOPE_DB": str(db), "PYTHONPATH": str(ROOT),
           "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    try:
        shutil.copyfile(a.db, db)
        rc, _, tail = run([sys.executable, "-m", "ingest.publish"], env)
        if rc:
            raise SystemExit(f"publishing the copy's snapshot failed:\n{tail}")
        per_page = {}
        for page in pages():
            name = page or "overview"
            port = free_port()
            app = start_app(port, env)
            try:
                per_page[name] = asyncio.run(visit(port, page, a.warm, a.page_timeout))
            finally:
                app.terminate()
                try:
                    app.wait(10)
                except subprocess.TimeoutExpired:
                    app.kill()
            got = per_page[name]
            print(f"  {name}: cold {got['cold_s']:.2f} s, warm {got['warm_s']:.2f} s",
                  file=sys.stderr)
        for got in per_page.values():
            got["warm_over_cold"] = ratio(got["warm_s"], got["cold_s"])
        slowest = max(per_page, key=lambda p: per_page[p]["warm_s"])
        results = {"warehouse": str(a.db), "warm_runs": a.warm, "goal_s": a.goal,
                   "pages": per_page, "slowest_warm_page": slowest,
                   "pages_over_goal": sorted(p for p, g in per_page.items()
                                             if g["warm_s"] >= a.goal),
                   "failed": sorted(p for p, g in per_page.items() if g["problems"])}
        ratios = {"slowest_warm_over_goal": ratio(per_page[slowest]["warm_s"], a.goal),
                  "median_warm_over_cold": ratio(
                      statistics.median(g["warm_s"] for g in per_page.values()),
                      statistics.median(g["cold_s"] for g in per_page.values()))}
        report("app_pages", results, ratios, out=a.json)
        return 1 if results["failed"] else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
