"""Load a compute run's Parquet files into the warehouse.

    python -m ingest.compute_load data/runs/7B [--db data/warehouse.duckdb]
    python -m ingest.compute_load s3://bucket/runs/7B   # an object-store URI
    python -m ingest.compute_load data/runs             # every pair under a root

compute.run calls this itself; run it by hand for results made on another machine
(`compute.run --no-load`). Before the warehouse is opened, every file of the kinds to
load is checked against run.json (ingest.run_check: pair and run id inside each file,
the files and rows it lists, nothing twice, every batch's marker, its counts). One transaction: the pair's earlier rows of each loaded
kind are deleted and the new ones inserted, so a failure (a bad file, Ctrl-C, the
process killed, the machine dying) leaves the warehouse as it was, and loading twice
gives the same rows. While another process holds the warehouse the load waits up to
$SFTSCOPE_LOCK_TIMEOUT seconds (default 60), then stops naming the holder.

Exit status: 0 loaded; 2 the folder or its files are unusable (named in the message);
3 the warehouse is held by another process (nothing changed: run it again later).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

from ingest.results import (
    BULKY,
    ResultsError,
    Store,
    as_uri,
    child,
    is_remote,
    local_path,
    with_records,
)
from ingest.run_check import RunMismatch, verify
from ingest.runfolder import KIND_TABLES, PairNameError, check_name
from ingest.warehouse import (
    db_path,
    load_reported,
    replace_pair_rows,
    writer_transaction,
)


class LoadError(RuntimeError):
    pass


def _manifest(run_dir: Path) -> dict:
    """run.json, with the kinds/<kind>.json records of a run made on an object
    store (ingest.results) beside it."""
    path = run_dir / "run.json"
    if not path.exists():
        raise LoadError(f"{run_dir}: no run.json; not a compute.run output folder")
    files = [path, *sorted((run_dir / "kinds").glob("*.json"))]
    docs = []
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except (ValueError, RecursionError) as exc:  # bad JSON, UTF-8 or nesting
            raise LoadError(f"{f}: not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise LoadError(f"{f}: not a compute.run manifest (not a JSON object)")
        docs.append(doc)
    return with_records(docs[0], [(f.stem, d) for f, d in zip(files[1:], docs[1:],
                                                              strict=True)])


@contextlib.contextmanager
def fetched(uri: str) -> Iterator[Path]:
    """An object-store run's loadable files (not the singular vectors) in a
    temporary folder, downloaded whole."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sftscope-load-") as tmp:
        try:
            store = Store(uri, Path(tmp))
            if not store.exists("run.json"):
                raise LoadError(f"{uri}: no run.json; not a compute.run output folder")
            store.fetch([Path(tmp, "run.json")])
            store.pull(skip=(*BULKY, "directions/rows/"))
            store.fetch(Path(tmp, k) for k in store.listing("kinds"))
        except ResultsError as exc:
            raise LoadError(str(exc)) from exc
        except OSError as exc:
            raise LoadError(f"{uri}: cannot read the results ({exc})") from exc
        yield Path(tmp)


