"""Ingest throughput: end-to-end load of a >= 100 MB Posts.xml vs parse-only lxml.

    python bench/ingest.py                 # builds data/bench/Posts.xml once, prints JSON
    python bench/ingest.py --mb 200 --workers 2 --keep

The file is made of the real rows in samples/stackexchange (every sample's Posts rows,
repeated with fresh Ids until the size is reached), so the mix of body lengths, HTML
and entities is the dump's own. Measured in the same run, on the same file, after one
warm-up read (so all see it in the page cache), baseline and end to end interleaved
`--repeat` times (best of each):

- baseline: `lxml.etree.iterparse(path, tag="row")` with `el.clear()`, touching no
  attribute: the parse-only floor of any lxml-based loader (and, beside it, the same
  reading every row's attributes into a dict);
- end to end: `ingest.stackexchange.load()` into a fresh DuckDB file: split, parse,
  typed columns, tags, body_text, insert, commit;
- the CLI, `python -m ingest.stackexchange`, in its own process (its peak RSS), with
  the C parser and with the pure-Python reference (SFTSCOPE_PURE_PYTHON=1);
- `--stages`: CPU ms per MB of each step, serially (where the time goes).

Prints one JSON object (bench/common.py's shape); the target is
`ratios.end_to_end_vs_parse_only` >= 0.8.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import ratio, report, run_measured  # noqa: E402

SAMPLES = ROOT / "samples" / "stackexchange"


def sample_rows() -> list[bytes]:
    rows: list[bytes] = []
    for f in sorted(SAMPLES.glob("*/*")):
        if f.name.lower() not in ("posts.xml", "posts_count_test.xml"):
            continue
        for line in f.read_bytes().splitlines():
            line = line.strip()
            if line.startswith(b"<row ") and b' Id="' in line:
                rows.append(line)
    if not rows:
        raise SystemExit(f"no sample Posts rows under {SAMPLES}")
    return rows


def build_posts(path: Path, mb: float) -> Path:
    """A Posts.xml of at least `mb` MB from the sample rows (deterministic)."""
    target = int(mb * 1e6)
    if path.exists() and path.stat().st_size >= target:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sample_rows()
    id_re = re.compile(rb' Id="\d+"')
    tmp = path.with_suffix(".tmp")
    size = 0
    with open(tmp, "wb") as out:
        out.write(b'\xef\xbb\xbf<?xml version="1.0" encoding="utf-8"?>\n<posts>\n')
        i = 0
        while size < target:
            row = id_re.sub(b' Id="%d"' % (i + 1), rows[i % len(rows)], count=1)
            out.write(b"  " + row + b"\n")
            size += len(row) + 3
            i += 1
        out.write(b"</posts>\n")
    tmp.replace(path)
    return path


def baseline(path: Path) -> tuple[float, int]:
    from lxml import etree

    t0 = time.perf_counter()
    n = 0
    for _, el in etree.iterparse(str(path), events=("end",), tag="row", huge_tree=True):
        n += 1
        el.clear()
        while el.getprevious() is not None:
            del el.getparent()[0]
    return time.perf_counter() - t0, n


def baseline_attrs(path: Path) -> float:
    """iterparse and read every row's attributes into a dict: the least any loader
    built on lxml must do (the issue's ~45 MB/s baseline is of this kind)."""
    from lxml import etree

    t0 = time.perf_counter()
    for _, el in etree.iterparse(str(path), events=("end",), tag="row", huge_tree=True):
        dict(el.attrib)
        el.clear()
        while el.getprevious() is not None:
            del el.getparent()[0]
    return time.perf_counter() - t0


def stages(path: Path, mb: float = 20.0) -> dict[str, float]:
    """CPU milliseconds per MB of XML for each step, measured serially on the first
    `mb` MB: where the time goes (the C parser, the lxml reference, DuckDB's write)."""
    from lxml import etree

    from ingest.se_parse import RowSplitter, _parser, parse_chunk_fast, parse_chunk_lxml
    from ingest.se_tables import create_tables
    from ingest.se_text import html_to_text
    from ingest.stackexchange import LOAD_ROW_GROUP_SIZE, _file_blocks, configure_load
    from ingest.warehouse import connect

    chunks = []
    for data, line in RowSplitter(str(path), _file_blocks(path)()).chunks(4 << 20):
        chunks.append((data, line))
        if sum(len(c) for c, _ in chunks) >= mb * 1e6:
            break
    size = sum(len(c) for c, _ in chunks) / 1e6
    out: dict[str, float] = {}

    def clock(name, fn):
        t0 = time.process_time()
        result = fn()
        out[name] = round((time.process_time() - t0) * 1000 / size, 1)
        return result

    tables = clock("c_parse_chunk_ms_per_mb", lambda: [
        parse_chunk_fast("se_posts", "bench", c, line)[0] for c, line in chunks])
    clock("lxml_parse_chunk_ms_per_mb", lambda: [
        parse_chunk_lxml("se_posts", "bench", c, line)[0] for c, line in chunks])
    trees = clock("lxml_parse_only_ms_per_mb", lambda: [
        etree.fromstring(b"<posts>" + c + b"</posts>", _parser()) for c, _ in chunks])
    bodies = [el.get("Body") for t in trees for el in t]
    clock("python_body_text_ms_per_mb", lambda: [html_to_text(b) for b in bodies])
    with tempfile.TemporaryDirectory() as tmp, connect(
        Path(tmp) / "s.duckdb", row_group_size=LOAD_ROW_GROUP_SIZE
    ) as con:
        configure_load(con)  # as load() does
        create_tables(con)
        t0, c0 = time.perf_counter(), os.times()
        con.execute("begin")
        for t in tables:
            con.register("_b", t)
            con.execute("insert into raw.se_posts by name select 'b' as site, * from _b")
            con.unregister("_b")
        con.execute("commit")
        con.execute("checkpoint")
        c1 = os.times()
        # DuckDB works in its own threads: wall and CPU time of the write alone
        out["duckdb_write_wall_ms_per_mb"] = round((time.perf_counter() - t0) * 1000 / size, 1)
        out["duckdb_write_cpu_ms_per_mb"] = round(
            (c1.user - c0.user + c1.system - c0.system) * 1000 / size, 1)
    out["stages_measured_on_mb"] = round(size, 1)
    return out


def end_to_end(path: Path, workers: int, chunk_mb: float) -> tuple[float, int, dict]:
    from ingest.stackexchange import LoadOptions, load
    from ingest.warehouse import connect

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        opts = LoadOptions(
            site="bench", db=db, workers=workers, progress=False,
            chunk_bytes=int(chunk_mb * 1e6),
        )
        t0 = time.perf_counter()
        report = load(path, opts)
        seconds = time.perf_counter() - t0
        with connect(db, read_only=True) as con:
            n, typed = con.execute(
                "select count(*), count(creation_date) + count(body_text)"
                " from raw.se_posts"
            ).fetchone()
        db_mb = db.stat().st_size / 1e6
        return seconds, n, {"rows_read": report.files[0].rows_read, "typed": typed,
                            "warehouse_mb": round(db_mb, 1)}


def cli_run(path: Path, workers: int, pure_python: bool = False) -> dict:
    """`python -m ingest.stackexchange` in its own process: wall (with interpreter
    start), CPU and its own peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, SFTSCOPE_PURE_PYTHON="1" if pure_python else "0")
        return run_measured(
            [sys.executable, "-m", "ingest.stackexchange", str(path), "--site", "bench",
             "--db", str(Path(tmp) / "cli.duckdb"), "--no-progress",
             "--workers", str(workers)],
            cwd=ROOT, env=env, tail=300,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=100.0)
    ap.add_argument("--path", type=Path, default=ROOT / "data" / "bench" / "Posts.xml")
    ap.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1))
    ap.add_argument("--chunk-mb", type=float, default=4.0)
    ap.add_argument("--repeat", type=int, default=3,
                    help="baseline and end-to-end runs, interleaved; best of each")
    ap.add_argument("--keep", action="store_true", help="keep the generated file")
    ap.add_argument("--stages", action="store_true",
                    help="also time each pipeline step serially (ms of CPU per MB)")
    ap.add_argument("--no-reference", action="store_true",
                    help="skip the run of the pure-Python (lxml) loader")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    args = ap.parse_args()

    path = build_posts(args.path, args.mb)
    size_mb = path.stat().st_size / 1e6
    with open(path, "rb") as f:  # warm the page cache for every measurement
        while f.read(1 << 24):
            pass
    # Interleaved, so that a change in the machine's load hits both sides alike.
    base, attrs, e2e = [], [], []
    for _ in range(args.repeat):
        base.append(baseline(path)[0])
        attrs.append(baseline_attrs(path))
        e2e.append(end_to_end(path, args.workers, args.chunk_mb))
    base_s, base_attrs_s = min(base), min(attrs)
    e2e_s, rows, extra = min(e2e, key=lambda r: r[0])
    paired = sorted(b / e[0] for b, e in zip(base, e2e, strict=True))
    cli = cli_run(path, args.workers)
    results = {
        "file_mb": round(size_mb, 1),
        "rows": rows,
        **extra,
        "baseline_lxml_parse_only": {"seconds": round(base_s, 2),
                                     "mb_s": round(size_mb / base_s, 1)},
        "baseline_lxml_attributes": {"seconds": round(base_attrs_s, 2),
                                     "mb_s": round(size_mb / base_attrs_s, 1)},
        "sftscope_end_to_end": {"seconds": round(e2e_s, 2),
                                "mb_s": round(size_mb / e2e_s, 1),
                                "workers": args.workers, "chunk_mb": args.chunk_mb},
        "sftscope_cli": {k: v for k, v in cli.items() if k != "stdout_tail"},
    }
    ratios = {
        "end_to_end_vs_parse_only": ratio(base_s, e2e_s),
        "end_to_end_vs_parse_only_median_of_pairs": round(paired[len(paired) // 2], 2),
        "end_to_end_vs_attributes": ratio(base_attrs_s, e2e_s),
    }
    if not args.no_reference:
        ref = cli_run(path, args.workers, pure_python=True)
        results["reference_pure_python_cli"] = {
            k: v for k, v in ref.items() if k != "stdout_tail"}
        ratios["cli_speedup_vs_pure_python"] = ratio(ref["seconds"], cli["seconds"])
    extra_doc = {"target": "end_to_end_vs_parse_only >= 0.8",
                 "baseline": "lxml.etree.iterparse(tag='row') + clear, no attribute"
                 " access; end to end = split, parse, typed columns, tags, body_text,"
                 " insert, commit (in-process, after a warm read of the file)"}
    if args.stages:
        extra_doc["stages"] = stages(path)
    report("ingest", results, ratios, extra=extra_doc, out=args.json)
    if not args.keep and path == ROOT / "data" / "bench" / "Posts.xml":
        path.unlink()


if __name__ == "__main__":
    main()
