"""The DuckDB warehouse: where it lives, how writers connect, the `raw` tables.

    from ingest.warehouse import connect, ensure_raw_schema
    with connect() as con:            # waits a bounded time for another writer
        ensure_raw_schema(con)

DuckDB allows one writing process per file, and `dbt run` cannot open the file while
any other process holds it, so every connection here is short-lived: open, write in
one transaction, close.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb

DEFAULT_DB = Path("data/warehouse.duckdb")
LOCK_TIMEOUT_S = float(os.environ.get("SFTSCOPE_LOCK_TIMEOUT", "60"))


class WarehouseBusy(RuntimeError):
    """Another process holds the warehouse file and did not let go in time."""


def db_path(explicit: str | os.PathLike | None = None) -> Path:
    """`explicit`, else $SFTSCOPE_DB, else data/warehouse.duckdb."""
    return Path(explicit or os.environ.get("SFTSCOPE_DB") or DEFAULT_DB)


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc)
    return "Could not set lock" in text or "Conflicting lock" in text


def lock_holder(exc: Exception) -> str:
    """'PID n (command line)' of the process a DuckDB lock error names."""
    m = re.search(r"\(PID (\d+)\)", str(exc))
    if not m:
        return "another process"
    pid = m.group(1)
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        return f"PID {pid} ({cmd.strip()[:120]})"
    except OSError:
        return f"PID {pid}"


@contextlib.contextmanager
def connect(
    path: str | os.PathLike | None = None,
    *,
    read_only: bool = False,
    timeout_s: float | None = None,
    config: dict | None = None,
    row_group_size: int | None = None,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse, retrying while another process holds its lock.

    Gives up after `timeout_s` (default $SFTSCOPE_LOCK_TIMEOUT or 60 s) with a
    `WarehouseBusy` that names the holder. `config` goes to duckdb.connect. With
    `row_group_size` the file is attached with that DuckDB ROW_GROUP_SIZE (what this
    connection writes; bulk loads use smaller groups so that DuckDB compresses and
    writes each one while the next is still being parsed). The connection is closed
    on exit.
    """
    path = db_path(path)
    if read_only and not path.exists():
        raise FileNotFoundError(f"warehouse {path} does not exist yet")
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    timeout_s = LOCK_TIMEOUT_S if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    while True:
        try:
            con = _open(path, read_only, config or {}, row_group_size)
            break
        except duckdb.IOException as exc:
            if not _is_lock_error(exc):
                raise
            if time.monotonic() >= deadline:
                raise WarehouseBusy(
                    f"warehouse {path} is held by {lock_holder(exc)}; waited {timeout_s:g} s"
                    " (SFTSCOPE_LOCK_TIMEOUT). Let that process finish or close its"
                    " connection (a notebook, a duckdb shell, a dbt run, another load),"
                    " then try again."
                ) from exc
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    try:
        yield con
    finally:
        con.close()


def _open(path: Path, read_only: bool, config: dict, row_group_size: int | None):
    if row_group_size is None:
        return duckdb.connect(str(path), read_only=read_only, config=config)
    con = duckdb.connect(config=config)
    try:
        opts = f"ROW_GROUP_SIZE {int(row_group_size)}" + (", READ_ONLY" if read_only else "")
        con.execute(f"attach ? as warehouse ({opts})".replace("?", _sql_str(path)))
        con.execute("use warehouse")
        con.execute(f"set temp_directory = {_sql_str(str(path) + '.tmp')}")
    except BaseException:
        con.close()
        raise
    return con


def _sql_str(value) -> str:
    return "'" + str(value).replace("'", "''") + "'"


