"""Write the warehouse's `marts.prompts` to one Parquet file, so a GPU machine can
score the prompts without the warehouse.

    python -m ingest.export_prompts prompts.parquet [--db PATH]

The file has the table's columns as they are (site, post_id, post_type, grp, score,
title, text, n_chars, ...), ordered by grp and sample_rank. It is written under a
temporary name next to OUT and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ingest.atomic import atomic_path
from ingest.warehouse import WarehouseBusy, connect


def export(out: str | os.PathLike, db: str | os.PathLike | None = None) -> int:
    """Write marts.prompts to `out`; returns the number of rows."""
    with atomic_path(Path(out)) as tmp, connect(db, read_only=True) as con:
        found = con.execute(
            "select count(*) from duckdb_tables()"
            " where schema_name = 'marts' and table_name = 'prompts'"
        ).fetchone()[0]
        if not found:
            raise LookupError(
                "marts.prompts does not exist yet: load a site"
                " (python -m ingest.stackexchange ...) and run `dbt build`"
            )
        n = con.execute("select count(*) from marts.prompts").fetchone()[0]
        escaped = str(tmp).replace("'", "''")
        con.execute(
            "copy (select * from marts.prompts order by grp, sample_rank, post_id)"
            f" to '{escaped}' (format parquet, compression zstd)"
        )
    return n


def main(argv: list[str] | None = None) -> int:
    """python -m ingest.export_prompts OUT: write marts.prompts to Parquet."""
    ap = argparse.ArgumentParser(prog="python -m ingest.export_prompts",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("out", help="the Parquet file to write")
    ap.add_argument("--db", help="warehouse file (default $SFTSCOPE_DB or"
                    " data/warehouse.duckdb)")
    args = ap.parse_args(argv)
    try:
        n = export(args.out, args.db)
    except (LookupError, FileNotFoundError, WarehouseBusy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{n} prompts -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
