"""One row per (run, tensor, role): WeightWatcher's ESD measures of the spectrum
(power-law alpha with xmin by KS distance, alpha-weighted, log norms, the
Marchenko-Pastur bulk and its spikes), computed by compute.linalg.esd from the
singular values raw.spectra stores: no second pass over the weights (docs/esd.md).

A dbt Python model (dbt-duckdb runs it in the dbt process), built per run as the
spectra marts are (macros/incremental_by_run.sql): an incremental build fits only
the runs loaded since the last one; the pre-hook in _int__models.yml deletes the
rows of runs deleted or loaded again. `dbt build --full-refresh` fits every run.
"""

import pyarrow as pa

from compute.linalg.esd import MEASURES, esd_measures

KEYS = [("run_id", pa.string()), ("pair", pa.string()), ("tensor", pa.string()),
        ("role", pa.string()), ("layer", pa.int32()), ("module", pa.string()),
        ("expert", pa.int32()), ("part", pa.string()), ("n_rows", pa.int32()),
        ("n_cols", pa.int32())]
COUNTS = {"n_evals", "n_fit", "n_tail", "mp_n_spikes"}
SCHEMA = pa.schema([*KEYS, *((m, pa.int64() if m in COUNTS else pa.float64())
                             for m in MEASURES),
                    ("run_finished_at", pa.timestamp("us"))])


def _runs_to_fit(dbt, session, spectra, runs) -> list[str]:
    """The run ids whose spectra this build fits: all of them in a full build, in an
    incremental one those whose (run_id, finished_at) the table does not hold."""
    sql = f"""
        select s.run_id, l.run_finished_at
        from (select distinct run_id from {spectra}) as s
        left join (select run_id, max(finished_at) as run_finished_at
                   from {runs} where kind = 'spectra' group by run_id) as l
            using (run_id)
    """
    if dbt.is_incremental:
        sql += f" except select distinct run_id, run_finished_at from {dbt.this}"
    return sorted(r[0] for r in session.sql(sql).fetchall())


def model(dbt, session):
    """The ESD measures of every spectrum of the runs to fit, as a DuckDB relation
    (on the model's own connection: an incremental build's temporary table must be
    visible to the merge that follows)."""
    dbt.config(materialized="incremental", incremental_strategy="delete+insert",
               unique_key="run_id", on_schema_change="fail")
    # the staging views as subqueries (dbt.ref gives DuckDB relations)
    spectra_rel = f"({dbt.ref('stg_compute__spectra').sql_query()})"
    runs_rel = f"({dbt.ref('stg_compute__compute_runs').sql_query()})"
    to_fit = _runs_to_fit(dbt, session, spectra_rel, runs_rel)
    columns: dict[str, list] = {f.name: [] for f in SCHEMA}
    for run_id in to_fit:
        cursor = session.execute(f"""
            select s.run_id, s.pair, s.tensor, s.role, s.layer, s.module, s.expert,
                   s.part, s.n_rows, s.n_cols, s.singular_values, l.finished_at
            from {spectra_rel} as s
            left join (select run_id, max(finished_at) as finished_at from {runs_rel}
                       where kind = 'spectra' group by run_id) as l using (run_id)
            where s.run_id = ?
            order by s.tensor, s.role
        """, [run_id])
        for row in cursor.fetchall():
            for (name, _), value in zip(KEYS, row[:10], strict=True):
                columns[name].append(value)
            fit = esd_measures(row[10], row[8], row[9])
            for m in MEASURES:
                columns[m].append(fit[m])
            columns["run_finished_at"].append(row[11])
    return session.from_arrow(pa.table(columns, schema=SCHEMA))
