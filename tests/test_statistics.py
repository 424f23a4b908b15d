"""The statistics macros and the references the mart tests use, against SciPy and the
Gavish-Donoho paper. Quick: no dbt run (tests/test_statistics_marts.py builds marts)."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from scipy import stats

from tests.references import (
    PAPER_LAMBDA_SQUARE,
    PAPER_OMEGA_SQUARE,
    gd_lambda,
    gd_omega,
    mp_median,
    render_macro,
)

# every exact entry, both sides of the switch to the expansion, and far past it
DFS = [*range(1, 31), 31, 32, 39, 40, 45, 60, 100, 200, 500, 1000, 10_000]


def t_critical(df_sql: str, rows: str) -> list[tuple]:
    sql = f"select {df_sql} as df, {render_macro('t_critical_95', df_sql)} as t {rows}"
    return duckdb.sql(sql).fetchall()


@pytest.mark.parametrize("kind", ["integer literal", "bigint expression"])
def test_t_critical_95_matches_scipy(kind):
    """Every df the marts can meet: the table (1..30) to 1e-12 of
    scipy.stats.t.ppf(0.975, df); past it the Cornish-Fisher expansion, whose error
    (the first omitted term) falls as df^-5: within 5e-8 (30/df)^5, so each of its
    terms matters at some df. The marts pass `n_posts - 1` with n_posts a BIGINT
    count, which must not overflow or round."""
    if kind == "integer literal":
        rows = [(df, t_critical(str(df), "")[0][1]) for df in DFS]
    else:
        values = ", ".join(f"({df + 1}::bigint)" for df in DFS)
        rows = t_critical("n_posts - 1", f"from (values {values}) v(n_posts) order by 1")
    assert [df for df, _ in rows] == DFS
    for df, t in rows:
        want = stats.t.ppf(0.975, df)
        assert isinstance(t, float), (df, type(t))
        tol = 1e-12 * want if df <= 30 else 5e-8 * (30 / df) ** 5 + 1e-14
        assert abs(t - want) <= tol, (df, t - want, tol)


def test_t_critical_95_is_null_without_degrees_of_freedom():
    got = dict(t_critical("df", "from (values (0), (-1), (null::int)) v(df)"))
    assert got == {0: None, -1: None, None: None}


def test_t_critical_95_is_a_double_in_a_table_column():
    """The type DuckDB gives the expression (a DECIMAL would round or overflow)."""
    con = duckdb.connect()
    con.execute("create table g as select range + 1 as n_posts from range(40)")
    con.execute(f"create table c as select {render_macro('t_critical_95', 'n_posts - 1')}"
                " as t from g")
    assert con.execute("select data_type from information_schema.columns "
                       "where table_name = 'c'").fetchall() == [("DOUBLE",)]


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.25, 0.5, 0.75, 1.0])
def test_gd_reference_is_the_papers_closed_form(beta):
    """The derived lambda(beta) is the paper's Eq. (11) (it must be: Eq. (11) solves
    the same balance in closed form); at beta = 1 both constants are the paper's."""
    closed = np.sqrt(2 * (beta + 1) + 8 * beta / (beta + 1 + np.sqrt(beta**2 + 14 * beta + 1)))
    assert gd_lambda(beta) == pytest.approx(closed, rel=1e-10)
    assert gd_lambda(1.0) == pytest.approx(PAPER_LAMBDA_SQUARE, rel=1e-12)
    assert gd_omega(1.0) == pytest.approx(PAPER_OMEGA_SQUARE, abs=5e-4)


def test_gd_omega_reference_against_the_papers_cubic_fit():
    """The paper's fit omega(beta) ~ 0.56 beta^3 - 0.95 beta^2 + 1.82 beta + 1.43
    (the one the marts use) against the derived omega: within 0.4% on
    0.05 <= beta <= 1 (measured: at most 0.38%, at beta = 0.12), and
    drifting to 1.1% at beta = 0.001 (an embedding's aspect ratio is ~0.006: 0.9%)."""
    def cubic(b):
        return 0.56 * b**3 - 0.95 * b**2 + 1.82 * b + 1.43

    for beta in np.linspace(0.05, 1.0, 20):
        assert cubic(beta) == pytest.approx(gd_omega(beta), rel=4e-3), beta
    for beta in (0.001, 0.006, 0.02):
        assert cubic(beta) == pytest.approx(gd_omega(beta), rel=1.1e-2), beta
    assert cubic(1.0) == pytest.approx(PAPER_OMEGA_SQUARE, abs=2.5e-3)


def test_mp_median_against_sampled_noise():
    """The Marchenko-Pastur median against the eigenvalues of a large Wishart matrix."""
    rng = np.random.default_rng(0)
    m, n = 400, 1600
    x = rng.standard_normal((m, n)) / np.sqrt(n)
    eig = np.linalg.eigvalsh(x @ x.T)
    assert np.median(eig) == pytest.approx(mp_median(m / n), rel=1e-2)
