"""Load URIAL's generated-mode token shift (python -m compute.urial) into the warehouse.

    python -m ingest.generated data/runs/demo/urial/generated.parquet

compute.urial calls this itself unless --no-load. The file's rows replace those of
raw.generated_token_shift with the same pair and mode, in one transaction: a failure
leaves the warehouse as it was, loading twice gives the same rows. These rows are
never mixed with the teacher-forced raw.token_shift (docs/behaviour.md).

Exit status: 0 loaded; 2 the file is unusable (named); 3 the warehouse is busy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ingest.warehouse import db_path, load_reported, writer_transaction


class GeneratedLoadError(ValueError):
    pass


def load(path: str | Path, db: str | Path | None = None) -> dict[str, int]:
    """Replace the (pair, mode) rows of raw.generated_token_shift with the file's."""
    path = Path(path)
    if not path.is_file():
        raise GeneratedLoadError(f"{path}: no such file (OUT/<pair>/urial/"
                                 "generated.parquet of python -m compute.urial)")
    with writer_transaction(db) as con:
        src, params = "read_parquet(?)", [str(path)]
        keys = con.execute(f"select distinct pair, mode from {src}",
                           params).fetchall()
        if len(keys) != 1:
            raise GeneratedLoadError(f"{path}: {len(keys)} (pair, mode) keys, "
                                     "expected one")
        con.execute("delete from raw.generated_token_shift where pair = ? and "
                    "mode = ?", list(keys[0]))
        con.execute("insert into raw.generated_token_shift by name "
                    f"select * from {src}", params)
        n = con.execute("select count(*) from raw.generated_token_shift where "
                        "pair = ? and mode = ?", list(keys[0])).fetchone()[0]
    return {"generated_token_shift": n}


def load_or_explain(path: str | Path, db: str | Path | None = None) -> int:
    """`load`, reported for a person: 0, 2 unusable input, 3 busy."""
    again = f"python -m ingest.generated {path}" + (f" --db {db}" if db else "")
    return load_reported(lambda: load(path, db), path, again, (GeneratedLoadError,),
                         f"loaded into {db_path(db)}")


def main(argv: list[str] | None = None) -> int:
    """python -m ingest.generated: load the generated mode's files; exit status."""
    ap = argparse.ArgumentParser(prog="python -m ingest.generated",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("path", type=Path, help="OUT/<pair>/urial/generated.parquet")
    ap.add_argument("--db", type=Path, help="warehouse (default $SFTSCOPE_DB or "
                    "data/warehouse.duckdb)")
    a = ap.parse_args(argv)
    return load_or_explain(a.path, a.db)


if __name__ == "__main__":
    sys.exit(main())
