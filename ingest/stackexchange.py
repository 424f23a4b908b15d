"""Load one Stack Exchange site's dump into the warehouse's raw.se_* tables.

    python -m ingest.stackexchange physics.stackexchange.com.7z
    python -m ingest.stackexchange data/demo-site --site physics.demo
    python -m ingest.stackexchange path/to/Posts.xml --site physics.stackexchange.com

PATH is the site's `.7z` as published (read as a stream, entry by entry, never
unpacked), a folder of its XML files, or one file. File names are matched
case-insensitively (Posts.xml, posts.xml, ...); a single file is recognised by its
root element (<posts>, <users>, ...). The site name defaults to the archive's name
without `.7z` (or the folder's name, or the single file's folder's name).

One load is one transaction: it deletes the site's rows (from every raw.se_* table for
an archive or a folder; from the one table for a single file) and inserts the new
ones, so a failure anywhere (bad XML, a corrupt archive, Ctrl-C) leaves the warehouse
exactly as it was. Bad input stops the load with a message naming the file and line
and exit status 2.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import os
import queue
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from ingest.se_parse import (
    CorruptSource,
    RowSplitter,
    SEInputError,
    fast_parser_available,
    parse_chunk,
    table_for_root,
)
from ingest.se_tables import TABLES
from ingest.warehouse import (
    WarehouseBusy,
    db_path,
    writer_transaction,
)

BLOCK_BYTES = 1 << 20
# Rows per DuckDB row group while loading (DuckDB's default is 122,880, ~140 MB of
# Posts: the whole of a small site would be compressed in one piece at commit).
LOAD_ROW_GROUP_SIZE = 16_384
INGEST_MEMORY_LIMIT = "1GB"  # SFTSCOPE_INGEST_MEMORY_LIMIT overrides
_BY_FILE = {t.file.lower(): t.name for t in TABLES.values()}
_ARCHIVE_SUFFIXES = (".7z", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.xz")


@dataclass
class LoadOptions:
    site: str | None = None
    db: str | os.PathLike | None = None
    workers: int = max(1, os.cpu_count() or 1)
    chunk_bytes: int = 4 << 20
    parallel_min_bytes: int = 16 << 20  # smaller files are parsed in-process
    skip_bad_rows: bool = False
    progress: bool = True
    allow_repeated_ids: bool = False  # load a file with a row Id twice as it is


@dataclass
class FileReport:
    table: str
    source: str
    rows_read: int = 0
    rows_loaded: int = 0
    rows_dropped_fabricated: int = 0
    rows_skipped: int = 0
    unknown_attributes: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        """One line of the load report for this file."""
        mb = self.bytes / 1e6
        rate = mb / self.seconds if self.seconds > 0 else float("inf")
        s = (
            f"raw.{self.table:<16} {self.rows_loaded:>10,} rows  {mb:9.1f} MB"
            f" {self.seconds:7.1f} s {rate:7.1f} MB/s  <- {self.source}"
        )
        if self.rows_dropped_fabricated:
            s += f"  (dropped {self.rows_dropped_fabricated} fabricated rows)"
        if self.rows_skipped:
            s += f"  (skipped {self.rows_skipped} bad rows)"
        return s


@dataclass
class LoadReport:
    site: str
    db: Path
    files: list[FileReport] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def by_table(self) -> dict[str, FileReport]:
        """The file reports by raw table."""
        return {f.table: f for f in self.files}


@dataclass
class _Source:
    """One dump file to read: its display name and a way to stream its bytes."""

    name: str
    table: str | None  # from the file name; None: decide from the root element
    size: int | None
    blocks: Callable[[], Iterator[bytes]]


# ---------------------------------------------------------------- finding files


def default_site(path: Path) -> str:
    """The site a dump path names: the archive's name without its suffix (and
    stackoverflow's -Posts), else the folder's name."""
    name = path.name
    if path.is_file():
        for suf in _ARCHIVE_SUFFIXES:
            if name.lower().endswith(suf):
                stem = name[: -len(suf)]
                # stackoverflow ships one archive per file: stackoverflow.com-Posts.7z
                files = "|".join(t.file[:-4] for t in TABLES.values())
                return re.sub(rf"-(?:{files})$", "", stem, flags=re.I)
        return path.resolve().parent.name
    return path.resolve().name


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(_ARCHIVE_SUFFIXES)


def _file_blocks(path: Path) -> Callable[[], Iterator[bytes]]:
    def gen() -> Iterator[bytes]:
        with open(path, "rb") as f:
            while block := f.read(BLOCK_BYTES):
                yield block

    return gen


def _archive_sources(path: Path, report: LoadReport) -> Iterator[_Source]:
    """Entries of an archive, streamed in archive order (libarchive decompresses
    block by block; nothing is unpacked to disk)."""
    import libarchive
    from libarchive.exception import ArchiveError

    try:
        with libarchive.file_reader(str(path)) as archive:
            it = iter(archive)
            while True:
                try:
                    entry = next(it)
                except StopIteration:
                    return
                base = entry.pathname.rsplit("/", 1)[-1]
                table = _BY_FILE.get(base.lower())
                if not entry.isfile or table is None:
                    if entry.isfile:
                        report.ignored.append(f"{path.name}!{entry.pathname}")
                    continue

                def blocks(entry=entry) -> Iterator[bytes]:
                    try:
                        yield from entry.get_blocks(BLOCK_BYTES)
                    except ArchiveError as exc:
                        raise CorruptSource(f"corrupt archive: {exc}") from exc

                yield _Source(f"{path.name}!{entry.pathname}", table, entry.size, blocks)
    except ArchiveError as exc:
        raise SEInputError(f"{path}: corrupt or unreadable archive: {exc}") from exc


def _sources(path: Path, report: LoadReport) -> tuple[bool, Iterator[_Source]]:
    """(whole site?, the files to load)."""
    if not path.exists():
        raise SEInputError(f"{path}: no such file or folder")
    if path.is_dir():
        files = []
        for p in sorted(path.iterdir()):
            table = _BY_FILE.get(p.name.lower())
            if table is None:
                if p.is_file() and p.suffix.lower() == ".xml":
                    report.ignored.append(str(p))
                continue
            files.append(_Source(str(p), table, p.stat().st_size, _file_blocks(p)))
        if not files:
            raise SEInputError(f"{path}: no Stack Exchange dump files (Posts.xml, ...)")
        return True, iter(files)
    if _is_archive(path):
        return True, _archive_sources(path, report)
    return False, iter([_Source(str(path), None, path.stat().st_size, _file_blocks(path))])


# ---------------------------------------------------------------- loading


class _Pool:
    """Parser workers started on first use, shared by all the files of one load:
    threads when the C parser is built (it releases the GIL while it scans), else
    processes (spawned: safe next to DuckDB's threads, and apart from the fork
    server that the app's SQL console starts, whose preloads and state are
    process-wide)."""

    def __init__(self, workers: int):
        self.workers = workers
        self.threads = fast_parser_available()
        self._ex: cf.Executor | None = None

    def get(self) -> cf.Executor:
        if self._ex is None and self.threads:
            self._ex = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="se-parse")
        if self._ex is None:
            self._ex = cf.ProcessPoolExecutor(self.workers,
                                              mp_context=mp.get_context("spawn"))
        return self._ex

    def close(self) -> None:
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)
            self._ex = None


def _parsed(chunks, table: str, source: str, opts: LoadOptions, pool: _Pool | None):
    """parse_chunk over `chunks`, in order; with a pool, at most 2 chunks per worker
    in flight, so memory stays bounded."""
    if pool is None:
        for data, line in chunks:
            yield parse_chunk(table, source, data, line, opts.skip_bad_rows)
        return
    if pool.threads:
        yield from _parsed_ahead(chunks, table, source, opts, pool)
        return
    ex = pool.get()
    window: deque[cf.Future] = deque()
    try:
        for data, line in chunks:
            window.append(
                ex.submit(parse_chunk, table, source, data, line, opts.skip_bad_rows)
            )
            if len(window) >= 2 * pool.workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        for fut in window:
            fut.cancel()


def _parsed_ahead(chunks, table: str, source: str, opts: LoadOptions, pool: _Pool):
    """The thread-pool path of _parsed: a reader thread splits the file and submits
    chunks while DuckDB, pulling from this generator, only takes finished tables, so
    reading, parsing and DuckDB's compression of the previous row group overlap."""
    ex = pool.get()
    ahead: queue.Queue = queue.Queue(maxsize=2 * pool.workers)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for data, line in chunks:
                fut = ex.submit(parse_chunk, table, source, data, line, opts.skip_bad_rows)
                if not put(fut):
                    fut.cancel()
                    return
            put(done)
        except BaseException as exc:  # a bad or truncated file: raised in the consumer
            put(exc)

    reader = threading.Thread(target=read, name="se-read", daemon=True)
    reader.start()
    try:
        while (item := ahead.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item.result()
    finally:
        stop.set()
        while True:  # let the reader see `stop`, cancel what it queued
            try:
                item = ahead.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, cf.Future):
                item.cancel()
        reader.join()


