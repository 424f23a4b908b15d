"""Readers apart from writers: the published, read-only snapshot of the warehouse.

    python -m ingest.snapshot            # publish data/warehouse.duckdb now
    python -m ingest.snapshot --db PATH

DuckDB lets one process write a file, and none while another process has it open,
even read-only. So writers (the loaders, `dbt run` / `dbt build`) keep the warehouse
file to themselves, and readers (the app, `compute.summary`, ad-hoc SQL) read a copy:

    data/warehouse.duckdb                                 the warehouse: writers only
    data/warehouse.duckdb.snapshots/<n>/warehouse.duckdb  published copies
    data/warehouse.duckdb.snapshots/current -> <n>        the one readers open

Each writer, after its transaction committed and while it still holds the file:
checkpoints (the file then holds everything, no WAL), copies it to a new folder under a
temporary name, renames the folder to the next number, and swaps the `current` link
to it (a rename: atomic). A reader resolves `current` once and reads that copy, so it
sees one committed state, old or new, never a mix, and never waits for a writer; a
writer never waits for a reader. `dbt build` publishes at its end only when every
model and test passed (dbt_project/macros/publish_snapshot.sql); a failed build leaves
the last good snapshot in place. The copy keeps the file's name, so the catalog is
still called `warehouse` and dbt's views, which name it, work in the copy.

The two newest snapshots are kept, and an older one until it has been superseded for
`GRACE_S` seconds (a page that resolved it may still be reading). On Linux a snapshot
deleted while a reader has it open stays readable until it is closed.

A warehouse changed since its last snapshot by something that does not publish (a
`duckdb` shell writing it) is read directly while nobody writes it, and its last
snapshot while somebody does; `python -m ingest.snapshot` publishes it.
SFTSCOPE_SNAPSHOTS=0 turns publishing off (readers then read the warehouse itself
and wait for writers, as before).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

GRACE_S = 120.0
KEEP = 2
CURRENT = "current"
STAMP = "source.json"


def enabled() -> bool:
    return os.environ.get("SFTSCOPE_SNAPSHOTS", "1") != "0"


def root(path: str | os.PathLike) -> Path:
    """The folder of `path`'s snapshots."""
    path = Path(path)
    return path.with_name(path.name + ".snapshots")


