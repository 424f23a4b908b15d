"""Load URIAL's generated-mode token shift (python -m compute.urial) into the warehouse.

    python -m ingest.generated data/runs/demo/urial/generated.parquet

compute.urial calls this itself unless --no-load. The file's rows replace those of
raw.generated_token_shift with the same pair and mode, in one transaction: a failure
leaves the warehouse as it was, loading twice gives the same rows. These rows are
never mixed with the teacher-forced raw.token_shift (docs/behaviour.md).

Exit status: 0 loaded; 2 the file is unusable (named); 3 the warehouse is busy.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ingest.warehouse import load_file_reported, loader_main, writer_transaction


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
    """`load`, reported for a person: 0, 2 unusable input, 3 busy, 130 interrupted."""
    return load_file_reported("ingest.generated", load, (GeneratedLoadError,), path, db)


def main(argv: list[str] | None = None) -> int:
    """python -m ingest.generated: load the generated mode's files; exit status."""
    return loader_main(argv, "ingest.generated", __doc__.splitlines()[0],
                       "OUT/<pair>/urial/generated.parquet", load_or_explain)


if __name__ == "__main__":
    sys.exit(main())