def _table_of(src: _Source, splitter: RowSplitter) -> str:
    """The raw table of `src`, from its root element (which must be the one its
    file name says, where it says one)."""
    table = table_for_root(splitter.root)
    if src.table is not None and table != src.table:
        expected = TABLES[src.table].root
        raise SEInputError(
            f"{src.name}: line {splitter._line}: root element <{splitter.root}>,"
            f" expected <{expected}>"
        )
    if table is None:
        raise SEInputError(
            f"{src.name}: line {splitter._line}: root element <{splitter.root}> is"
            " not a Stack Exchange dump table (posts, users, comments, votes,"
            " badges, postlinks, posthistory, tags)"
        )
    return table


def _load_source(con, src: _Source, site: str, opts: LoadOptions, pool, replaced,
                 report: LoadReport) -> FileReport:
    t0 = time.perf_counter()
    bar = None
    if opts.progress:
        from tqdm import tqdm

        bar = tqdm(
            total=src.size, unit="B", unit_scale=True, unit_divisor=1000,
            desc=Path(src.name).name[-40:], leave=True, dynamic_ncols=True,
            file=sys.stderr,
        )
    try:
        splitter = RowSplitter(src.name, src.blocks(), bar.update if bar else None)
        table = _table_of(src, splitter)
        if table in replaced:
            raise SEInputError(f"{src.name}: a second file for raw.{table}")
        if table not in replaced:
            con.execute(f"delete from raw.{table} where site = ?", [site])
            replaced.add(table)
        fr = FileReport(table, src.name)
        use_pool = pool if pool is not None and (
            pool.threads or src.size is None or src.size >= opts.parallel_min_bytes
        ) else None
        chunks = splitter.chunks(opts.chunk_bytes)
        unknown: set[str] = set()
        failure: list[BaseException] = []

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                for batch, stats in _parsed(chunks, table, src.name, opts, use_pool):
                    fr.rows_read += stats.rows_read
                    fr.rows_dropped_fabricated += stats.rows_dropped_fabricated
                    fr.rows_skipped += len(stats.skipped)
                    for line, reason in stats.skipped:
                        report.notes.append(f"{src.name}: line {line}: skipped: {reason}")
                    new = stats.unknown - unknown
                    if new:
                        unknown.update(new)
                        report.notes.append(
                            f"{src.name}: unknown attribute(s) {', '.join(sorted(new))}:"
                            f" kept in raw.{table}.extra"
                        )
                    fr.rows_loaded += batch.num_rows
                    if bar is not None:
                        bar.set_postfix(rows=f"{fr.rows_loaded:,}", refresh=False)
                    yield from batch.to_batches()
            except BaseException as exc:
                failure.append(exc)  # DuckDB wraps it: re-raised as is below
                raise

        # One INSERT streaming every chunk: DuckDB writes (and compresses) full row
        # groups while the workers parse the next chunks, and memory stays bounded.
        schema = parse_chunk(table, src.name, b"", 1)[0].schema
        reader = pa.RecordBatchReader.from_batches(schema, batches())
        con.register("_se_stream", reader)
        try:
            con.execute(
                f"insert into raw.{table} by name"
                " select ?::varchar as site, * from _se_stream", [site],
            )
        except Exception:
            if failure:
                raise failure[0] from None
            raise
        else:
            con.unregister("_se_stream")  # on error the rollback drops it
        if not opts.allow_repeated_ids:
            _refuse_repeated_ids(con, table, site, src.name)
        fr.unknown_attributes = sorted(unknown)
        fr.bytes = splitter.bytes_read
        fr.seconds = time.perf_counter() - t0
        return fr
    finally:
        if bar is not None:
            bar.close()


