"""Load a trajectory's series (compute.run --trajectory) into raw.trajectory_steps and
raw.trajectory_overlap.

    python -m ingest.trajectory data/runs/N [--db data/warehouse.duckdb] [--with-steps]

OUT/N/trajectory.json names the steps (step, checkpoint, tokens seen, the step's pair
and its consecutive difference's), OUT/N/trajectory/overlap.parquet holds the overlap
of consecutive top-k dW subspaces. Both are checked before anything is written (an
error names the file and the step); the load is one transaction that replaces the
series' earlier rows, so loading twice gives the same rows. `--with-steps` first
loads every step's pair folder (OUT/N/steps/*, ingest.compute_load), as compute.run
does after each step; a series computed with `--no-load` needs it.

Exit status: 0 loaded; 2 the folder or its files are unusable (named in the
message); 3 the warehouse is held by another process (nothing changed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ingest.warehouse import load_reported, writer_transaction

MANIFEST = "trajectory.json"
OVERLAP = Path("trajectory") / "overlap.parquet"
STEP_COLUMNS = ("step", "position", "model", "revision", "pair", "diff_pair",
                "tokens_seen", "train_loss", "done")


class TrajectoryLoadError(ValueError):
    """A series folder we refuse to load; the message names the file and the step."""


def read_series(folder: str | Path) -> tuple[dict, list[dict]]:
    """(the manifest, its step rows), checked: every step done, steps increasing."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise TrajectoryLoadError(f"{path}: no such file (is {folder} the folder "
                                  "compute.run --trajectory wrote?)") from None
    except (json.JSONDecodeError, OSError) as exc:
        raise TrajectoryLoadError(f"{path}: unreadable ({exc})") from None
    rows = manifest.get("series")
    if not isinstance(manifest.get("name"), str) or not isinstance(rows, list) or not rows:
        raise TrajectoryLoadError(f"{path}: no name or no steps")
    previous = None
    for r in rows:
        missing = [c for c in STEP_COLUMNS if c not in r]
        if missing or not isinstance(r["step"], int):
            raise TrajectoryLoadError(f"{path}: step {r.get('step')!r}: missing or bad "
                                      f"{', '.join(missing) or 'step'}")
        if not r["done"]:
            raise TrajectoryLoadError(f"{path}: step {r['step']} is not done; run the "
                                      "compute.run command again to finish it")
        if previous is not None and r["step"] <= previous:
            raise TrajectoryLoadError(f"{path}: step {r['step']} after {previous}: "
                                      "the steps must increase")
        previous = r["step"]
    return manifest, rows


def _tables(folder: Path, manifest: dict, rows: list[dict]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = manifest["name"]
    steps = pa.Table.from_pylist([{
        "trajectory": name, "step": r["step"], "position": r["position"],
        "base_model": manifest["base_model"], "base_revision":
        manifest.get("base_revision"), "sft_model": r["model"],
        "sft_revision": r["revision"], "pair": r["pair"], "diff_pair": r["diff_pair"],
        "tokens_seen": r["tokens_seen"], "train_loss": r["train_loss"],
        "finished_at": manifest.get("finished_at")} for r in rows])
    path = folder / OVERLAP
    try:
        overlap = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise TrajectoryLoadError(f"{path}: unreadable ({exc})") from None
    if overlap.num_rows:
        names = set(overlap.column("trajectory").to_pylist())
        known = {r["step"] for r in rows}
        odd = set(overlap.column("step").to_pylist()) - known
        if names != {name} or odd:
            raise TrajectoryLoadError(f"{path}: rows of another series ({names}) or "
                                      f"of steps not in {MANIFEST} ({sorted(odd)})")
    return steps, overlap


def load_series(folder: str | Path, db: str | Path | None = None) -> dict[str, int]:
    """Replace the series' rows of raw.trajectory_steps and raw.trajectory_overlap;
    the row counts per table."""
    folder = Path(folder)
    manifest, rows = read_series(folder)
    steps, overlap = _tables(folder, manifest, rows)
    name = manifest["name"]
    counts = {}
    with writer_transaction(db) as con:
        for table, data in (("trajectory_steps", steps),
                            ("trajectory_overlap", overlap)):
            con.execute(f"delete from raw.{table} where trajectory = ?", [name])
            con.register("_trajectory_rows", data)
            if data.num_rows:
                con.execute(f"insert into raw.{table} by name "
                            "select * from _trajectory_rows")
            con.unregister("_trajectory_rows")
            counts[table] = con.execute(
                f"select count(*) from raw.{table} where trajectory = ?",
                [name]).fetchone()[0]
    return counts


def load_or_explain(folder: str | Path, db: str | Path | None = None) -> int:
    """load_series with its errors as one-line messages; the exit status."""
    return load_reported(lambda: load_series(folder, db), folder,
                         f"python -m ingest.trajectory {folder}", (TrajectoryLoadError,),
                         done=f"loaded trajectory {Path(folder).name}")


def main(argv: list[str] | None = None) -> int:
    """`python -m ingest.trajectory OUT/NAME`: load a finished series; the exit status."""
    ap = argparse.ArgumentParser(prog="python -m ingest.trajectory",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="OUT/<name> of compute.run --trajectory")
    ap.add_argument("--db", type=Path, help="warehouse (default $SFTSCOPE_DB or "
                    "data/warehouse.duckdb)")
    ap.add_argument("--with-steps", action="store_true",
                    help="first load every step's pair folder (OUT/<name>/steps/*)")
    a = ap.parse_args(argv)
    if a.with_steps:
        from ingest.compute_load import load_or_explain as load_pair

        for pair_dir in sorted((a.folder / "steps").glob("*/run.json")):
            code = load_pair(pair_dir.parent, a.db)
            if code:
                return code
    return load_or_explain(a.folder, a.db)


if __name__ == "__main__":
    sys.exit(main())