def _stat(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def current(path: str | os.PathLike) -> Path | None:
    """The published copy of `path` readers open now, or None."""
    path = Path(path)
    link = root(path) / CURRENT
    try:
        target = os.readlink(link)
    except OSError:
        return None
    snap = link.parent / target / path.name
    return snap if snap.exists() else None


CLOSE_SLACK_NS = 2_000_000_000  # what the publishing writer may write on closing


def is_fresh(path: str | os.PathLike, snap: Path) -> bool:
    """True if `path` has not changed since `snap` was published from it (but for
    what its writer wrote while closing, within CLOSE_SLACK_NS of publishing, before
    `after_close` took the stamp again)."""
    path = Path(path)
    try:
        recorded = json.loads((snap.parent / STAMP).read_text())
        now = _stat(path)
        if path.with_name(path.name + ".wal").exists():
            return False
        return (now == {k: recorded[k] for k in now}
                or now["mtime_ns"] <= recorded.get("published_ns", 0) + CLOSE_SLACK_NS)
    except (OSError, ValueError, KeyError):
        return False


def writer_holds(path: str | os.PathLike) -> bool:
    """True if a process holds `path`'s write lock (DuckDB's, an fcntl lock), read
    from /proc/locks: probing with a lock of our own would drop the ones this
    process holds on the file when closed. Without /proc/locks: assume so."""
    try:
        st = Path(path).stat()
        locks = Path("/proc/locks").read_text()
    except OSError:
        return True
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return any(f.split()[3:4] == ["WRITE"] and inode in f.split()
               for f in locks.splitlines())


def reader_path(path: str | os.PathLike) -> Path:
    """The file a reader of `path` opens: its current snapshot while that is fresh
    or a writer holds `path`; else (no snapshot, or `path` changed since by a writer
    that did not publish and has let go) `path` itself."""
    path = Path(path)
    for _ in range(5):
        snap = current(path)
        if snap is None:
            return path
        if is_fresh(path, snap) or writer_holds(path):
            return snap
        if current(path) == snap:  # nothing published meanwhile: `path` is newer
            return path
    return path


def publish(con, path: str | os.PathLike) -> Path | None:
    """Publish `path` from a writer's connection `con` to it, after its commit and
    before it closes. Returns the new snapshot, or None when publishing is off.

    A failure (a full disk) leaves the previous snapshot current and raises OSError;
    the warehouse itself is already committed either way.
    """
    if not enabled():
        return None
    con.execute("checkpoint")
    return publish_file(path)


_published: dict[str, Path] = {}  # path -> the snapshot published from it, not closed


def after_close(path: str | os.PathLike) -> None:
    """Call when the writer's connection that published `path` has closed: DuckDB
    may still have written to the file on closing (it gives back blocks freed by the
    checkpoint), so the stamp that says "nothing changed since" is taken again."""
    snap = _published.pop(str(path), None)
    if snap is not None and current(path) == snap:
        with contextlib.suppress(OSError):
            (snap.parent / STAMP).write_text(json.dumps(_stat(Path(path))))  # exact


def publish_file(path: str | os.PathLike) -> Path:
    """`publish` without the checkpoint: for a caller that holds the file, has
    checkpointed it and cannot run SQL on it now (dbt's hook, ingest.dbt_lock)."""
    path = Path(path)
    top = root(path)
    top.mkdir(exist_ok=True)
    numbers = _numbers(top)
    n = (numbers[-1] + 1) if numbers else 1
    tmp = top / f".{n}.tmp{os.getpid()}"
    try:
        tmp.mkdir()
        shutil.copyfile(path, tmp / path.name)  # in the kernel (sendfile)
        with open(tmp / path.name, "rb+") as dst:
            os.fsync(dst.fileno())
        (tmp / STAMP).write_text(json.dumps(_stat(path)
                                            | {"published_ns": time.time_ns()}))
        tmp.rename(top / str(n))
        link = top / f".{CURRENT}.tmp{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(str(n))
        link.replace(top / CURRENT)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(top, path.name)
    _published[str(path)] = top / str(n) / path.name
    return top / str(n) / path.name


def publish_or_warn(con, path: str | os.PathLike) -> Path | None:
    """`publish`, reporting a failure on stderr instead of raising (the caller's
    write is committed; readers keep the previous snapshot)."""
    try:
        return publish(con, path)
    except Exception as exc:
        print(f"warning: {path} was written, but publishing its read-only snapshot "
              f"failed ({type(exc).__name__}: {exc}); readers see the previous one "
              "until the next write or `python -m ingest.snapshot`.", file=sys.stderr)
        return None


def _numbers(top: Path) -> list[int]:
    return sorted(int(p.name) for p in top.iterdir() if p.name.isdigit())


def _prune(top: Path, name: str) -> None:
    numbers = _numbers(top)
    now = time.time()
    for i, older in enumerate(numbers[:-KEEP]):
        try:  # when the next one was published
            superseded = (top / str(numbers[i + 1]) / name).stat().st_mtime
        except OSError:
            continue
        if now - superseded > GRACE_S:
            shutil.rmtree(top / str(older), ignore_errors=True)
    for stray in top.glob(".*.tmp*"):  # left by a writer that was killed
        with contextlib.suppress(ValueError):
            pid = int(stray.name.rsplit("tmp", 1)[1])
            if not Path(f"/proc/{pid}").exists():
                shutil.rmtree(stray, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    from ingest.warehouse import WarehouseBusy, connect, db_path

    ap = argparse.ArgumentParser(prog="python -m ingest.snapshot",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, help="warehouse (default $SFTSCOPE_DB or "
                    "data/warehouse.duckdb)")
    a = ap.parse_args(argv)
    path = db_path(a.db)
    if not path.exists():
        print(f"error: warehouse {path} does not exist", file=sys.stderr)
        return 2
    try:
        with connect(path) as con:
            snap = publish(con, path)
    except WarehouseBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(f"published {snap}" if snap else "SFTSCOPE_SNAPSHOTS=0: nothing published")
    return 0


if __name__ == "__main__":
    sys.exit(main())