def load_run(run_dir: str | Path, db: str | Path | None = None,
             kinds: list[str] | None = None) -> dict[str, int]:
    """Replace the pair's rows of each finished kind; returns rows per raw table.
    `run_dir`: a folder, or an object-store URI (ingest.results)."""
    if is_remote(run_dir):
        with fetched(str(run_dir)) as local:
            try:
                return load_run(local, db, kinds)
            except LoadError as exc:  # name the URI, not the temporary copy
                raise LoadError(as_uri(str(exc), local, str(run_dir))) from exc
    run_dir = local_path(run_dir)
    manifest = _manifest(run_dir)
    try:
        pair, run_id = manifest["pair"], manifest["run_id"]
        missing = [k for k in ("base_model", "sft_model", "kinds") if k not in manifest]
        if missing:
            raise KeyError(", ".join(missing))
        finished = [k for k, v in manifest.get("kinds", {}).items()
                    if v.get("finished_at")]
    except (KeyError, TypeError, AttributeError) as exc:
        raise LoadError(f"{run_dir / 'run.json'}: not a compute.run manifest "
                        f"(missing {exc})") from exc
    kinds = finished if kinds is None else kinds
    for kind in kinds:
        if kind not in finished:
            raise LoadError(f"{run_dir}: the {kind} half is not finished; re-run "
                            "compute.run to complete it before loading")
    if not kinds:
        raise LoadError(f"{run_dir}: nothing finished to load")
    try:  # before the warehouse is opened: a mismatch changes nothing
        check_name(pair, f"{run_dir / 'run.json'}: pair")
        verify(run_dir, manifest, kinds)
    except (RunMismatch, PairNameError) as exc:
        raise LoadError(str(exc)) from None
    counts: dict[str, int] = {}
    with writer_transaction(db) as con:
        for kind in kinds:
            for table, pattern in KIND_TABLES[kind].items():
                files = sorted(run_dir.glob(pattern))
                if not files:
                    select, params = f"select * from raw.{table} where false", []
                else:
                    select = ("select * from read_parquet(?, union_by_name = true)")
                    params = [[str(f) for f in files]]
                counts[table] = replace_pair_rows(con, table, pair, select, params)
                other = con.execute(
                    f"select count(*) from raw.{table} where pair = ? "
                    "and run_id <> ?", [pair, run_id]).fetchone()[0]
                if other:
                    raise LoadError(f"{run_dir}: {table} files of another run "
                                    f"({other} rows) are mixed in")
            if kind == "spectra":
                expected = 3 * manifest["kinds"]["spectra"]["n_matrices"]
                if counts["spectra"] != expected:
                    raise LoadError(f"{run_dir}: {counts['spectra']} spectra rows, "
                                    f"expected {expected}")
            if kind == "spectra" and "directions" not in finished:
                # spectra without vectors (--vectors 0): no stale directions
                for table in [*KIND_TABLES["directions"], "compute_runs"]:
                    con.execute(f"delete from raw.{table} where pair = ?"
                                + (" and kind = 'directions'"
                                   if table == "compute_runs" else ""), [pair])
            info = manifest["kinds"][kind]
            con.execute("delete from raw.compute_runs where pair = ? and kind = ?",
                        [pair, kind])
            con.execute(
                "insert into raw.compute_runs by name select ? as run_id, "
                "? as pair, ? as kind, ? as base_model, ? as sft_model, "
                "? as base_revision, ? as sft_revision, ? as code_version, "
                "? as device, ? as dtype, ? as method, ? as n_layers, "
                "?::timestamp as started_at, ?::timestamp as finished_at, "
                "?::json as options",
                [run_id, pair, kind, manifest["base_model"], manifest["sft_model"],
                 manifest.get("base_revision"), manifest.get("sft_revision"),
                 manifest.get("code_version"), info.get("device"),
                 info.get("dtype"), manifest.get("method"),
                 manifest.get("n_layers"), info.get("started_at"),
                 info.get("finished_at"), json.dumps(info.get("options", {}))])
    return counts


def load_or_explain(run_dir: str | Path, db: str | Path | None = None,
                    kinds: list[str] | None = None, *,
                    done: str | None = None) -> int:
    """`load_run`, reporting the outcome for a person: 0 loaded, 2 unusable input,
    3 warehouse busy, 130 interrupted; never a traceback for these. The message of
    each failure says that the warehouse was not changed and what to do."""
    if not is_remote(run_dir):
        run_dir = local_path(run_dir)
    again = f"python -m ingest.compute_load {shlex.quote(str(run_dir))}" + (
        f" --db {db}" if db else "")
    return load_reported(lambda: load_run(run_dir, db, kinds), run_dir, again,
                         (LoadError,), done or f"loaded {run_dir} into {db_path(db)}")


def pair_folders(root: str | Path) -> list[str | Path]:
    """`root` itself when it holds a run.json (one pair), else its subfolders that
    do (a results root: OUT, with a folder per pair), in name order."""
    if not is_remote(root):
        root = local_path(root)
        if (root / "run.json").exists() or not root.is_dir():
            return [root]
        return sorted(d for d in root.iterdir() if (d / "run.json").is_file())
    from pyarrow.fs import FileSelector, FileType

    try:
        store = Store(str(root), Path("."))
        if store.exists("run.json"):
            return [root]
        infos = store.fs.get_file_info(FileSelector(store.base, allow_not_found=True))
        names = sorted(i.base_name for i in infos if i.type == FileType.Directory)
        return [child(str(root), n) for n in names
                if store.exists(f"{n}/run.json")]
    except (ResultsError, OSError):
        return [root]  # load_run names the problem


def main(argv: list[str] | None = None) -> int:
    """python -m ingest.compute_load: load run folders; exit status."""
    ap = argparse.ArgumentParser(prog="python -m ingest.compute_load",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a compute.run output folder (OUT/<pair>), or "
                    "a results root (OUT: every pair in it, each in a transaction of "
                    "its own); a folder or an object-store URI (s3://bucket/runs, ...)")
    ap.add_argument("--db", type=Path, help="warehouse (default $SFTSCOPE_DB or "
                    "data/warehouse.duckdb)")
    ap.add_argument("--kind", action="append", choices=list(KIND_TABLES),
                    help="load only this half (repeatable); default every finished one")
    a = ap.parse_args(argv)
    folders = pair_folders(a.run_dir)
    if not folders:
        print(f"error: {a.run_dir}: no run.json in it nor in its subfolders; not a "
              "compute.run output folder or results root", file=sys.stderr)
        return 2
    codes = [load_or_explain(f, a.db, a.kind) for f in folders]
    return next((c for c in codes if c), 0)


if __name__ == "__main__":
    sys.exit(main())
