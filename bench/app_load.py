"""Load test of the app: concurrent sessions over every page while writers write.

    python bench/app_load.py                       # 20 sessions: 20 s idle, then 60 s
                                                   # while loads and dbt builds run
    python bench/app_load.py --db data/warehouse.duckdb   # a copy of your warehouse
    python bench/app_load.py --sessions 4 --seconds 10 --baseline-seconds 5 --json out.json

`streamlit run app.py` serves a copy of the warehouse; each session is one client of
the app's own WebSocket protocol (what the browser speaks: a BackMsg `rerun_script`
for a page, ForwardMsgs back until `script_finished`), going round every page of
app.py, one after the other, from a page of its own. A page fails when its run ends
in anything but success, shows an exception, says the warehouse is busy, or takes
over `--page-timeout` s.

Two phases, measured in the same run: idle (no writer: the baseline) and busy, where
a writer loop runs `python -m ingest.compute_load` (reloading the pair: one
transaction, then a published snapshot) and `dbt build` (every model and test, then a
published snapshot) back to back; the busy phase lasts `--seconds` or until one load
and one build have finished, whichever is later. The JSON has page times (p50, p95,
max; per page), failures, the writers' runs, and `busy_p95_over_idle_p95`.

Without `--db`, the warehouse is built first (a minute or two): the real Stack Exchange
sample blender-meta-2013, a tiny planted pair's spectra (compute.run, no behaviour)
and `dbt build`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, ratio, report

SITE_DIR = ROOT / "samples" / "stackexchange" / "blender-meta-2013"
PAIR = "bench"


def pages() -> list[str]:
    """The app's pages as their URL paths ('' is the default page): each
    st.Page's url_path, else its file's name."""
    out = []
    for call in re.findall(r'st\.Page\("app_pages/\w+\.py".*?\)',
                           (ROOT / "app.py").read_text(), re.S):
        stem = re.search(r'app_pages/(\w+)\.py', call).group(1)
        url = re.search(r'url_path="([^"]*)"', call)
        out.append("" if stem == "overview" else url.group(1) if url else stem)
    return out


def run(cmd: list[str], env: dict, timeout: float = 900) -> tuple[int, float, str]:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    return proc.returncode, time.monotonic() - t0, (proc.stdout + proc.stderr)[-2000:]


def dbt_cmd() -> list[str]:
    return [str(Path(sys.executable).with_name("dbt")), "build", "--quiet",
            "--project-dir", str(ROOT / "dbt_project"), "--profiles-dir",
            str(ROOT / "dbt_project")]


def build_warehouse(work: Path, env: dict) -> tuple[Path, dict]:
    """The warehouse; returns the run folder the writer loop reloads and the setup
    steps. A `dbt build` whose tests fail still builds the models: it is reported,
    and the warehouse is published by hand."""
    from compute.fixtures.planted import PairSpec, build_pair

    pair = work / "pair"
    build_pair(pair, PairSpec(hidden=64, intermediate=160, layers=4, heads=2,
                              kv_heads=1, vocab=512))
    steps = [
        [sys.executable, "-m", "ingest.stackexchange", str(SITE_DIR), "--site",
         "blender.meta"],
        [sys.executable, "-m", "compute.run", "--base", str(pair / "base"), "--sft",
         str(pair / "sft"), "--name", PAIR, "--out", str(work / "runs"),
         "--skip-behaviour", "--no-progress"],
        dbt_cmd(),
        [sys.executable, "-m", "ingest.publish"],
    ]
    setup = {}
    for cmd in steps:
        rc, secs, tail = run(cmd, env)
        name = " ".join(Path(c).name for c in cmd[:3])
        setup[name] = {"rc": rc, "seconds": round(secs, 1)}
        print(f"  {name}: {secs:.1f} s, exit {rc}", file=sys.stderr)
        if rc != 0 and cmd[0] != dbt_cmd()[0]:
            raise SystemExit(f"building the warehouse: {name} failed ({rc}):\n{tail}")
        if rc != 0:
            setup[name]["tail"] = tail
    return work / "runs" / PAIR, setup


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int, env: dict) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1",
         "--server.enableXsrfProtection", "false", "--server.enableCORS", "false",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health",
                                        timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise SystemExit(f"streamlit exited: {proc.stderr.read()[-2000:]}")
    proc.kill()
    raise SystemExit("streamlit did not answer within 120 s")


async def load_page(ws, page: str, timeout: float) -> tuple[float, str | None]:
    """Run `page` in this session; (seconds, None) or (seconds, why it failed)."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    msg = BackMsg()
    msg.rerun_script.page_name = page
    msg.rerun_script.query_string = ""
    t0 = time.monotonic()
    await ws.send(msg.SerializeToString())
    problem = None
    while True:
        left = timeout - (time.monotonic() - t0)
        try:
            if left <= 0:
                raise asyncio.TimeoutError
            raw = await asyncio.wait_for(ws.recv(), left)
        except asyncio.TimeoutError:
            return time.monotonic() - t0, f"over {timeout:g} s"
        fwd = ForwardMsg()
        fwd.ParseFromString(raw)
        kind = fwd.WhichOneof("type")
        if kind == "page_not_found":
            problem = "page not found"
        elif kind == "delta" and fwd.delta.WhichOneof("type") == "new_element":
            el = fwd.delta.new_element
            which = el.WhichOneof("type")
            if which == "exception":
                problem = problem or f"exception: {el.exception.message[:200]}"
            elif which == "alert" and "busy" in el.alert.body.lower():
                problem = problem or f"busy: {el.alert.body[:200]}"
        elif kind == "script_finished":
            status = ForwardMsg.ScriptFinishedStatus.Name(fwd.script_finished)
            if status != "FINISHED_SUCCESSFULLY" and not problem:
                problem = status
            return time.monotonic() - t0, problem


