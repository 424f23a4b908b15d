"""Load a seed floor of the directions (compute.seed_floor) into raw.seed_direction_overlap.

    python -m ingest.seed_floor data/runs/demo/seed_floor/demo-seed29.parquet

The file holds the overlap of two fine-tunes' top dW subspaces for one pair of runs
(run_id: the run of (base, SFT A), other_run_id: of (base, SFT B)); it replaces the
rows of the same two runs, in one transaction, so loading twice gives the same rows.
compute.seed_floor calls this itself; run it by hand for a file written with
--no-load.

Exit status: 0 loaded; 2 the file is unusable (named in the message); 3 the
warehouse is held by another process (nothing changed: run it again later).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from ingest.warehouse import load_file_reported, loader_main, writer_transaction

KEYS = ("run_id", "other_run_id")


class SeedFloorLoadError(ValueError):
    """A file we refuse to load; the message names it."""


@functools.cache
def schema():
    """The Arrow schema of the floor's file (raw.seed_direction_overlap's columns)."""
    import pyarrow as pa

    s, i, d = pa.string(), pa.int32(), pa.float64()
    return pa.schema([
        ("run_id", s), ("other_run_id", s), ("pair", s), ("other_pair", s),
        ("tensor", s), ("layer", i), ("module", s), ("side", s), ("k", i),
        ("share", d), ("dim", i), ("span_dim", i), ("cosines", pa.list_(d))])


def load(path: str | Path, db: str | Path | None = None) -> dict[str, int]:
    """Replace the rows of the file's two runs; returns {raw table: rows}."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        found = pq.read_schema(path)
    except (OSError, ValueError) as exc:
        raise SeedFloorLoadError(f"{path}: not a readable Parquet file ({exc})"
                                 ) from None
    missing = [n for n in schema().names if n not in found.names]
    if missing:
        raise SeedFloorLoadError(f"{path}: lacks {', '.join(missing)} (is it "
                                 "compute.seed_floor's file?)")
    src = "read_parquet(?)"
    with writer_transaction(db) as con:
        keys = con.execute(f"select distinct {', '.join(KEYS)} from {src}",
                           [str(path)]).fetchall()
        if len(keys) != 1:
            raise SeedFloorLoadError(f"{path}: holds {len(keys)} (run_id, "
                                     "other_run_id) keys, expected one")
        where = " and ".join(f"{k} = ?" for k in KEYS)
        con.execute(f"delete from raw.seed_direction_overlap where {where}",
                    list(keys[0]))
        cols = ", ".join(schema().names)
        con.execute(f"insert into raw.seed_direction_overlap ({cols}) select {cols} "
                    f"from {src}", [str(path)])
        n = con.execute(f"select count(*) from raw.seed_direction_overlap where "
                        f"{where}", list(keys[0])).fetchone()[0]
    return {"seed_direction_overlap": n}


def load_or_explain(path: str | Path, db: str | Path | None = None) -> int:
    """`load`, reported for a person: 0, 2 unusable input, 3 busy, 130 interrupted."""
    return load_file_reported("ingest.seed_floor", load, (SeedFloorLoadError,), path, db)


def main(argv: list[str] | None = None) -> int:
    """python -m ingest.seed_floor FILE: load a seed floor of the directions."""
    return loader_main(argv, "ingest.seed_floor", __doc__.splitlines()[0],
                       "OUT/<pair>/seed_floor/<other>.parquet from compute.seed_floor", load_or_explain)


if __name__ == "__main__":
    sys.exit(main())
