"""The warehouse records its raw layout's version and upgrades an older one in place.

tests/fixtures/warehouse_v1.sql is the first release's raw layout (DDL as it created
it, three rows per table). Upgrading must reach the layout a new warehouse gets, table
by table and column by column, keep every row, and be one transaction.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from ingest import warehouse
from ingest.warehouse import SCHEMA_VERSION, SchemaError, ensure_raw_schema

FIXTURE = Path(__file__).parent / "fixtures" / "warehouse_v1.sql"
ROOT = Path(__file__).resolve().parent.parent


def build_v1(path: Path) -> None:
    con = duckdb.connect(str(path))
    con.execute(FIXTURE.read_text())
    con.close()


def columns(path: Path) -> dict[tuple[str, str], str]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {(t, c): d for t, c, d in con.execute(
            "select table_name, column_name, data_type from duckdb_columns() "
            "where schema_name = 'raw'").fetchall()}
    finally:
        con.close()


def contents(path: Path, cols: dict[tuple[str, str], str]) -> dict[str, list]:
    """Every row of every raw table, over the columns `cols` names, sorted."""
    tables: dict[str, list[str]] = {}
    for t, c in cols:
        tables.setdefault(t, []).append(c)
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {t: con.execute(
            "select " + ", ".join('"' + c + '"' for c in cs)
            + f" from raw.{t} order by all").fetchall() for t, cs in tables.items()}
    finally:
        con.close()


def upgrade_cli(db: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingest.upgrade", "--db", str(db),
                           *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_first_release_warehouse_upgrades_in_place_keeping_every_row(tmp_path):
    old, new = tmp_path / "old.duckdb", tmp_path / "new.duckdb"
    build_v1(old)
    old_cols = columns(old)
    before = contents(old, old_cols)
    assert sum(len(r) for r in before.values()) == 3 * len(before) >= 45

    out = upgrade_cli(old)
    assert out.returncode == 0, out.stderr
    assert f"raw schema version 1 -> {SCHEMA_VERSION}" in out.stdout

    with duckdb.connect(str(new)) as con:
        ensure_raw_schema(con)
    # The same tables and columns, of the same types, as a new warehouse's.
    assert columns(old) == columns(new)
    # Not a row lost or changed.
    assert contents(old, old_cols) == before
    con = duckdb.connect(str(old), read_only=True)
    versions = con.execute("select version from raw.schema_version order by version"
                           ).fetchall()
    con.close()
    assert [v for (v,) in versions] == [m.version for m in warehouse.MIGRATIONS]

    again = upgrade_cli(old)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert contents(old, old_cols) == before


def test_readers_refuse_an_old_warehouse_naming_the_upgrade_command(tmp_path):
    db = tmp_path / "old.duckdb"
    build_v1(db)
    with pytest.raises(SchemaError) as err, warehouse.connect(db, read_only=True):
        pass
    assert f"python -m ingest.upgrade --db {db}" in str(err.value)
    assert "version 1" in str(err.value)
    check = upgrade_cli(db, "--check")
    assert check.returncode == 0
    assert "raw schema version 1" in check.stdout and "would apply 2" in check.stdout
    # Neither changed the file.
    with warehouse.connect(db, read_only=True, check=False) as con:
        assert warehouse.schema_version(con) == 1


def test_a_new_warehouse_records_the_current_version_once(tmp_path):
    db = tmp_path / "w.duckdb"
    for _ in range(2):
        with warehouse.connect(db) as con:
            con.execute("begin")
            ensure_raw_schema(con)
            con.execute("commit")
    with warehouse.connect(db, read_only=True) as con:
        assert con.execute("select version, description from raw.schema_version"
                           ).fetchall() == [(SCHEMA_VERSION, "created")]


def test_a_failing_step_leaves_the_warehouse_as_it_was(tmp_path, monkeypatch):
    db = tmp_path / "old.duckdb"
    build_v1(db)
    cols = columns(db)
    before = contents(db, cols)
    bad = warehouse.Migration(SCHEMA_VERSION + 1, "a broken step", (
        "alter table raw.spectra add column if not exists expert INTEGER",
        "alter table raw.no_such_table add column x INTEGER"))
    monkeypatch.setattr(warehouse, "MIGRATIONS", (*warehouse.MIGRATIONS, bad))
    monkeypatch.setattr(warehouse, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(duckdb.CatalogException, match="no_such_table"):
        warehouse.upgrade(db)
    assert columns(db) == cols  # neither step 2 nor the new column
    assert contents(db, cols) == before


def test_a_warehouse_of_a_newer_release_is_refused_unchanged(tmp_path):
    db = tmp_path / "w.duckdb"
    with duckdb.connect(str(db)) as con:
        ensure_raw_schema(con)
        con.execute("insert into raw.schema_version values (?, 'future', "
                    "current_timestamp::timestamp, null)", [SCHEMA_VERSION + 1])
    with duckdb.connect(str(db)) as con, pytest.raises(SchemaError, match="newer"):
        ensure_raw_schema(con)
    out = upgrade_cli(db)
    assert out.returncode == 2 and "newer sftscope release" in out.stderr


@pytest.mark.slow
def test_dbt_upgrades_an_old_warehouse_before_it_reads(tmp_path):
    db = tmp_path / "old.duckdb"
    build_v1(db)
    cols = columns(db)
    before = contents(db, cols)
    env = {**os.environ, "SFTSCOPE_DB": str(db),
           "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    out = subprocess.run([str(Path(sys.executable).parent / "dbt"), "run", "--select",
                          "stg_stackexchange__tags"], cwd=ROOT / "dbt_project", env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:]
    with warehouse.connect(db, read_only=True) as con:  # current: no SchemaError
        assert warehouse.schema_version(con) == SCHEMA_VERSION
        assert con.execute("select count(*) from staging.stg_stackexchange__tags"
                           ).fetchone()[0] == 3
    assert contents(db, cols) == before
