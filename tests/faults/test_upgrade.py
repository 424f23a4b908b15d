"""A warehouse of an older release, upgraded, ends with a working `dbt build`.

The older release is emulated from the fault suite's warehouse (a site and pair
'small'), built by this release's dbt, then taken back to the layout the release
before wrote: raw schema version 11 (raw.token_logprobs and token_shift without
`nonfinite`, no post types nor step 13's columns, no step 14's seed-floor table nor
step 15's raw.random_spectra, version 11 recorded) and its
per-run marts without `run_finished_at`, as the release before the incremental marts built them (the column they added, commit
c73873a). `dbt build` alone fails on them, naming --full-refresh; before,
`ingest.upgrade` said nothing about the marts (its "nothing to do" or "applied ..."
read as done), and nothing ran the refresh."""

from __future__ import annotations

import shutil

import duckdb
import pytest

from ingest.marts_check import incremental_models
from ingest.upgrade import main as upgrade_main
from tests.conftest import run_dbt

# what raw-schema step 13 adds (ingest/warehouse.py MIGRATIONS)
STEP_13_COLUMNS = (("post_texts", "post_type"), ("lora_recovery_posts", "vectors"),
                   ("lora_recovery_posts", "post_type"), ("lora_recovery_ranks", "n_vectors"),
                   ("lora_recovery_ranks", "behaviour_run_id"),
                   ("lora_recovery_ranks", "window_tokens"),
                   ("direction_overlap", "span_dim"), ("intruders", "null_dim"))


def _marts(db) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        names = [f"{s}.{t}" for s, t in con.execute(
            "select schema_name, table_name from duckdb_tables() where schema_name "
            "in ('marts', 'intermediate') order by all").fetchall()]
        return {n: con.execute(f"select count(*) from {n}").fetchone()[0]
                for n in names}
    finally:
        con.close()


@pytest.fixture(scope="module")
def older_release(base_warehouse, tmp_path_factory):
    """(warehouse of the older release, mart row counts this release builds from the
    same raw rows, the marts taken back to the older layout)."""
    work = tmp_path_factory.mktemp("older")
    built = work / "built.duckdb"
    shutil.copyfile(base_warehouse[0], built)
    con = duckdb.connect(str(built))  # the older release knew no post types
    con.execute("update raw.post_texts set post_type = null")
    con.close()
    run_dbt(built, "build")
    want = _marts(built)
    old = work / "old.duckdb"
    shutil.copyfile(built, old)
    con = duckdb.connect(str(old))
    dropped = []
    for name, (schema, _) in incremental_models().items():
        if con.execute("select count(*) from duckdb_columns() where schema_name = ? "
                       "and table_name = ? and column_name = 'run_finished_at'",
                       [schema, name]).fetchone()[0]:
            con.execute(f"alter table {schema}.{name} drop column run_finished_at")
            dropped.append(f"{schema}.{name}")
    for table in ("token_logprobs", "token_shift"):
        con.execute(f"alter table raw.{table} drop column nonfinite")
    for table, column in STEP_13_COLUMNS:
        con.execute(f"alter table raw.{table} drop column {column}")
    for table in ("direction_signs", "training_threads", "seed_direction_overlap",
                  "random_spectra", "patch_models", "patch_posts"):
        con.execute(f"drop table raw.{table}")
    # a warehouse created at version 17 records only that: created at 11 instead
    assert con.execute("select list(version) from raw.schema_version").fetchone()[0] \
        == [17]
    con.execute("update raw.schema_version set version = 11")
    con.close()
    return old, want, dropped


@pytest.mark.slow
def test_upgrade_names_the_stale_marts_and_refresh_builds_green(older_release,
                                                                tmp_path, capsys):
    old, want, dropped = older_release
    assert "marts.fct_matrix_metrics" in dropped and len(dropped) >= 10
    db = tmp_path / "warehouse.duckdb"
    shutil.copyfile(old, db)

    # --check: the raw step it lacks and the marts, nothing changed
    before = _marts(db)
    assert upgrade_main(["--db", str(db), "--check"]) == 0
    out = capsys.readouterr().out
    assert "raw schema version 11, this release writes 17" in out, out
    assert "would apply 12: raw.token_logprobs, token_shift: nonfinite" in out
    assert "would apply 13: post types of scored posts" in out
    assert "would apply 14: raw.seed_direction_overlap: the seed floor" in out
    assert "would apply 15: raw.random_spectra: WeightWatcher's correlation" in out
    assert "would apply 16: raw.patch_models, patch_posts: weight patching" in out
    assert "would apply 17: raw.patch_posts: KL to and from the base" in out
    assert "  marts.fct_matrix_metrics (lacks run_finished_at)" in out, out
    assert _marts(db) == before

    # the fault: dbt build alone (it upgrades the raw layout itself) fails; one
    # stale mart and what it reads are enough to show it (every model takes minutes)
    proc = run_dbt(db, "build", "--select", "+fct_matrix_metrics", check=False)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "was built by an earlier release, as a plain table: rebuild the marts " \
        "once with `dbt build --full-refresh`" in proc.stdout, proc.stdout[-3000:]

    # ingest.upgrade names them and the command, and changes no mart
    assert upgrade_main(["--db", str(db)]) == 0
    out = capsys.readouterr().out
    # named: those whose YAML declares the column (int_spectrum_stats declares
    # none, so it is not compared; the refresh rebuilds it all the same)
    declared = [f"{schema}.{name}" for name, (schema, cols)
                in incremental_models().items() if "run_finished_at" in cols]
    named = [d for d in dropped if d in declared]
    assert len(named) >= 10 and f"{len(named)} mart(s) built by an earlier " \
        "release" in out, out
    for name in named:
        assert f"  {name} (lacks run_finished_at)" in out, out
    assert f"SFTSCOPE_DB={db} dbt build --full-refresh" in out
    assert _marts(db) == before

    # --refresh rebuilds them: the marts this release builds from the same rows
    assert upgrade_main(["--db", str(db), "--refresh"]) == 0
    capsys.readouterr()
    assert _marts(db) == want
    proc = run_dbt(db, "build", check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert _marts(db) == want
    assert upgrade_main(["--db", str(db)]) == 0
    assert "built by an earlier release" not in capsys.readouterr().out
