"""Files written whole or not at all: a temporary name in the same folder, then a
rename. The time stamp every manifest and Parquet row carries (`now`).

    from compute.io.files import write_parquet, atomic_write_bytes, now
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa


def now() -> str:
    """UTC now, to the second, without a zone: 2026-01-31T12:00:00."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(
        timespec="seconds")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary name beside `path`, then rename it over `path`."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write to a temporary name in the same folder, then rename over `path`."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