async def session(port: int, names: list[str], stop_at: list[float], timeout: float,
                  out: list[dict], start: int) -> None:
    import websockets

    # No keepalive pings: on a busy machine a late pong would drop the session.
    async with websockets.connect(f"ws://127.0.0.1:{port}/_stcore/stream",
                                  subprotocols=["streamlit"], max_size=None,
                                  ping_interval=None) as ws:
        i = start
        while time.monotonic() < stop_at[0]:
            page = names[i % len(names)]
            i += 1
            try:
                secs, problem = await load_page(ws, page, timeout)
            except Exception as exc:  # a dropped connection is a failed page too
                secs, problem = timeout, f"{type(exc).__name__}: {exc}"
            out.append({"page": page or "overview", "seconds": secs, "problem": problem,
                        "at": time.monotonic()})
            if problem and not problem.startswith(("exception", "busy", "page")):
                return  # the session is in no state to go on (the page still runs)


async def sessions(port: int, n: int, stop_at: list[float], timeout: float,
                   out: list[dict]) -> None:
    names = pages()
    rng = random.Random(0)
    await asyncio.gather(*(session(port, names, stop_at, timeout, out,
                                   rng.randrange(len(names))) for _ in range(n)))


def writer_loop(run_dir: Path, env: dict, stop: threading.Event,
                log: list[dict]) -> None:
    while not stop.is_set():
        for name, cmd in (("load", [sys.executable, "-m", "ingest.compute_load",
                                    str(run_dir)]),
                          ("dbt build", dbt_cmd())):
            rc, secs, tail = run(cmd, env)
            log.append({"step": name, "rc": rc, "seconds": round(secs, 1),
                        **({"tail": tail} if rc else {})})
            if stop.is_set():
                return


