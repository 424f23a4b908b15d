"""The SQL console's guard: only one read-only query, a row limit and a time limit.

    from app_lib.sqlguard import check, run_readonly, QueryRefused
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
Then the result is cut at `max_rows` and the query interrupted after `timeout_s`.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

import duckdb
import pandas as pd

from app_lib.db import connect

MAX_ROWS = 10_000
TIMEOUT_S = 15.0
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


@dataclass
class Result:
    frame: pd.DataFrame
    truncated: bool
    seconds: float


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
                 path=None) -> Result:
    """Check `sql`, run it on a fresh read-only connection, return at most
    `max_rows` rows; interrupt it after `timeout_s` (TimeoutError)."""
    text = check(sql)
    started = time.monotonic()
    with connect(path) as con:
        timed_out = threading.Event()

        def stop() -> None:
            timed_out.set()
            con.interrupt()

        timer = threading.Timer(timeout_s, stop)
        timer.daemon = True
        timer.start()
        try:
            rel = con.sql(text)
            if rel is None:
                raise QueryRefused("This statement returns no rows.")
            frame = rel.limit(max_rows + 1).df()
        except duckdb.InterruptException as exc:
            raise TimeoutError(f"The query ran over {timeout_s:g} s and was "
                               "stopped.") from exc
        except duckdb.Error as exc:
            if timed_out.is_set():
                raise TimeoutError(f"The query ran over {timeout_s:g} s and was "
                                   "stopped.") from exc
            raise
        finally:
            timer.cancel()
    truncated = len(frame) > max_rows
    return Result(frame.iloc[:max_rows], truncated, time.monotonic() - started)