def _refuse_repeated_ids(con, table: str, site: str, source: str) -> None:
    """SEInputError when a row Id of the file just inserted is there twice (the
    dump's key; the marts would count its post twice, and dbt's unique tests fail):
    the caller's transaction rolls back, so the warehouse is unchanged."""
    dup = con.execute(
        f"select id, count(*) from raw.{table} where site = ? and id is not null "
        "group by id having count(*) > 1 order by id limit 1", [site]).fetchone()
    if dup:
        n = con.execute(f"select count(*) from (select id from raw.{table} where "
                        "site = ? and id is not null group by id having count(*) > 1)",
                        [site]).fetchone()[0]
        raise SEInputError(f"{source}: row Id {dup[0]} appears {dup[1]} times ({n} Id"
                           f"(s) repeated); a dump file has one row per Id "
                           "(--allow-repeated-ids loads it as it is)")


def configure_load(con: duckdb.DuckDBPyConnection) -> None:
    """DuckDB settings of a bulk load (the connection is attached with
    LOAD_ROW_GROUP_SIZE-row groups)."""
    # DuckDB's buffer (written row groups, uncommitted rows) stays under this; beyond
    # it DuckDB evicts or spills to disk, so memory is flat whatever the file's size
    # (its own default is 80% of the machine's memory)
    limit = os.environ.get("SFTSCOPE_INGEST_MEMORY_LIMIT") or INGEST_MEMORY_LIMIT
    con.execute("set memory_limit = ?", [limit])
    # Rows of a file may land in any order (every query orders explicitly): then
    # DuckDB compresses and writes row groups on all its threads, not on one (1.8x on
    # 2 cores, bench/ingest.py)
    con.execute("set preserve_insertion_order = false")
    # DuckDB >= 1.4 buffers 5 full row groups before it compresses and writes them,
    # which on a 100 MB file leaves most of that work until the parsing is over; one
    # at a time overlaps it with the parsing (~8% faster end to end, bench/ingest.py,
    # and a little less memory)
    with contextlib.suppress(duckdb.CatalogException):  # older DuckDB
        con.execute("set write_buffer_row_group_count = 1")


