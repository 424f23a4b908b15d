"""Readers apart from writers: the published, read-only snapshot of the warehouse.

    python -m ingest.publish            # publish data/warehouse.duckdb now
    python -m ingest.publish --db PATH

DuckDB lets one process write a file, and none while another process has it open,
even read-only. So writers (the loaders, `dbt run` / `dbt build`) keep the warehouse
file to themselves, and readers (the app, `compute.run.summary`, ad-hoc SQL) read a copy:

    data/warehouse.duckdb                                 the warehouse: writers only
    data/warehouse.duckdb.snapshots/<n>/warehouse.duckdb  published copies
    data/warehouse.duckdb.snapshots/current -> <n>        the one readers open

Each writer, after its transaction committed and while it still holds the file:
checkpoints (the file then holds everything, no WAL), copies it to a new folder under a
temporary name (`cp`, in a process of its own: closing the file in the writer's
process would drop DuckDB's write lock), renames the folder to the next number, and
swaps the `current` link to it (a rename: atomic). A reader resolves `current` once
and reads that copy, so it sees one committed state, old or new, never a mix, and
never waits for a writer; a writer never waits for a reader. `dbt build` publishes at its end only when every
model and test passed (dbt_project/macros/publish_snapshot.sql); a failed build leaves
the last good snapshot in place. The copy keeps the file's name, so the catalog is
still called `warehouse` and dbt's views, which name it, work in the copy.

Once a warehouse has a snapshot, readers read its current snapshot, always: they never
open the warehouse file, so they never stop a writer from taking it, whatever a writer
is doing at that moment. A warehouse changed since its last snapshot by something that
does not publish (a `duckdb` shell writing it, a `dbt build` with a failed model) is
still read as its last snapshot; `notice` says so (the app shows it on every page, and
`ingest.warehouse.connect(read_only=True)`, so `compute.run.summary`, prints it), with the
command that publishes it: `python -m ingest.publish`; while a writer holds the
file and has changed it, that it is being written (and by which process). "Changed"
is read from the file's content, not from times: a WAL with content (committed, not
checkpointed) or a database header other than the snapshot's (DuckDB writes a new
one at every checkpoint that writes anything).

Without a snapshot (a warehouse nobody has published yet, or SFTSCOPE_SNAPSHOTS=0,
which turns publishing off and, set for a reader, makes it read the file even where
snapshots exist) readers read the warehouse itself and wait for writers, as before.

The two newest snapshots are kept, and an older one until it has been superseded for
`GRACE_S` seconds (a page that resolved it may still be reading). On Linux a snapshot
deleted while a reader has it open stays readable until it is closed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

GRACE_S = 120.0
KEEP = 2
CURRENT = "current"
STAMP = "source.json"
HEADER_BYTES = 3 * 4096  # DuckDB's file header and its two database headers


def describe_pid(pid: int) -> str:
    """'PID n (command line)'."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        return f"PID {pid} ({cmd.strip()[:120]})"
    except OSError:
        return f"PID {pid}"


def enabled() -> bool:
    """Whether snapshots are published (SFTSCOPE_SNAPSHOTS is not 0)."""
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


def reader_path(path: str | os.PathLike) -> Path:
    """The file a reader of `path` opens: its current snapshot whenever there is one
    (whether or not `path` changed since), else (or with SFTSCOPE_SNAPSHOTS=0)
    `path` itself."""
    path = Path(path)
    snap = current(path) if enabled() else None
    return path if snap is None else snap


