"""Publish the warehouse's read-only snapshot now (ingest/snapshot.py says why).

    python -m ingest.publish            # data/warehouse.duckdb (or $SFTSCOPE_DB)
    python -m ingest.publish --db PATH

Every load and every good `dbt build` publishes one itself; run this after writing
the file any other way (a `duckdb` shell). It takes the writer's lock, so it sits
above both `ingest.snapshot` and `ingest.warehouse`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ingest import snapshot
from ingest.warehouse import WarehouseBusy, connect, db_path


def main(argv: list[str] | None = None) -> int:
    """Publish a snapshot of the warehouse; 2 when it does not exist, 3 when a writer
    holds it."""
    ap = argparse.ArgumentParser(prog="python -m ingest.publish",
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
            snap = snapshot.publish(con, path)
    except WarehouseBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(f"published {snap}" if snap else "SFTSCOPE_SNAPSHOTS=0: nothing published")
    return 0


if __name__ == "__main__":
    sys.exit(main())
