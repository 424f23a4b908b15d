"""dbt waits for the warehouse like every other writer: a dbt-duckdb plugin.

dbt_project/profiles.yml names it (`plugins: [{module: ingest.dbt_lock}]`). dbt-duckdb
calls `update_connection_config` just before its one `duckdb.connect()` of a run (the
connection stays open for the whole run). Here that call opens the warehouse through
`ingest.warehouse.connect`, which retries while another process holds the file for up
to $SFTSCOPE_LOCK_TIMEOUT seconds (default 60) and then names the holder (PID and
command line), and brings the raw tables to this release's layout (the steps of
`ingest.warehouse.MIGRATIONS` a warehouse of an earlier release lacks, in one
transaction; empty raw tables on a new file). The connection is kept until dbt's own
`connect()` has succeeded: in one process DuckDB hands the second connect the same
database instance, so no other process can take the file in between.
`configure_connection` then lets ours go, and gives dbt's connection the function
`sftscope_publish()`, which the on-run-end hook calls after a build without errors to
publish the read-only snapshot readers see (ingest.snapshot).

Why not dbt-duckdb's `retries: {connect_attempts: N}`: it sleeps 2**k s after the k-th
failed attempt, also after the last one, and dbt's error handling reopens the
connection twice more after the first failure, each with its own N attempts. With N
attempts dbt takes the file only if it is free by 2**(N-1) - 1 s, but gives up only after
3 (2**N - 1) s (measured: N = 2 fails after 9 s), and every other IOException at
connect (a missing folder, a damaged file) waits as long.
"""

from __future__ import annotations

import contextlib
from typing import Any

import duckdb
from dbt.adapters.duckdb.plugins import BasePlugin
from dbt_common.exceptions import DbtRuntimeError

from ingest import snapshot, warehouse


class Plugin(BasePlugin):
    def initialize(self, plugin_config: dict[str, Any]) -> None:
        """No lock held yet."""
        self._held: contextlib.ExitStack | None = None
        self._failed: str | None = None
        self._path: str | None = None

    def update_connection_config(self, creds, config: dict[str, Any]) -> None:
        """Take the warehouse's writer lock before dbt opens the file (waits a
        bounded time, then fails naming the holder)."""
        path = str(creds.path)
        if path == ":memory:" or creds.remote or creds.is_motherduck:
            return
        if self._failed is not None:  # dbt reopens after a failure: do not wait again
            raise DbtRuntimeError(self._failed)
        if self._held is not None:
            return
        self._path = path
        stack = contextlib.ExitStack()
        try:
            con = stack.enter_context(warehouse.connect(path, config=dict(config)))
            warehouse.migrate(con)
        except warehouse.WarehouseBusy as exc:
            self._failed = f"{exc} Nothing was changed."
            raise DbtRuntimeError(self._failed) from None
        except warehouse.SchemaError as exc:
            stack.close()
            self._failed = f"warehouse {path}: {exc}"
            raise DbtRuntimeError(self._failed) from None
        except duckdb.Error as exc:  # not a lock: say it once, without waiting
            stack.close()
            self._failed = f"warehouse {path}: {exc}"
            raise DbtRuntimeError(self._failed) from None
        self._held = stack

    def configure_connection(self, conn) -> None:
        """Let the lock go once dbt's connection is open; register
        `sftscope_publish()` for the on-run-end hook."""
        # dbt's connection is open (the same database instance): let ours go.
        if self._held is not None:
            stack, self._held = self._held, None
            stack.close()
        # `select sftscope_publish()`: dbt's on-run-end hook after a good build
        # (dbt_project/macros/publish_snapshot.sql), once it has checkpointed.
        if self._path is not None:
            path = self._path
            conn.create_function("sftscope_publish",
                                 lambda: str(snapshot.publish_file(path)), [],
                                 "VARCHAR", side_effects=True)