def _header(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(HEADER_BYTES)


def changed_since(path: str | os.PathLike, snap: Path) -> bool:
    """True if `path` holds committed changes its published copy `snap` lacks: a WAL
    with content, or a database header other than the copy's (every checkpoint that
    writes anything writes a new one). Reads bytes; takes no lock. Not for a process
    that has `path` open in DuckDB: closing any file of it drops the process's fcntl
    locks on it (`notice` checks)."""
    path = Path(path)
    try:
        wal = path.with_name(path.name + ".wal")
        if wal.exists() and wal.stat().st_size > 0:
            return True
        return _header(path) != _header(snap)
    except OSError:  # the warehouse or the copy is gone
        return True


def _locks(path: str | os.PathLike) -> list[tuple[str, int]] | None:
    """(READ or WRITE, PID; 0 where not told) of each fcntl lock on `path` (DuckDB's
    locks), read from /proc/locks: probing with a lock of our own would drop the ones
    this process holds on the file when closed. None without /proc/locks."""
    try:
        st = Path(path).stat()
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    found = []
    for line in text.splitlines():
        f = [w for w in line.split() if w != "->"]  # "->": a lock waiting for it
        if f[5:6] == [inode]:
            found.append((f[3], int(f[4]) if f[4].isdigit() else 0))
    return found


def writer(path: str | os.PathLike) -> int | None:
    """The PID of the process that holds `path`'s write lock: None when nobody does,
    0 when it cannot be told (no /proc/locks)."""
    return _writer_of(_locks(path))


def _writer_of(locks: list[tuple[str, int]] | None) -> int | None:
    if locks is None:
        return 0
    return next((pid for access, pid in locks if access == "WRITE"), None)


@dataclass(frozen=True)
class Notice:
    """What a reader of the warehouse should be told about the snapshot it reads."""

    text: str
    writing: bool  # a writer holds the warehouse now (loads and dbt publish when done)


def notice(path: str | os.PathLike) -> Notice | None:
    """None when readers of `path` read all of it (its current snapshot holds every
    committed change, or there is no snapshot and they read the file itself); else
    what to tell them: it is being written, or it changed after its last snapshot and
    `python -m ingest.publish` publishes it."""
    path = Path(path)
    for _ in range(5):
        snap = current(path) if enabled() and path.exists() else None
        locks = _locks(path) if snap is not None else None
        if snap is None or any(pid == os.getpid() for _, pid in locks or ()):
            return None  # no snapshot, or this process has the file open (see above)
        if not changed_since(path, snap):
            return None
        pid = _writer_of(locks)  # the locks read once, before the bytes
        if current(path) != snap:  # a writer published meanwhile: look again
            continue
        when = _published_at(snap)
        publish_cmd = f"python -m ingest.publish --db {path}"
        if pid is not None:
            by = describe_pid(pid) if pid else "another process"
            return Notice(
                f"The warehouse `{path}` is being written by {by}. Readers see its last "
                f"snapshot, published {when}, until the writer publishes (loads and a "
                "`dbt build` without failures do when they finish). If it does not (a "
                f"`duckdb` shell), close it, then run `{publish_cmd}`.", writing=True)
        return Notice(
            f"The warehouse `{path}` changed after its last snapshot (published {when}) "
            "and nothing published it since (a `duckdb` shell wrote it, or a `dbt "
            "build` had a failure: it publishes only good builds). Readers see that "
            f"snapshot. To publish the warehouse as it is now, run `{publish_cmd}`.",
            writing=False)
    return None


def _published_at(snap: Path) -> str:
    try:
        ns = json.loads((snap.parent / STAMP).read_text())["published_ns"]
    except (OSError, ValueError, KeyError, TypeError):
        try:
            ns = snap.stat().st_mtime_ns
        except OSError:
            return "earlier"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


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
        _copy(path, tmp / path.name)
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
    return top / str(n) / path.name


def _copy(src: Path, dst: Path) -> None:
    """Copy the warehouse file in a process of its own: in this one (the writer),
    closing the file after reading it would drop DuckDB's fcntl write lock on it
    (fcntl locks belong to the process and go with any of its files on that inode),
    and another writer could open the file while this one still has it."""
    out = subprocess.run(["cp", "--", str(src), str(dst)], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise OSError(f"copying {src} to {dst} failed: {out.stderr.strip()}")


def publish_or_warn(con, path: str | os.PathLike) -> Path | None:
    """`publish`, reporting a failure on stderr instead of raising (the caller's
    write is committed; readers keep the previous snapshot)."""
    try:
        return publish(con, path)
    except Exception as exc:
        print(f"warning: {path} was written, but publishing its read-only snapshot "
              f"failed ({type(exc).__name__}: {exc}); readers see the previous one "
              "until the next write or `python -m ingest.publish`.", file=sys.stderr)
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


if __name__ == "__main__":  # the command's old name: it lives above the writer now
    import runpy

    print("note: `python -m ingest.snapshot` is now `python -m ingest.publish`",
          file=sys.stderr)
    runpy.run_module("ingest.publish", run_name="__main__", alter_sys=True)