def load(path: str | os.PathLike, opts: LoadOptions | None = None, **kw) -> LoadReport:
    """Load a site's dump (see the module docstring); returns what was loaded.

    Raises SEInputError on bad input, with the warehouse unchanged.
    """
    opts = opts or LoadOptions(**kw)
    path = Path(path)
    site = opts.site or default_site(path)
    report = LoadReport(site, db_path(opts.db))
    t0 = time.perf_counter()
    whole_site, sources = _sources(path, report)
    pool = _Pool(opts.workers) if opts.workers > 1 else None
    replaced: set[str] = set()
    try:
        with writer_transaction(opts.db, setup=configure_load,
                                row_group_size=LOAD_ROW_GROUP_SIZE) as con:
            for src in sources:
                report.files.append(
                    _load_source(con, src, site, opts, pool, replaced, report)
                )
            if not report.files:
                raise SEInputError(f"{path}: no Stack Exchange dump files inside")
            if whole_site:  # the site is what this dump says: drop other tables
                for name in TABLES:
                    if name not in replaced:
                        con.execute(f"delete from raw.{name} where site = ?", [site])
                con.execute("delete from raw.se_loads where site = ?", [site])
            else:
                con.execute(
                    "delete from raw.se_loads where site = ? and table_name = ?",
                    [site, report.files[0].table],
                )
            report.seconds = time.perf_counter() - t0
            for fr in report.files:
                con.execute(
                    "insert into raw.se_loads values"
                    " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, current_timestamp::timestamp)",
                    [site, fr.table, fr.source, fr.rows_read, fr.rows_loaded,
                     fr.rows_dropped_fabricated, fr.rows_skipped,
                     fr.unknown_attributes, fr.bytes, fr.seconds],
                )
    finally:
        if pool is not None:
            pool.close()
    return report


def main(argv: list[str] | None = None) -> int:
    """python -m ingest.stackexchange PATH: load a site's dump; exit status."""
    ap = argparse.ArgumentParser(
        prog="python -m ingest.stackexchange",
        description="Load one Stack Exchange site's dump (.7z, folder, or one XML file)"
        " into the warehouse's raw.se_* tables, replacing that site's rows.",
    )
    ap.add_argument("path", help="the site's .7z, a folder of its XML files, or one file")
    ap.add_argument("--site", help="site name (default: from the archive/folder name)")
    ap.add_argument("--db", help="warehouse file (default $SFTSCOPE_DB or"
                    " data/warehouse.duckdb)")
    ap.add_argument("--workers", type=int, default=LoadOptions.workers,
                    help="parser processes (default: one per core)")
    ap.add_argument("--chunk-mb", type=float, default=4.0,
                    help="bytes of XML per parsed chunk, in MB (default 4)")
    ap.add_argument("--skip-bad-rows", action="store_true",
                    help="skip rows without an Id (reported) instead of failing")
    ap.add_argument("--allow-repeated-ids", action="store_true",
                    help="load a file whose row Ids repeat as it is (a test file "
                    "made of copies); by default it is refused, since the marts "
                    "count each Id once and dbt's unique tests fail")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    opts = LoadOptions(
        site=args.site, db=args.db, workers=max(1, args.workers),
        chunk_bytes=max(1 << 16, int(args.chunk_mb * 1e6)),
        skip_bad_rows=args.skip_bad_rows, allow_repeated_ids=args.allow_repeated_ids,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    try:
        report = load(args.path, opts)
    except SEInputError as exc:
        print(f"error: {exc}\nNothing was changed in the warehouse.", file=sys.stderr)
        return 2
    except WarehouseBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted: nothing was changed in the warehouse.", file=sys.stderr)
        return 130
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    for ignored in report.ignored:
        print(f"note: ignored {ignored} (not a dump file name)", file=sys.stderr)
    print(f"site {report.site} -> {report.db}")
    for fr in report.files:
        print("  " + fr.line())
    total = sum(f.bytes for f in report.files) / 1e6
    print(f"  {total:.1f} MB in {report.seconds:.1f} s"
          f" ({total / max(report.seconds, 1e-9):.1f} MB/s), one transaction")
    return 0


if __name__ == "__main__":
    sys.exit(main())
