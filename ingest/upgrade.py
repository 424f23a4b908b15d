"""Bring a warehouse written by an earlier sftscope release to this release's layout.

    python -m ingest.upgrade                 # data/warehouse.duckdb or $SFTSCOPE_DB
    python -m ingest.upgrade --db PATH
    python -m ingest.upgrade --check         # say what would change, change nothing
    python -m ingest.upgrade --refresh       # and rebuild marts an older release built

One transaction: every step of ingest.warehouse.MIGRATIONS the file lacks (new
columns with their defaults, new tables), then the new version recorded in
raw.schema_version; a failure leaves the file as it was. No row is rewritten or lost.
Every loader and `dbt run` does the same before writing; this command is for a
warehouse that only the app or ad-hoc readers open. Exit 0 done (or nothing to do),
2 a warehouse of a newer release, 3 busy (held by another process).

Then it compares the marts in the file with this release's models (ingest.marts_check):
an incremental mart that an older release built without a column this release's model
has makes `dbt build` fail (on_schema_change='fail'). It names them and prints the
command that rebuilds them once (`dbt build --full-refresh`); with --refresh it runs
it, and the exit status is dbt's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import duckdb

from ingest.marts_check import refresh, refresh_command, stale_marts
from ingest.warehouse import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SchemaError,
    WarehouseBusy,
    connect,
    db_path,
    schema_version,
    upgrade,
)


def main(argv: list[str] | None = None) -> int:
    """python -m ingest.upgrade: upgrade (or --check) the raw layout."""
    ap = argparse.ArgumentParser(prog="python -m ingest.upgrade",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, help="warehouse (default $SFTSCOPE_DB or "
                    "data/warehouse.duckdb)")
    ap.add_argument("--check", action="store_true",
                    help="print the version and the steps it lacks; change nothing")
    ap.add_argument("--refresh", action="store_true",
                    help="then rebuild the marts an older release built (dbt build "
                    "--full-refresh) when this release's models need it")
    a = ap.parse_args(argv)
    if a.check and a.refresh:
        ap.error("--check changes nothing; --refresh rebuilds the marts")
    path = db_path(a.db)
    if not path.exists():
        print(f"error: warehouse {path} does not exist", file=sys.stderr)
        return 2
    try:
        if a.check:
            with connect(path, read_only=True, check=False) as con:
                found = schema_version(con)
                stale = stale_marts(con)
            steps = [m for m in MIGRATIONS if found is not None and m.version > found]
            print(f"{path}: raw schema version {found}, this release writes "
                  f"{SCHEMA_VERSION}" + "".join(
                      f"\n  would apply {m.version}: {m.description}" for m in steps))
            report_stale(path, stale, refreshing=False)
            return 2 if found is not None and found > SCHEMA_VERSION else 0
        found, applied = upgrade(path)
        with connect(path, check=False) as con:
            stale = stale_marts(con)
    except SchemaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WarehouseBusy as exc:
        print(f"error: {exc}\nNothing was changed.", file=sys.stderr)
        return 3
    except duckdb.Error as exc:
        print(f"error: upgrading {path} failed: {type(exc).__name__}: {exc}\n"
              "Nothing was changed.", file=sys.stderr)
        return 2
    if not applied:
        print(f"{path}: raw schema version {SCHEMA_VERSION}, nothing to do")
    else:
        print(f"{path}: raw schema version {found} -> {SCHEMA_VERSION}"
              + "".join(f"\n  applied {m.version}: {m.description}" for m in applied))
    report_stale(path, stale, refreshing=a.refresh)
    if stale and a.refresh:
        return refresh(path)
    return 0


def report_stale(path: Path, stale: list[tuple[str, list[str]]], *,
                 refreshing: bool) -> None:
    """Name the marts an older release built that `dbt build` would refuse, and the
    command that rebuilds them (or that it is being run)."""
    if not stale:
        return
    print(f"{path}: {len(stale)} mart(s) built by an earlier release, which dbt "
          "build refuses to extend until they are rebuilt once:" + "".join(
              f"\n  {t} (lacks {', '.join(c)})" for t, c in stale), flush=True)
    print("running dbt build --full-refresh" if refreshing else
          f"rebuild them: {refresh_command(path)}\n(or: python -m ingest.upgrade "
          "--refresh)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