# The contract tables written by compute.run (see README, "The warehouse").
COMPUTE_TABLES: dict[str, str] = {
    "compute_runs": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        kind VARCHAR NOT NULL,            -- 'spectra' | 'behaviour'
        base_model VARCHAR NOT NULL,
        sft_model VARCHAR NOT NULL,
        base_revision VARCHAR,
        sft_revision VARCHAR,
        code_version VARCHAR,
        device VARCHAR,
        dtype VARCHAR,
        method VARCHAR,
        n_layers INTEGER,
        started_at TIMESTAMP,
        finished_at TIMESTAMP,
        options JSON
    """,
    "spectra": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        base_model VARCHAR NOT NULL,
        sft_model VARCHAR NOT NULL,
        tensor VARCHAR NOT NULL,
        layer INTEGER,
        module VARCHAR NOT NULL,
        role VARCHAR NOT NULL,            -- 'base' | 'sft' | 'delta'
        n_rows INTEGER NOT NULL,
        n_cols INTEGER NOT NULL,
        storage_dtype VARCHAR NOT NULL,
        singular_values DOUBLE[] NOT NULL,
        frobenius_sq DOUBLE,              -- sum of squared entries, computed directly
        noise_sigma DOUBLE,               -- delta: rounding-noise std per entry
        n_zero BIGINT,                    -- entries exactly 0
        n_nonfinite BIGINT,               -- NaN/Inf entries (spectrum empty if > 0)
        method VARCHAR NOT NULL,
        device VARCHAR NOT NULL,
        seconds DOUBLE
    """,
    "vector_changes": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        tensor VARCHAR NOT NULL,
        layer INTEGER,
        module VARCHAR NOT NULL,
        numel BIGINT NOT NULL,
        storage_dtype VARCHAR NOT NULL,
        base_norm DOUBLE,
        sft_norm DOUBLE,
        delta_norm DOUBLE,
        n_zero BIGINT,
        n_nonfinite BIGINT
    """,
    "token_logprobs": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        role VARCHAR NOT NULL,            -- 'base' | 'sft'
        post_id BIGINT NOT NULL,
        position INTEGER NOT NULL,        -- 0 = first scored token
        token_id INTEGER NOT NULL,
        token_text VARCHAR,
        logprob DOUBLE NOT NULL
    """,
    "post_texts": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        post_id BIGINT NOT NULL,
        site VARCHAR,
        grp VARCHAR,
        n_tokens INTEGER NOT NULL,
        n_bytes INTEGER NOT NULL,
        n_words INTEGER NOT NULL
    """,
    "residual_drift": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        post_id BIGINT NOT NULL,
        layer INTEGER NOT NULL,           -- 0 = embeddings, L = final hidden state
        n_tokens INTEGER NOT NULL,
        sum_rel_l2 DOUBLE NOT NULL,       -- sum over tokens of |h_sft-h_base|/|h_base|
        sum_cos DOUBLE NOT NULL,          -- sum over tokens of cos(h_sft, h_base)
        sum_sq_diff DOUBLE NOT NULL,      -- sum over tokens of |h_sft-h_base|^2
        sum_sq_base DOUBLE NOT NULL       -- sum over tokens of |h_base|^2
    """,
}


def ensure_raw_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the `raw` schema and every raw table (empty) if missing.

    All of them exist from the first write on, so `dbt run` builds every staging
    view whatever has been loaded so far.
    """
    con.execute("create schema if not exists raw")
    for name, columns in COMPUTE_TABLES.items():
        con.execute(f"create table if not exists raw.{name} ({columns})")
    with contextlib.suppress(ImportError):
        from ingest.se_tables import create_tables

        create_tables(con)


def replace_pair_rows(
    con: duckdb.DuckDBPyConnection, table: str, pair: str, select_sql: str,
    params: list | None = None,
) -> int:
    """Within the caller's transaction: delete `pair`'s rows, insert `select_sql`."""
    con.execute(f"delete from raw.{table} where pair = ?", [pair])
    con.execute(f"insert into raw.{table} by name {select_sql}", params or [])
    return con.execute(
        f"select count(*) from raw.{table} where pair = ?", [pair]
    ).fetchone()[0]
