"""Files and folders written whole or not at all: a temporary name in the same
folder, then a rename (`atomic_path`, `atomic_folder`: ingest.atomic, the floor
both compute and ingest stand on; on them `atomic_write_bytes`, `write_parquet`).
The time stamp every manifest and Parquet row carries (`now`).

    from compute.io.files import atomic_folder, atomic_write_bytes, now, write_parquet

    with atomic_folder(out) as tmp:     # out is replaced only if the block succeeds
        (tmp / "config.json").write_text(...)
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

from ingest.atomic import atomic_folder, atomic_path, temporary_name

__all__ = ["atomic_folder", "atomic_path", "atomic_write_bytes", "now",
           "temporary_name", "write_parquet"]

if TYPE_CHECKING:
    import pyarrow as pa


def now() -> str:
    """UTC now, to the second, without a zone: 2026-01-31T12:00:00."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(
        timespec="seconds")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary name beside `path`, then rename it over `path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write `table` to a temporary name in the same folder, then rename over `path`
    (the folder is created)."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
