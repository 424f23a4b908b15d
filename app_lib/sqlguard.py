"""The SQL console's guard: one read-only query, bounded in rows, time, memory,
threads and temporary disk, in a process of its own.

    from app_lib.sqlguard import check, run_readonly, QueryRefused, LimitExceeded
    check("select * from marts.dim_pairs")       # raises QueryRefused if not allowed
    result = run_readonly(sql, max_rows=10_000, timeout_s=10)

Three layers, any one of which would stop a write:
1. `check` parses the text with DuckDB's own parser: exactly one statement, of type
   SELECT (DESCRIBE, SHOW, SUMMARIZE, FROM-first and VALUES parse as SELECT; PIVOT as
   a MULTI statement whose first word is PIVOT/UNPIVOT), starting with an allowed
   word; no file-reading or query-running function (read_csv, read_parquet,
   read_text, glob, query, ...), no string literal used as a table ('file.csv').
2. The connection is read_only (app_lib.db).
3. External access is off and the configuration locked (app_lib.db.APP_CONFIG), so
   ATTACH, COPY, INSTALL, LOAD and every file read fail inside DuckDB too.

Then the query runs in a child process (forked from a small server process that has
DuckDB and pandas loaded, so a query starts in milliseconds), never in the app's:
- DuckDB's limits (app_lib.db.LIMITS: memory_limit, threads, max_temp_directory_size,
  a temporary folder of the query's own, removed afterwards);
- the process's data size capped (RLIMIT_DATA) at the memory limit plus
  `PROCESS_HEADROOM`: DuckDB's memory_limit bounds its buffer pool, not every
  allocation (`select list(range(400000000))` builds one 3.2 GB value and grew to
  15 GB under a 500 MB memory_limit); under the cap that allocation fails at once
  with DuckDB's "Out of Memory" error;
- killed at `timeout_s` (DuckDB's interrupt is checked between vectors, and that
  query ignored it for over a minute); the app's process never holds the result
  of more than `max_rows` + 1 rows, nor more than `MAX_BYTES` of it (50MB,
  SFTSCOPE_CONSOLE_MAX_BYTES: 10,001 rows of 25 kB strings took the app from 157 MB
  to 873 MB before).
Over a limit, `LimitExceeded` (memory, temporary disk) or `TimeoutError` says which
limit and the setting that raises it.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from app_lib import db
from app_lib.db import LIMITS, Limits, size_bytes

MAX_ROWS = int(os.environ.get("SFTSCOPE_CONSOLE_MAX_ROWS", "10000"))
MAX_BYTES = os.environ.get("SFTSCOPE_CONSOLE_MAX_BYTES", "50MB")  # of result data
BATCH_ROWS = 256  # rows fetched at a time while counting a result's bytes
TIMEOUT_S = float(os.environ.get("SFTSCOPE_CONSOLE_TIMEOUT", "15"))
PROCESS_HEADROOM = 768 * 2**20  # Python, pandas and the result, beside DuckDB's memory
MAX_CHARS = 20_000

ALLOWED_FIRST = {"select", "with", "from", "pivot", "unpivot", "describe", "desc",
                 "show", "summarize", "values", "table", "("}
FORBIDDEN_WORDS = {"attach", "detach", "copy", "install", "load", "export", "import",
                   "pragma", "set", "reset", "call", "checkpoint", "vacuum", "use",
                   "insert", "update", "delete", "create", "drop", "alter",
                   "truncate", "merge", "begin", "commit", "rollback", "grant"}
# Functions that read files, URLs or run SQL text.
FORBIDDEN_FUNCS = re.compile(
    r"^(read_\w+|\w+_scan|glob|query|query_table|sniff_csv|parquet_\w+|iceberg_\w+|"
    r"delta_\w+|getenv|http_\w+|load_\w+|duckdb_secrets|which_secret|"
    r"duckdb_extensions|pragma_\w+|json_execute_serialized_sql|from_substrait\w*)$",
    re.IGNORECASE)


class QueryRefused(ValueError):
    """The text is not a single read-only query."""


class LimitExceeded(RuntimeError):
    """The query needed more memory or temporary disk than the console allows."""


@dataclass
class Result:
    frame: pd.DataFrame
    truncated: bool
    seconds: float
    cut_bytes: bool = False  # cut at max_bytes of data (before max_rows)


def _strip(sql: str) -> tuple[str, list[str]]:
    """`sql` with comments removed and string literals replaced by '' (their contents
    returned separately), so words inside strings are not mistaken for keywords."""
    out, strings, i, n = [], [], 0, len(sql)
    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
            out.append(" ")
        elif c in "'\"":
            j = i + 1
            while j < n:
                if sql[j] == c and sql.startswith(c * 2, j):
                    j += 2
                    continue
                if sql[j] == c:
                    break
                j += 1
            body = sql[i + 1:j]
            if c == "'":
                strings.append(body)
                out.append("''")
            else:
                out.append('"' + re.sub(r"\W", "_", body) + '"')
            i = j + 1
        elif c == "$" and re.match(r"\$\w*\$", sql[i:]):
            tag = re.match(r"\$\w*\$", sql[i:]).group(0)
            j = sql.find(tag, i + len(tag))
            strings.append(sql[i + len(tag):j if j >= 0 else n])
            out.append("''")
            i = n if j < 0 else j + len(tag)
        else:
            out.append(c)
            i += 1
    return "".join(out), strings


def check(sql: str) -> str:
    """The statement to run, or QueryRefused with the reason."""
    text = sql.strip().rstrip(";").strip()
    if not text:
        raise QueryRefused("Nothing to run.")
    if len(text) > MAX_CHARS:
        raise QueryRefused(f"Queries are limited to {MAX_CHARS} characters.")
    try:
        statements = duckdb.extract_statements(text)
    except duckdb.Error as exc:
        raise QueryRefused(f"DuckDB cannot parse this: {exc}") from exc
    if len(statements) != 1:
        raise QueryRefused(f"One statement at a time, please ({len(statements)} "
                           "given).")
    bare, _ = _strip(text)
    words = re.findall(r"[A-Za-z_][A-Za-z_0-9]*|\(", bare)
    first = words[0].lower() if words else ""
    kind = statements[0].type
    if first not in ALLOWED_FIRST:
        raise QueryRefused(f"Only read-only queries run here (SELECT, WITH, FROM, "
                           f"PIVOT, DESCRIBE, SHOW, SUMMARIZE); this starts with "
                           f"{first.upper() or '?'}.")
    if kind == duckdb.StatementType.MULTI:
        if first not in ("pivot", "unpivot"):
            raise QueryRefused("Only read-only queries run here.")
    elif kind != duckdb.StatementType.SELECT:
        raise QueryRefused(f"Only read-only queries run here; this is a "
                           f"{kind.name} statement.")
    lowered = {w.lower() for w in words}
    bad = sorted(lowered & FORBIDDEN_WORDS)
    # A forbidden word is fine as a quoted identifier or a column name only when it
    # is not a statement keyword; DuckDB would have parsed a statement of that kind,
    # so only SET/LOAD/... used as plain names get here. Be strict anyway.
    if bad:
        raise QueryRefused(f"Not allowed in the console: {', '.join(bad).upper()}.")
    for fn in re.findall(r"([A-Za-z_][A-Za-z_0-9]*)\s*\(", bare):
        if FORBIDDEN_FUNCS.match(fn):
            raise QueryRefused(f"{fn}() reads files or runs SQL text; the console "
                               "only reads the warehouse's tables.")
    if re.search(r"\b(from|join)\s*''", bare, re.IGNORECASE):
        raise QueryRefused("Reading a file by its name is not allowed; query the "
                           "warehouse's tables.")
    return text


def run_readonly(sql: str, *, max_rows: int = MAX_ROWS, timeout_s: float = TIMEOUT_S,
                 path=None, limits: Limits | None = None,
                 max_bytes: str | int | None = None) -> Result:
    """Check `sql`, run it in a child process on a fresh read-only connection with
    `limits` (default app_lib.db.LIMITS), return at most `max_rows` rows and about
    `max_bytes` of data (Arrow's size: the first rows that fit, at least one). Over
    the time limit: TimeoutError; over memory or temporary disk: LimitExceeded."""
    text = check(sql)
    limits = limits or LIMITS
    cap = max_bytes if isinstance(max_bytes, int) else _cap(max_bytes or MAX_BYTES)
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="sftscope-console-")
    ctx = _context()
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, daemon=True, name="sftscope-console",
                       # the path is resolved here: the child has the server's env
                       args=(send, text, str(Path(path or db.db_path()).absolute()),
                             max_rows, limits, tmp, cap))
    try:
        proc.start()
        send.close()
        if not receive.poll(timeout_s):
            raise TimeoutError(f"The query ran over {timeout_s:g} s and was stopped "
                               "(SFTSCOPE_CONSOLE_TIMEOUT).")
        try:
            kind, payload, retries = receive.recv()
        except EOFError:  # the child died without a word: killed by the system
            proc.join(5)
            raise LimitExceeded(
                f"The query's process ended (exit status {proc.exitcode}), most "
                f"likely out of memory; the console allows {limits.memory} "
                "(SFTSCOPE_APP_MEMORY_LIMIT).") from None
    finally:
        receive.close()
        if proc.is_alive():
            proc.kill()
        proc.join()
        shutil.rmtree(tmp, ignore_errors=True)
    if retries:
        db.count_retries(retries)
    if kind == "error":
        raise _explain(payload, limits)
    frame, cut_bytes = payload
    truncated = cut_bytes or len(frame) > max_rows
    return Result(frame.iloc[:max_rows], truncated, time.monotonic() - started,
                  cut_bytes)


def _cap(text: str) -> int:
    try:
        return size_bytes(text)
    except ValueError as exc:
        raise ValueError(f"SFTSCOPE_CONSOLE_MAX_BYTES: {exc}") from None


def _explain(exc: BaseException, limits: Limits) -> BaseException:
    """The child's exception, or a LimitExceeded naming the limit it hit."""
    text = str(exc)
    if isinstance(exc, duckdb.OutOfMemoryException | MemoryError):
        first = text.split("\n", 1)[0]
        if "max_temp_directory_size" in text:
            return LimitExceeded(
                f"The query needed more temporary disk than the console allows "
                f"({limits.temp}, SFTSCOPE_APP_TEMP_LIMIT) and was stopped. {first}")
        return LimitExceeded(
            f"The query needed more memory than the console allows ({limits.memory}, "
            f"SFTSCOPE_APP_MEMORY_LIMIT) and was stopped. {first}")
    return exc


def _context():
    """The forkserver that forks each query's process (started once, on first use)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["app_lib.sqlguard"])
    return ctx


def _fetch(rel, max_rows: int, max_bytes: int) -> tuple[pd.DataFrame, bool]:
    """At most max_rows + 1 rows of `rel`, fetched BATCH_ROWS at a time, stopping
    before the rows pass `max_bytes` of Arrow data (the first row always comes);
    whether the bytes cut it."""
    import pyarrow as pa

    reader = rel.limit(max_rows + 1).fetch_arrow_reader(BATCH_ROWS)
    kept, size, cut = [], 0, False
    for batch in reader:
        if size + batch.nbytes > max_bytes:  # row by row within the last batch
            for i in range(batch.num_rows):
                row = batch.slice(i, 1)
                if size + row.nbytes > max_bytes and (size or i):
                    cut = True
                    break
                kept.append(row)
                size += row.nbytes
            if cut:
                break
            continue
        kept.append(batch)
        size += batch.nbytes
    table = pa.Table.from_batches(kept, schema=reader.schema)
    return table.to_pandas(), cut


def _child(send, text: str, path: str, max_rows: int, limits: Limits,
           tmp: str, max_bytes: int) -> None:
    try:
        cap = size_bytes(limits.memory) + PROCESS_HEADROOM
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
        config = {**db.APP_CONFIG, **limits.config(tmp)}
        with db.connect(path, config=config) as con:
            rel = con.sql(text)
            if rel is None:
                raise QueryRefused("This statement returns no rows.")
            result = _fetch(rel, max_rows, max_bytes)
        message = ("ok", result, db.retry_count())
    except BaseException as exc:
        message = ("error", exc, db.retry_count())
    try:
        send.send(message)
    except Exception as exc:  # an exception that does not pickle, a result too big
        send.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}"), 0))
    send.close()
