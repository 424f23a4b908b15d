"""Marts an earlier release built that this release's `dbt build` cannot extend.

    from ingest.marts_check import stale_marts, refresh
    stale_marts(con)     # [("marts.fct_post_perplexity", ["run_finished_at"]), ...]
    refresh(db)          # dbt build --full-refresh on that warehouse; dbt's exit status

The per-run marts are incremental with on_schema_change='fail' (a column the table
lacks would leave the older runs' rows without it), so after an upgrade of sftscope a
mart whose table lacks a column this release's model declares makes `dbt build` fail
until it is rebuilt once with --full-refresh. `python -m ingest.upgrade` says so, and
runs it with --refresh. The declared columns are the models' YAML (dbt_project/models);
a column a model has but does not declare is not compared.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

DBT_DIR = Path(__file__).resolve().parent.parent / "dbt_project"
INCREMENTAL = re.compile(r"materialized\s*=\s*['\"]incremental['\"]")


def incremental_models(project: Path = DBT_DIR) -> dict[str, tuple[str, set[str]]]:
    """model name -> (its schema: the folder under models/, the columns its YAML
    declares) for every incremental model of the dbt project."""
    import yaml

    models = project / "models"
    declared: dict[str, set[str]] = {}
    for f in sorted(models.rglob("*.yml")):
        doc = yaml.safe_load(f.read_text()) or {}
        for m in doc.get("models") or []:
            declared[m["name"]] = {c["name"] for c in m.get("columns") or []}
    return {f.stem: (f.relative_to(models).parts[0], declared.get(f.stem, set()))
            for f in sorted(models.rglob("*.sql")) if INCREMENTAL.search(f.read_text())}


def stale_marts(con, project: Path = DBT_DIR) -> list[tuple[str, list[str]]]:
    """(schema.model, the declared columns its table lacks) of each incremental model
    already built in the warehouse `con` holds, whose table lacks any."""
    have: dict[str, set[str]] = {}
    for schema, table, column in con.execute(
            "select schema_name, table_name, column_name from duckdb_columns() "
            "where database_name = current_database()").fetchall():
        have.setdefault(f"{schema}.{table}", set()).add(column)
    out = []
    for name, (schema, cols) in incremental_models(project).items():
        table = have.get(f"{schema}.{name}")
        if table and cols - table:
            out.append((f"{schema}.{name}", sorted(cols - table)))
    return out


def refresh_command(db: Path) -> str:
    """The command that rebuilds every model of the warehouse at `db` once."""
    return (f"cd {DBT_DIR} && SFTSCOPE_DB={Path(db).absolute()} "
            "dbt build --full-refresh")


def refresh(db: Path) -> int:
    """`dbt build --full-refresh` on the warehouse at `db` (its output passed on);
    dbt's exit status."""
    dbt = Path(sys.executable).with_name("dbt")
    exe = str(dbt) if dbt.exists() else shutil.which("dbt") or "dbt"
    root = str(DBT_DIR.parent)
    env = os.environ | {"SFTSCOPE_DB": str(Path(db).absolute()),
                        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
                        "PYTHONPATH": os.pathsep.join(
                            [root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([exe, "build", "--full-refresh"], cwd=DBT_DIR, env=env,
                          check=False).returncode
