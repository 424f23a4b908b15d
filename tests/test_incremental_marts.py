"""The per-run marts are incremental (macros/incremental_by_run.sql): a build after a
load works on the loaded run only, and gives the rows a full rebuild gives.

Starting from the session's demo warehouse (the planted pair, built by the real
pipeline), pairs are loaded with `ingest.compute_load` from run folders made of that
pair's raw rows under another name (so each carries spectra, directions and
behaviour), then `dbt run` builds the incremental models. A reload of the same run id
with other content, a new run id replacing a pair, a spectra reload that deletes the
pair's directions, and a behaviour-only reload are each followed by an incremental
build; at the end `--full-refresh` must give the same rows in every incremental mart.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import duckdb
import pytest

from ingest.compute_load import KIND_TABLES, load_run
from tests.conftest import query, run_dbt

INCREMENTAL = "config.materialized:incremental"


def incremental_tables(db: Path) -> list[str]:
    """Every table built per run: the ones with a run_finished_at column."""
    return [f"{s}.{t}" for s, t in query(
        db, "select schema_name, table_name from duckdb_columns() "
        "where column_name = 'run_finished_at' and schema_name in "
        "('marts', 'intermediate') group by all order by all")]


def rows(db: Path, table: str) -> list[tuple]:
    """The table's rows, sorted on their columns other than doubles."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute(f"select * from {table}")
        got = cur.fetchall()
    finally:
        con.close()
    return sorted(got, key=lambda r: repr([v for v in r if not isinstance(v, float)]))


def worst(a: list[tuple], b: list[tuple]) -> float:
    """0 when the rows are equal, inf when they differ in anything but doubles, else
    the largest difference of two doubles (relative, or absolute below 1): sums of
    many rows come out in their last bits differently from one DuckDB build to the
    next (two full builds of the same rows differ there too)."""
    if len(a) != len(b):
        return math.inf
    out = 0.0
    for r, s in zip(a, b, strict=True):
        for x, y in zip(r, s, strict=True):
            if isinstance(x, float) and isinstance(y, float):
                if not (math.isnan(x) and math.isnan(y)) and x != y:
                    out = max(out, abs(x - y) / max(1.0, abs(x), abs(y)))
            elif x != y:
                return math.inf
    return out


