"""Load LoRA extractions and rank-recovery runs into the warehouse.

    python -m ingest.lora data/adapters/p8                       # an extracted adapter
    python -m ingest.lora data/runs/planted/lora_recovery/all    # a recovery run

compute.lora.extract and compute.lora.recovery call this themselves; run it by hand
for results made with --no-load (on another machine). An adapter folder's
lora_extraction.parquet replaces the rows of raw.lora_extractions with the same pair
and extraction name; a recovery folder (ranks.parquet and posts/*.parquet) replaces
the rows of raw.lora_recovery_ranks and raw.lora_recovery_posts with the same pair
and module choice. One transaction each: a failure leaves the warehouse as it was,
loading twice gives the same rows.

Exit status: 0 loaded; 2 the files are unusable (named in the message); 3 the
warehouse is held by another process (nothing changed: run it again later).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from ingest.warehouse import load_file_reported, loader_main, writer_transaction

EXTRACTION_FILE = "lora_extraction.parquet"
RANKS_FILE = "ranks.parquet"


class LoraLoadError(ValueError):
    pass


@functools.cache
def _schemas() -> dict:
    import pyarrow as pa

    s, i, d, b, big = pa.string(), pa.int32(), pa.float64(), pa.bool_(), pa.int64()
    return {
        "lora_extractions": pa.schema([
            ("extraction", s), ("pair", s), ("base_model", s), ("sft_model", s),
            ("rule", s), ("rank_asked", s), ("min_energy", d), ("adapter_dir", s),
            ("dtype", s), ("tensor", s), ("module_path", s), ("layer", i),
            ("module", s), ("n_rows", i), ("n_cols", i), ("rank", i),
            ("frobenius_sq", d), ("retained_sq", d), ("retained_share", d),
            ("s_last", d), ("s_next", d), ("n_params", big), ("seconds", d),
            ("options", s), ("full_rank", b)]),
        "lora_recovery_ranks": pa.schema([
            ("run_id", s), ("pair", s), ("base_model", s), ("sft_model", s),
            ("modules", s), ("rank", i), ("is_full", b), ("n_matrices", i),
            ("n_params", big), ("retained_sq", d), ("frobenius_sq", d),
            ("vectors", s), ("device", s), ("dtype", s), ("seconds", d),
            ("n_vectors", i), ("behaviour_run_id", s), ("window_tokens", i)]),
        "lora_recovery_posts": pa.schema([
            ("run_id", s), ("pair", s), ("modules", s), ("rank", i),
            ("post_id", big), ("site", s), ("grp", s), ("n_tokens", i),
            ("vectors", s), ("post_type", s),
            ("sum_logprob", d), ("sum_logprob_sft", d), ("sum_kl_sft_rank", d),
            ("sum_kl_rank_sft", d)]),
    }


def extraction_schema():
    """The Arrow schema of raw.lora_extractions."""
    return _schemas()["lora_extractions"]


def recovery_schemas() -> dict:
    """The Arrow schemas of the raw.lora_recovery_* tables."""
    return {k: v for k, v in _schemas().items() if k.startswith("lora_recovery")}


def _files(path: Path) -> tuple[str, dict[str, list[Path]], list[str]]:
    """(kind, {raw table: files}, key columns) of an adapter or recovery folder."""
    if path.is_dir() and (path / EXTRACTION_FILE).exists():
        path = path / EXTRACTION_FILE
    if path.is_file() and path.name == EXTRACTION_FILE:
        return "extraction", {"lora_extractions": [path]}, ["pair", "extraction"]
    if path.is_dir() and (path / RANKS_FILE).exists():
        posts = sorted((path / "posts").glob("*.parquet"))
        if not posts:
            raise LoraLoadError(f"{path}: ranks.parquet but no posts/*.parquet")
        return "recovery", {"lora_recovery_ranks": [path / RANKS_FILE],
                            "lora_recovery_posts": posts}, ["pair", "modules"]
    raise LoraLoadError(f"{path}: neither an extracted adapter ({EXTRACTION_FILE}) "
                        f"nor a recovery run ({RANKS_FILE} and posts/)")


def load(path: str | Path, db: str | Path | None = None) -> dict[str, int]:
    """Replace the rows of the same keys; returns rows per raw table."""
    _, tables, keys = _files(Path(path))
    counts: dict[str, int] = {}
    with writer_transaction(db) as con:
        for table, files in tables.items():
            src = "read_parquet(?, union_by_name = true)"
            params = [[str(f) for f in files]]
            found = con.execute(f"select distinct {', '.join(keys)} from {src}",
                                params).fetchall()
            if len(found) != 1:
                raise LoraLoadError(f"{files[0].parent}: {table} files hold "
                                    f"{len(found)} ({', '.join(keys)}) keys, "
                                    "expected one")
            con.execute(f"delete from raw.{table} where "
                        + " and ".join(f"{k} = ?" for k in keys), list(found[0]))
            con.execute(f"insert into raw.{table} by name select * from {src}",
                        params)
            counts[table] = con.execute(
                f"select count(*) from raw.{table} where "
                + " and ".join(f"{k} = ?" for k in keys), list(found[0])
            ).fetchone()[0]
    return counts


def load_or_explain(path: str | Path, db: str | Path | None = None) -> int:
    """`load`, reported for a person: 0, 2 unusable input, 3 busy, 130 interrupted."""
    return load_file_reported("ingest.lora", load, (LoraLoadError,), path, db)


def main(argv: list[str] | None = None) -> int:
    """python -m ingest.lora PATH: load an extraction or a recovery run."""
    return loader_main(argv, "ingest.lora", __doc__.splitlines()[0],
                       "an adapter folder from compute.extract_lora, or "
                       "OUT/<pair>/lora_recovery/<modules>", load_or_explain)


if __name__ == "__main__":
    sys.exit(main())
