"""Files and folders written whole or not at all: a temporary name beside the
target, then a rename over it; on an error the temporary is removed and the target
left as it was. Every writer of results, adapters, fixtures and exports uses these
(compute.io.files re-exports them beside write_parquet).

    from ingest.atomic import atomic_folder, atomic_path
    with atomic_path(out) as tmp:           # out replaced only if the block succeeds
        tmp.write_bytes(data)
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


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