def export_run(db: Path, pair: str, out: Path, *, new_pair: str, run_id: str,
               finished: str, kinds: tuple[str, ...] = ("spectra", "directions",
                                                         "behaviour"),
               logprob_shift: float = 0.0, spectra_scale: float = 1.0) -> Path:
    """A compute.run output folder holding `pair`'s raw rows as `new_pair`'s run
    `run_id` (every kind finished at `finished`): what `ingest.compute_load` reads.
    `logprob_shift` is added to the SFT's log-probs, `spectra_scale` multiplies
    every singular value (other content under the same run id)."""
    folder = out / new_pair
    shutil.rmtree(folder, ignore_errors=True)
    con = duckdb.connect(str(db), read_only=True)
    manifest = {"pair": new_pair, "run_id": run_id, "base_model": "b",
                "sft_model": "s", "kinds": {}}
    try:
        for kind in kinds:
            for table, pattern in KIND_TABLES[kind].items():
                # the pattern's folder and a file name compute.run gives it (one
                # file: a tensor's, or a batch's)
                name = pattern.replace("[0-9]*", "00000").replace(
                    "*", "0-000000000000" if kind == "behaviour" else "00000")
                path = folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                extra = ""
                if table == "token_logprobs":
                    extra = (f", case when role = 'sft' then logprob + {logprob_shift}"
                             " else logprob end as logprob")
                if table == "spectra":
                    extra = (", list_transform(singular_values, lambda s: s * "
                             f"{spectra_scale}) as singular_values")
                con.execute(
                    f"copy (select * replace ('{new_pair}' as pair, '{run_id}' as "
                    f"run_id{extra}) from raw.{table} where pair = ?) to "
                    f"'{path}' (format parquet)", [pair])
            n = con.execute("select count(*) from raw.spectra where pair = ?",
                            [pair]).fetchone()[0]
            manifest["kinds"][kind] = {"started_at": "2026-01-01 00:00:00",
                                       "finished_at": finished,
                                       "n_matrices": n // 3}
    finally:
        con.close()
    (folder / "run.json").write_text(json.dumps(manifest))
    return folder


def counts(db: Path, table: str) -> dict[str, int]:
    return dict(query(db, f"select run_id, count(*) from {table} group by run_id"))


def canary(db: Path, run_id: str) -> tuple:
    """Change one row of int_spectrum_stats by hand: a build that rebuilds the run
    puts the right value back, one that leaves the run alone keeps it."""
    with duckdb.connect(str(db)) as con:
        key = con.execute("select tensor, role, s_min from "
                          "intermediate.int_spectrum_stats where run_id = ? "
                          "order by tensor, role limit 1", [run_id]).fetchone()
        con.execute("update intermediate.int_spectrum_stats set s_min = -1 where "
                    "run_id = ? and tensor = ? and role = ?", [run_id, *key[:2]])
    return (run_id, *key)


def canary_kept(db: Path, mark: tuple) -> bool:
    """Whether the hand-changed row is still there; restores its value."""
    run_id, tensor, role, s_min = mark
    with duckdb.connect(str(db)) as con:
        (now,) = con.execute("select s_min from intermediate.int_spectrum_stats "
                             "where run_id = ? and tensor = ? and role = ?",
                             [run_id, tensor, role]).fetchone()
        con.execute("update intermediate.int_spectrum_stats set s_min = ? where "
                    "run_id = ? and tensor = ? and role = ?",
                    [s_min, run_id, tensor, role])
    return now == -1


def sft_logprob_sums(db: Path) -> dict[str, tuple[float, int]]:
    """Per run: the SFT's sum of log-probs over every post, and tokens scored."""
    return {r: (s, n) for r, s, n in query(
        db, "select run_id, sum(sum_logprob), sum(n_scored) from "
        "marts.fct_post_perplexity where role = 'sft' group by run_id")}


def s_max_sum(db: Path) -> dict[str, float]:
    return dict(query(db, "select run_id, sum(s_max) from marts.fct_matrix_metrics "
                      "group by run_id"))


@pytest.mark.slow
def test_incremental_builds_give_the_full_refresh_rows(demo_warehouse, tmp_path,
                                                       monkeypatch):
    monkeypatch.setenv("SFTSCOPE_SNAPSHOTS", "0")  # no snapshot copies in between
    db, runs = tmp_path / "warehouse.duckdb", tmp_path / "runs"
    shutil.copy(demo_warehouse, db)
    tables = incremental_tables(db)
    assert {"intermediate.int_spectrum_stats", "marts.fct_matrix_metrics",
            "marts.fct_lora_fit", "marts.fct_token_logprob_delta",
            "marts.fct_token_shift", "marts.fct_post_perplexity",
            "marts.fct_post_token_shift", "marts.fct_group_token_shift",
            "marts.fct_direction_overlap", "marts.fct_intruder_counts",
            "intermediate.int_behaviour_bootstrap"} <= set(tables), tables
    directions = [t for t in tables if "direction" in t or "intruder" in t
                  or "angles" in t]
    (planted,) = query(db, "select distinct run_id from raw.spectra")[0]
    n = {t: counts(db, t) for t in tables}
    assert all(set(c) == {planted} for c in n.values()), n  # every one has rows
    n = {t: c[planted] for t, c in n.items()}
    logprobs, s_max = sft_logprob_sums(db)[planted], s_max_sum(db)[planted]

    # 1. two more pairs: their rows are added; the planted pair's are not rebuilt
    for pair in ("second", "third"):
        load_run(export_run(db, "planted", runs, new_pair=pair, run_id=f"{pair}-1",
                            finished="2026-01-01 01:00:00"), db)
    mark = canary(db, planted)
    run_dbt(db, "run", "--quiet", "--select", INCREMENTAL)
    assert canary_kept(db, mark)
    for t in tables:
        assert counts(db, t) == {planted: n[t], "second-1": n[t], "third-1": n[t]}, t

    # 2. in one build:
    # - 'second' loaded again under the same run id with other numbers: its rows
    #   are replaced, not added to;
    # - 'third' computed again (a new run id) without singular vectors: the old
    #   run's rows go, and its directions with them (compute_load deletes them);
    # - the planted pair's behaviour alone loaded again (same run id): its
    #   behaviour marts are rebuilt, its weight marts are left alone
    load_run(export_run(db, "planted", runs, new_pair="second", run_id="second-1",
                        finished="2026-01-01 02:00:00", logprob_shift=-0.5,
                        spectra_scale=2.0), db)
    load_run(export_run(db, "planted", runs, new_pair="third", run_id="third-2",
                        finished="2026-01-01 02:00:00",
                        kinds=("spectra", "behaviour")), db)
    load_run(export_run(db, "planted", runs, new_pair="planted", run_id=planted,
                        finished="2026-01-01 02:00:00", kinds=("behaviour",),
                        logprob_shift=0.25), db)
    mark = canary(db, planted)
    run_dbt(db, "run", "--quiet", "--select", INCREMENTAL)
    assert canary_kept(db, mark)
    for t in tables:
        assert counts(db, t) == (
            {planted: n[t], "second-1": n[t]} if t in directions
            else {planted: n[t], "second-1": n[t], "third-2": n[t]}), t
    sums = sft_logprob_sums(db)
    assert sums["second-1"][0] == pytest.approx(logprobs[0] - 0.5 * logprobs[1],
                                                rel=1e-12)
    assert sums[planted][0] == pytest.approx(logprobs[0] + 0.25 * logprobs[1],
                                             rel=1e-12)
    assert sums["third-2"] == pytest.approx(logprobs, rel=1e-12)
    assert s_max_sum(db)["second-1"] == pytest.approx(2 * s_max, rel=1e-12)
    assert query(db, "select distinct run_finished_at from marts.fct_token_shift "
                 "where run_id = ?", [planted]) == query(
        db, "select finished_at from raw.compute_runs where run_id = ? and "
        "kind = 'behaviour'", [planted])

    # 3. a full rebuild gives the same rows
    built = {t: rows(db, t) for t in tables}
    run_dbt(db, "run", "--quiet", "--full-refresh", "--select", INCREMENTAL)
    assert incremental_tables(db) == tables
    differ = {t: worst(built[t], rows(db, t)) for t in tables}
    assert all(d <= 1e-9 for d in differ.values()), differ


@pytest.mark.slow
def test_a_mart_of_an_earlier_release_asks_for_a_full_refresh(demo_warehouse,
                                                              tmp_path, monkeypatch):
    """A warehouse whose per-run marts were plain tables (no run_finished_at) stops
    the build with what to do, instead of mixing old rows into new ones."""
    monkeypatch.setenv("SFTSCOPE_SNAPSHOTS", "0")
    db = tmp_path / "warehouse.duckdb"
    shutil.copy(demo_warehouse, db)
    with duckdb.connect(str(db)) as con:
        con.execute("alter table marts.fct_lora_fit drop column run_finished_at")
    proc = run_dbt(db, "run", "--select", "fct_lora_fit", check=False)
    assert proc.returncode != 0
    assert "dbt build --full-refresh" in proc.stdout, proc.stdout[-3000:]
