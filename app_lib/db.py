"""Read-only, short-lived access to the warehouse for the app.

    from app_lib.db import query
    df = query("select * from marts.dim_pairs where pair = ?", ["7B"])

Every call opens its own `read_only` connection to the warehouse's current published
snapshot (ingest.snapshot: writers never wait for the app, nor the app for them),
runs one query and closes it before returning. Once the warehouse has a snapshot the
app never opens the warehouse file itself; `notice()` says when the warehouse changed
after its snapshot (every page shows it, with the command that publishes it). Only
without a snapshot (none published yet, or SFTSCOPE_SNAPSHOTS=0) does it read the file
itself, so ingest and `dbt run` (which cannot open the file while any other process
holds it) can take the file between two queries; when a writer holds the file then,
the open is retried a bounded number of times (`ATTEMPTS`, with a doubling pause) and
then `WarehouseBusy` is raised; the page says so and offers a retry.

All connections share one configuration, `APP_CONFIG`: external access off (no file
reading functions, no ATTACH, COPY, INSTALL), the configuration locked (no SET can
turn it back on), and the resource limits of `LIMITS`: DuckDB's memory limit
($SFTSCOPE_APP_MEMORY_LIMIT, default 2GB), its worker threads ($SFTSCOPE_APP_THREADS,
default 2) and the size of its temporary files ($SFTSCOPE_APP_TEMP_LIMIT, default
4GB, in a folder of this process under the system's temporary directory). DuckDB
keeps one database instance per file and process, and refuses a second connection
with a different configuration while one is open, so every page uses the same one.
The SQL console runs each query in a process of its own (app_lib.sqlguard).
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from ingest import snapshot
from ingest.warehouse import WarehouseBusy, db_path, lock_holder

__all__ = ["APP_CONFIG", "ATTEMPTS", "LIMITS", "Limits", "WarehouseBusy", "WarehouseMissing", "connect",
           "notice", "query", "retry_count", "source"]

ATTEMPTS = int(os.environ.get("SFTSCOPE_APP_ATTEMPTS", "5"))
FIRST_PAUSE_S = 0.2

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def size_bytes(text: str) -> int:
    """'2GB' -> 2_000_000_000, '512MiB' -> 536_870_912 (DuckDB's units: KB, MB, GB
    are powers of 1000, KiB, MiB, GiB of 1024)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([KMGT]i?B|B)?\s*", text, re.I)
    if not m:
        raise ValueError(f"not a size: {text!r} (say e.g. 2GB, 512MiB)")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])


@dataclass(frozen=True)
class Limits:
    """What one app connection may use (DuckDB settings; sizes as DuckDB writes them).
    Each field's environment variable overrides its default."""

    memory: str = "2GB"       # SFTSCOPE_APP_MEMORY_LIMIT: DuckDB memory_limit
    threads: int = 2          # SFTSCOPE_APP_THREADS
    temp: str = "4GB"         # SFTSCOPE_APP_TEMP_LIMIT: max_temp_directory_size

    @classmethod
    def from_env(cls) -> Limits:
        env, d = os.environ, cls()
        out = cls(env.get("SFTSCOPE_APP_MEMORY_LIMIT", d.memory),
                  int(env.get("SFTSCOPE_APP_THREADS", d.threads)),
                  env.get("SFTSCOPE_APP_TEMP_LIMIT", d.temp))
        for name, value in (("SFTSCOPE_APP_MEMORY_LIMIT", out.memory),
                            ("SFTSCOPE_APP_TEMP_LIMIT", out.temp)):
            try:
                size_bytes(value)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        if out.threads < 1:
            raise ValueError("SFTSCOPE_APP_THREADS: at least 1")
        return out

    def config(self, temp_directory: str | os.PathLike) -> dict[str, str | int]:
        return {"memory_limit": self.memory, "threads": self.threads,
                "max_temp_directory_size": self.temp,
                "temp_directory": str(temp_directory)}


LIMITS = Limits.from_env()
APP_CONFIG: dict[str, str | bool | int] = {
    "enable_external_access": False,
    "lock_configuration": True,
    **LIMITS.config(Path(tempfile.gettempdir()) / f"sftscope-app-{os.getpid()}"),
}

_local = threading.local()


class WarehouseMissing(FileNotFoundError):
    """The warehouse file does not exist (nothing has been built yet)."""


def source() -> tuple[str, int]:
    """(path, change stamp) of what the app reads: the warehouse's current snapshot
    (ingest.snapshot), or the file itself where it has none. It is the cache key of
    every query, and every query of one page run reads that same file, so a page
    shows one state of the warehouse; a new snapshot (or a change of the file or its
    WAL) invalidates cached results."""
    primary = db_path()
    path = (snapshot.reader_path(primary) if primary.exists() else primary).resolve()
    stamp = 0
    for p in (path, path.with_name(path.name + ".wal")):
        try:
            st = p.stat()
        except OSError:
            continue
        stamp += st.st_mtime_ns + st.st_size
    return str(path), stamp


def notice() -> snapshot.Notice | None:
    """What the page should say about the snapshot it reads: that the warehouse is
    being written, or changed after its last snapshot (and how to publish it); None
    when the snapshot holds all of it or there is none (snapshot.notice)."""
    return snapshot.notice(db_path())


def retry_count() -> int:
    """Lock retries made so far by this thread (the page reports new ones)."""
    return getattr(_local, "retries", 0)


def count_retries(n: int) -> None:
    """Add `n` retries made on this thread's behalf (by the console's process)."""
    _local.retries = retry_count() + n


def _is_busy(exc: Exception) -> bool:
    text = str(exc)
    return ("Could not set lock" in text or "Conflicting lock" in text
            or "different configuration" in text)


@contextmanager
def connect(path: str | os.PathLike | None = None, *, attempts: int | None = None,
            config: dict | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection with `config` (default `APP_CONFIG`), closed on exit.

    Raises WarehouseMissing if the file does not exist, WarehouseBusy after
    `attempts` lock errors in a row.
    """
    primary = Path(path) if path is not None else db_path()
    if not primary.exists():
        raise WarehouseMissing(f"warehouse {primary} does not exist yet")
    path = snapshot.reader_path(primary)
    attempts = ATTEMPTS if attempts is None else max(1, attempts)
    pause = FIRST_PAUSE_S
    for attempt in range(1, attempts + 1):
        try:
            con = duckdb.connect(str(path), read_only=True,
                                 config=dict(APP_CONFIG if config is None else config))
            break
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            if not _is_busy(exc):
                raise
            published = snapshot.reader_path(primary)
            if published != path:  # published meanwhile: read that, not the file
                path = published
                continue
            if attempt == attempts:
                raise WarehouseBusy(
                    f"the warehouse {path} is being written by {lock_holder(exc)}; "
                    f"tried {attempts} times over about "
                    f"{FIRST_PAUSE_S * (2 ** (attempts - 1) - 1):.1f} s"
                ) from exc
            count_retries(1)
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
