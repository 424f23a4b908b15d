"""What dbt users expect of the project: exposures that declare the app's pages and
what they read, `dbt docs generate` with descriptions, and warnings (not failures)
for raw tables that are empty or stale."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml

from ingest.warehouse import ensure_raw_schema

ROOT = Path(__file__).resolve().parent.parent
DBT = ROOT / "dbt_project"


def exposures() -> dict[str, dict]:
    doc = yaml.safe_load((DBT / "models" / "exposures.yml").read_text())
    return {e["name"]: e for e in doc["exposures"]}


def refs(exposure: dict) -> set[str]:
    return {m.group(1) for d in exposure["depends_on"]
            for m in [re.match(r"ref\('(\w+)'\)", d)] if m}


def test_every_mart_the_app_reads_is_declared_by_an_exposure():
    """app_lib/ is where the pages' SQL lives (queries.py and a module per newer
    page): each `marts.X` it reads must be in some page's `depends_on` (else: add
    it to models/exposures.yml)."""
    read = {m for f in (ROOT / "app_lib").glob("*.py")
            for m in re.findall(r"\bmarts\.(\w+)", f.read_text())}
    declared = set().union(*(refs(e) for e in exposures().values()))
    assert {"fct_expert_metrics", "fct_direction_overlap",
            "fct_top_shifted_tokens"} <= read, "app_lib/ no longer read as it was"
    assert read <= declared, f"undeclared in exposures.yml: {sorted(read - declared)}"


def test_each_exposure_is_a_page_of_the_app_and_its_models_exist():
    app = (ROOT / "app.py").read_text()
    models = {p.stem for p in (DBT / "models").rglob("*.sql")}
    for name, e in exposures().items():
        path = e["url"].rstrip("/").rsplit("/", 1)[-1]
        if path.endswith(":8501"):
            assert '"app_pages/overview.py"' in app and name == "overview"
        else:
            assert f'url_path="{path}"' in app, (name, e["url"])
        assert e["type"] == "application" and e["description"].strip()
        assert refs(e) <= models, (name, refs(e) - models)


def dbt(db: Path, target: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SFTSCOPE_DB": str(db), "DBT_TARGET_PATH": str(target),
           "DBT_LOG_PATH": str(target / "logs"),
           "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    return subprocess.run([str(Path(sys.executable).parent / "dbt"), *args],
                          cwd=DBT, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_docs_generate_and_the_warnings_on_empty_or_stale_raw_tables(tmp_path):
    db = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(db)) as con:
        ensure_raw_schema(con)  # every raw table, empty ...
        con.execute("insert into raw.compute_runs (run_id, pair, kind, base_model, "
                    "sft_model, finished_at) values ('r', 'p', 'spectra', 'a', 'b', "
                    "timestamp '2020-01-01')")  # ... but one, loaded long ago
    target = tmp_path / "target"

    fresh = dbt(db, target, "source", "freshness")
    assert fresh.returncode == 0, fresh.stdout[-3000:]  # warnings, not errors
    results = {r["unique_id"]: r for r in
               json.loads((target / "sources.json").read_text())["results"]}
    assert results["source.sftscope.compute.compute_runs"]["status"] == "warn"
    assert results["source.sftscope.compute.compute_runs"]["max_loaded_at"].startswith(
        "2020-01-01")

    empty = dbt(db, target, "build", "--select", "warn_raw_tables_empty")
    assert empty.returncode == 0, empty.stdout[-3000:]
    assert "Warning in test warn_raw_tables_empty" in empty.stdout
    with duckdb.connect(str(db)) as con:
        n_empty = con.execute(
            "select count(*) from duckdb_tables() where schema_name = 'raw' "
            "and table_name not in ('compute_runs', 'schema_version') "
            "and estimated_size = 0").fetchone()[0]
    assert f"Got {n_empty} results, configured to warn" in empty.stdout

    docs = dbt(db, target, "docs", "generate")
    assert docs.returncode == 0, docs.stdout[-3000:]
    manifest = json.loads((target / "manifest.json").read_text())
    assert set(manifest["exposures"]) == {f"exposure.sftscope.{n}" for n in exposures()}
    spectra = manifest["sources"]["source.sftscope.compute.spectra"]
    assert spectra["description"]
    assert (target / "catalog.json").exists() and (target / "index.html").exists()