def stats(rows: list[dict]) -> dict:
    secs = sorted(r["seconds"] for r in rows)
    if not secs:
        return {"pages": 0}

    def q(p: float) -> float:
        return round(secs[min(len(secs) - 1, int(p * len(secs)))], 3)

    failed = [r for r in rows if r["problem"]]
    return {"pages": len(secs), "failed": len(failed), "p50_s": q(0.5), "p95_s": q(0.95),
            "max_s": round(secs[-1], 3),
            "failures": sorted({f"{r['page']}: {r['problem']}" for r in failed})[:20]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, help="a warehouse to copy (default: build one)")
    ap.add_argument("--runs", type=Path, help="with --db: a compute.run output folder "
                    "(OUT/<pair>) that the writer loop reloads")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=60.0, help="busy phase (at least)")
    ap.add_argument("--baseline-seconds", type=float, default=20.0, help="idle phase")
    ap.add_argument("--page-timeout", type=float, default=60.0)
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    a = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="sftscope-app-load-"))
    db = work / "warehouse.duckdb"
    env = {**os.environ, "SFTSCOPE_DB": str(db), "DBT_SEND_ANONYMOUS_USAGE_STATS":
           "false", "SFTSCOPE_LOCK_TIMEOUT": "600", "PYTHONPATH": str(ROOT)}
    app = None
    try:
        if a.db:
            shutil.copyfile(a.db, db)
            rc, _, tail = run([sys.executable, "-m", "ingest.publish"], env)
            if rc:
                raise SystemExit(tail)
            run_dir, setup = a.runs, {}
        else:
            print("building the warehouse ...", file=sys.stderr)
            run_dir, setup = build_warehouse(work, env)
        port = free_port()
        app = start_app(port, env)
        idle: list[dict] = []
        stop_at = [time.monotonic() + a.baseline_seconds]
        print(f"idle phase: {a.sessions} sessions, {a.baseline_seconds:g} s",
              file=sys.stderr)
        asyncio.run(sessions(port, a.sessions, stop_at, a.page_timeout, idle))

        busy: list[dict] = []
        log: list[dict] = []
        stop = threading.Event()
        writer = None
        if run_dir is not None:
            writer = threading.Thread(target=writer_loop, args=(run_dir, env, stop, log))
            writer.start()
        t0 = time.monotonic()
        stop_at = [t0 + a.seconds]

        def extend() -> None:  # until one load and one build have finished
            while writer is not None and writer.is_alive() and not stop.is_set():
                done = {e["step"] for e in log}
                if {"load", "dbt build"} <= done:
                    return
                stop_at[0] = max(stop_at[0], time.monotonic() + 2)
                time.sleep(1)

        threading.Thread(target=extend, daemon=True).start()
        print(f"busy phase: {a.sessions} sessions, >= {a.seconds:g} s, writers on",
              file=sys.stderr)
        asyncio.run(sessions(port, a.sessions, stop_at, a.page_timeout, busy))
        busy_s = time.monotonic() - t0
        stop.set()
        if writer is not None:
            writer.join()
        snaps = sorted(p.name for p in (work / "warehouse.duckdb.snapshots").iterdir()
                       if p.name.isdigit()) if (work / "warehouse.duckdb.snapshots"
                                                ).exists() else []
        per_page = {}
        for row in busy:
            per_page.setdefault(row["page"], []).append(row)
        results = {
            "sessions": a.sessions,
            "pages": [p or "overview" for p in pages()],
            "idle": {"seconds": a.baseline_seconds, **stats(idle)},
            "busy": {"seconds": round(busy_s, 1), **stats(busy)},
            "busy_per_page_p95_s": {p: stats(r)["p95_s"] for p, r in per_page.items()},
            "writers": log,
            "writers_failed": sum(1 for e in log if e["rc"] != 0),
            "last_snapshot": snaps[-1] if snaps else None,
            "setup": setup,
        }
        ratios = {"busy_p95_over_idle_p95": ratio(results["busy"].get("p95_s"),
                                                  results["idle"].get("p95_s"))}
        report("app_load", results, ratios, out=a.json)
        ok = (not results["idle"].get("failed") and not results["busy"].get("failed")
              and not results["writers_failed"])
        return 0 if ok else 1
    finally:
        if app is not None:
            app.terminate()
            try:
                app.wait(10)
            except subprocess.TimeoutExpired:
                app.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
