"""Read-only, short-lived access to the warehouse for the app.

    from app_lib.db import query
    df = query("select * from marts.dim_pairs where pair = ?", ["7B"])

Every call opens its own `read_only` connection, runs one query and closes it before
returning, so ingest and `dbt run` (which cannot open the file while any other process
holds it) can take the file between two queries. When a writer holds the file, the
open is retried a bounded number of times (`ATTEMPTS`, with a doubling pause) and
then `WarehouseBusy` is raised; the page says so and offers a retry.

All connections share one configuration, `APP_CONFIG`: external access off (no file
reading functions, no ATTACH, COPY, INSTALL) and the configuration locked (no SET can
turn it back on). DuckDB keeps one database instance per file and process, and refuses
a second connection with a different configuration while one is open, so the SQL
console uses the same configuration as every page.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pandas as pd

from ingest.warehouse import WarehouseBusy, db_path, lock_holder

__all__ = ["APP_CONFIG", "ATTEMPTS", "WarehouseBusy", "WarehouseMissing", "connect",
           "query", "retry_count", "source"]

ATTEMPTS = int(os.environ.get("SFTSCOPE_APP_ATTEMPTS", "5"))
FIRST_PAUSE_S = 0.2
APP_CONFIG: dict[str, str | bool | int] = {
    "enable_external_access": False,
    "lock_configuration": True,
}

_local = threading.local()


class WarehouseMissing(FileNotFoundError):
    """The warehouse file does not exist (nothing has been built yet)."""


def source() -> tuple[str, int]:
    """(path, change stamp) of the warehouse: the cache key of every query, so a
    rebuild (the file or its WAL changes) invalidates cached results."""
    path = db_path().resolve()
    stamp = 0
    for p in (path, path.with_name(path.name + ".wal")):
        try:
            st = p.stat()
        except OSError:
            continue
        stamp += st.st_mtime_ns + st.st_size
    return str(path), stamp


def retry_count() -> int:
    """Lock retries made so far by this thread (the page reports new ones)."""
    return getattr(_local, "retries", 0)


def _is_busy(exc: Exception) -> bool:
    text = str(exc)
    return ("Could not set lock" in text or "Conflicting lock" in text
            or "different configuration" in text)


@contextmanager
def connect(path: str | os.PathLike | None = None, *,
            attempts: int | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection with `APP_CONFIG`, closed on exit.

    Raises WarehouseMissing if the file does not exist, WarehouseBusy after
    `attempts` lock errors in a row.
    """
    path = Path(path) if path is not None else db_path()
    if not path.exists():
        raise WarehouseMissing(f"warehouse {path} does not exist yet")
    attempts = ATTEMPTS if attempts is None else max(1, attempts)
    pause = FIRST_PAUSE_S
    for attempt in range(1, attempts + 1):
        try:
            con = duckdb.connect(str(path), read_only=True, config=dict(APP_CONFIG))
            break
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            if not _is_busy(exc):
                raise
            if attempt == attempts:
                raise WarehouseBusy(
                    f"the warehouse {path} is being written by {lock_holder(exc)}; "
                    f"tried {attempts} times over about "
                    f"{FIRST_PAUSE_S * (2 ** (attempts - 1) - 1):.1f} s"
                ) from exc
            _local.retries = retry_count() + 1
            time.sleep(pause)
            pause *= 2
    try:
        yield con
    finally:
        con.close()


def query(sql: str, params: list | None = None, *,
          path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Open, run `sql`, fetch the whole result as a DataFrame, close."""
    with connect(path) as con:
        return con.execute(sql, params or []).df()
