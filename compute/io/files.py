"""Files and folders written whole or not at all: a temporary name in the same
folder, then a rename (`atomic_path`, `atomic_folder`, and on them
`atomic_write_bytes`, `write_parquet`). The time stamp every manifest and Parquet
row carries (`now`).

    from compute.io.files import atomic_folder, atomic_write_bytes, now, write_parquet

    with atomic_folder(out) as tmp:     # out is replaced only if the block succeeds
        (tmp / "config.json").write_text(...)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa


def now() -> str:
    """UTC now, to the second, without a zone: 2026-01-31T12:00:00."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(
        timespec="seconds")


def temporary_name(path: Path) -> Path:
    """The hidden name beside `path` a writer uses before its rename:
    `.NAME.tmpPID` (readers and loaders skip names that start with a dot)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary file name beside `path`; when the block returns, the file
    written there is renamed over `path`; on an error it is removed and `path` is
    left as it was. Creates `path`'s folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `out`; when the block returns, it
    replaces `out` (whatever `out` held is removed first); on an error it is removed
    and `out` is left as it was."""
    out = Path(out)
    tmp = temporary_name(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
