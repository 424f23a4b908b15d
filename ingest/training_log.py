"""Load a training log (compute.fixtures.train_demo's training_log.csv) into
raw.training_log, and the threads the pair was trained on (training_threads.csv
beside it, where the folder has one) into raw.training_threads.

    python -m ingest.training_log models/demo --pair demo [--db data/warehouse.duckdb]

One row per (pair, role, step): the training loss of the step, the held-out losses
where they were evaluated, the learning rate and the tokens seen. The file is checked
before anything is written (an error names the file, the line and the column); the
load is one transaction that replaces the pair's earlier rows, so loading twice gives
the same rows and a failure leaves the warehouse as it was; after it, the warehouse is
published to its readers (ingest.snapshot).

Exit status: 0 loaded; 2 the file is unusable (named in the message); 3 the warehouse
is held by another process (nothing changed: run it again later).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from ingest.warehouse import (
    WarehouseBusy,
    replace_pair_rows,
    writer_transaction,
)

FILE = "training_log.csv"
THREADS_FILE = "training_threads.csv"  # site, thread_id: what the training saw
ROLES = ("base", "sft")
# column -> (parser, required)
COLUMNS = {
    "role": (str, True), "step": (int, True), "epoch": (float, True),
    "tokens_seen": (int, True), "lr": (float, True), "train_loss": (float, False),
    "heldout_post_loss": (float, False), "heldout_answer_loss": (float, False),
    "seconds": (float, False),
}


class TrainingLogError(ValueError):
    """A training log we refuse to load; the message names the file and the line."""


def read_log(path: str | Path) -> list[dict]:
    """The rows of a training_log.csv (or of the one in a folder), typed and checked."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE
    if not path.is_file():
        raise TrainingLogError(f"{path}: no such file")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise TrainingLogError(f"{path}: line 1: missing column(s) "
                                   f"{', '.join(missing)}")
        rows, seen = [], set()
        for line, raw in enumerate(reader, start=2):
            row = {}
            for col, (parse, required) in COLUMNS.items():
                text = (raw.get(col) or "").strip()
                if not text:
                    if required:
                        raise TrainingLogError(f"{path}: line {line}: {col} is empty")
                    row[col] = None
                    continue
                try:
                    row[col] = parse(text)
                except ValueError:
                    raise TrainingLogError(f"{path}: line {line}: {col} = {text!r} is "
                                           f"not {parse.__name__}") from None
                if parse is float and not math.isfinite(row[col]):
                    raise TrainingLogError(f"{path}: line {line}: {col} = {text} is "
                                           "not finite")
            if row["role"] not in ROLES:
                raise TrainingLogError(f"{path}: line {line}: role {row['role']!r} is "
                                       f"not one of {', '.join(ROLES)}")
            key = (row["role"], row["step"])
            if key in seen:
                raise TrainingLogError(f"{path}: line {line}: step {row['step']} of "
                                       f"{row['role']} appears twice")
            seen.add(key)
            rows.append(row)
    if not rows:
        raise TrainingLogError(f"{path}: no rows")
    return rows


def read_threads(path: Path) -> list[dict]:
    """The rows of a training_threads.csv (site, thread_id), checked."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != ["site", "thread_id"]:
            raise TrainingLogError(f"{path}: columns {reader.fieldnames}, expected "
                                   "['site', 'thread_id']")
        out = []
        for line, r in enumerate(reader, start=2):
            try:
                out.append({"site": r["site"], "thread_id": int(r["thread_id"])})
            except (TypeError, ValueError):
                raise TrainingLogError(f"{path}, line {line}: thread_id "
                                       f"{r['thread_id']!r} is not an integer") from None
            if not r["site"]:
                raise TrainingLogError(f"{path}, line {line}: no site")
    return out


def load_log(path: str | Path, pair: str, db: str | Path | None = None) -> int:
    """Replace `pair`'s rows of raw.training_log with the file's (and of
    raw.training_threads with training_threads.csv beside it, if any); returns the
    log's count."""
    import pyarrow as pa

    rows = read_log(path)
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    threads = read_threads(folder / THREADS_FILE) if (
        folder / THREADS_FILE).is_file() else None
    types = {str: pa.string(), int: pa.int64(), float: pa.float64()}
    table = pa.Table.from_pylist(
        [{"pair": pair} | r for r in rows],
        schema=pa.schema([("pair", pa.string())]
                         + [(c, types[t]) for c, (t, _) in COLUMNS.items()]))
    with writer_transaction(db) as con:
        con.register("_training_log_rows", table)
        if threads is not None:  # registered before the first result is open
            con.register("_threads", pa.Table.from_pylist(
                [{"pair": pair} | t for t in threads],
                schema=pa.schema([("pair", pa.string()), ("site", pa.string()),
                                  ("thread_id", pa.int64())])))
        n = replace_pair_rows(con, "training_log", pair,
                              "select * from _training_log_rows")
        if threads is not None:
            replace_pair_rows(con, "training_threads", pair, "select * from _threads")
    return n


def main(argv: list[str] | None = None) -> int:
    """python -m ingest.training_log PATH --pair NAME: load a training log."""
    ap = argparse.ArgumentParser(prog="python -m ingest.training_log",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("path", type=Path, help=f"a {FILE} or the folder holding one")
    ap.add_argument("--pair", required=True, help="the pair's name in the warehouse")
    ap.add_argument("--db", type=Path, help="warehouse (default $SFTSCOPE_DB or "
                    "data/warehouse.duckdb)")
    a = ap.parse_args(argv)
    try:
        n = load_log(a.path, a.pair, a.db)
    except TrainingLogError as exc:
        print(f"error: {exc}\nNothing was changed in the warehouse.", file=sys.stderr)
        return 2
    except WarehouseBusy as exc:
        print(f"error: {exc}\nNothing was changed in the warehouse.", file=sys.stderr)
        return 3
    print(f"loaded {a.path} as pair {a.pair}: raw.training_log {n} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
