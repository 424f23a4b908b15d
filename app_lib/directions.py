"""The Directions page's queries (cached, read-only) and charts (pure functions).

    from app_lib import directions as d
    cells = d.overlap_grid(src, "7B", side="left", r=16)   # layer x module
    d.epsilon_chart(d.intruder_curve(src, "7B", tensor))    # intruders vs null

Kept apart from app_lib/queries.py and charts.py so that the direction marts
(marts.fct_direction_overlap, fct_principal_angles, fct_intruder_counts,
fct_direction_tokens) and their page travel together.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from app_lib.db import query
from app_lib.queries import TTL_S, Src

FILL = ("python -m compute.run --pair demo   # --vectors K, on by default\n"
        "cd dbt_project && dbt build")
TABLES = ("marts.fct_direction_overlap", "marts.fct_intruder_counts")


def _cache(fn):
    return st.cache_data(ttl=TTL_S, show_spinner=False)(fn)


@_cache
def pairs(src: Src) -> pd.DataFrame:
    return query("select distinct pair from marts.fct_direction_overlap order by pair",
                 path=src[0])


@_cache
def overlap_grid(src: Src, pair: str, side: str, r: int) -> pd.DataFrame:
    """Per block matrix: share of ||dW||^2 in W_base's top-r subspace on `side`,
    the random share and their ratio; plus the intruders at k = 10, eps = 0.5."""
    return query("""
        select o.layer, o.module, o.tensor, o.share, o.random_share, o.enrichment,
               i.n_intruders as intruders_k10_eps05,
               i.null_expected as null_k10_eps05
        from marts.fct_direction_overlap o
        left join marts.fct_intruder_counts i
          on i.run_id = o.run_id and i.tensor = o.tensor and i.epsilon = 0.5
         and i.k = (select min(k) from marts.fct_intruder_counts x
                    where x.run_id = o.run_id and x.tensor = o.tensor)
        where o.pair = ? and o.side = ? and o.r = ? and o.layer is not null
        order by o.layer, o.module
    """, [pair, side, r], path=src[0])


@_cache
def intruder_grid(src: Src, pair: str, k: str, epsilon: float) -> pd.DataFrame:
    """Per block matrix: intruders among W_sft's top k (k 'paper': 10, 'all': K)."""
    pick = "min(k)" if k == "paper" else "max(k)"
    return query(f"""
        select layer, module, tensor, n_intruders, null_expected, min_max_cos, k
        from marts.fct_intruder_counts c
        where pair = ? and epsilon = ? and layer is not null
          and k = (select {pick} from marts.fct_intruder_counts x
                   where x.run_id = c.run_id and x.tensor = c.tensor)
        order by layer, module
    """, [pair, epsilon], path=src[0])


@_cache
def matrices(src: Src, pair: str) -> pd.DataFrame:
    return query("""
        select distinct tensor, layer, module from marts.fct_direction_overlap
        where pair = ? order by layer nulls first, module, tensor
    """, [pair], path=src[0])


@_cache
def intruder_curve(src: Src, pair: str, tensor: str) -> pd.DataFrame:
    return query("""
        select k, epsilon, n_intruders, null_expected from marts.fct_intruder_counts
        where pair = ? and tensor = ? order by k, epsilon
    """, [pair, tensor], path=src[0])


@_cache
def angles(src: Src, pair: str, tensor: str) -> pd.DataFrame:
    return query("""
        select side, r, mean_cos, min_cos, largest_angle_deg, cosines
        from marts.fct_principal_angles where pair = ? and tensor = ?
        order by side, r
    """, [pair, tensor], path=src[0])


@_cache
def tokens(src: Src, pair: str, tensor: str) -> pd.DataFrame:
    return query("""
        select kind, direction, singular_value, pole, rank, token_id, token, score
        from marts.fct_direction_tokens where pair = ? and tensor = ?
        order by kind, direction, pole desc, rank
    """, [pair, tensor], path=src[0])


def epsilon_chart(df: pd.DataFrame) -> alt.Chart:
    """Intruder count against epsilon for each k, the null dashed.

    df: fct_intruder_counts rows of one matrix (k, epsilon, n_intruders,
    null_expected)."""
    long = pd.concat([
        df.assign(series="W_sft", count=df["n_intruders"]),
        df.assign(series="null (random directions)", count=df["null_expected"]),
    ])
    long["k"] = "k = " + long["k"].astype(str)
    return alt.Chart(long).mark_line(point=True).encode(
        x=alt.X("epsilon:Q", title="epsilon (max |cos| below it: intruder)"),
        y=alt.Y("count:Q", title="intruder dimensions"),
        color=alt.Color("k:N", title=None),
        strokeDash=alt.StrokeDash("series:N", title=None),
        tooltip=["k", "series", alt.Tooltip("epsilon:Q", format=".1f"),
                 alt.Tooltip("count:Q", format=".3g")],
    ).properties(height=320)


def token_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per direction: its singular value and the promoted and demoted
    tokens in order (df: fct_direction_tokens rows of one matrix, kind
    'direction')."""
    rows = []
    for k, g in df[df["kind"] == "direction"].groupby("direction", sort=True):
        row = {"direction": int(k), "singular value": float(g["singular_value"].iloc[0])}
        for pole in ("promoted", "demoted"):
            toks = g[g["pole"] == pole].sort_values("rank")
            row[pole] = " ".join(repr(t) if t is not None else f"#{i}"
                                 for t, i in zip(toks["token"], toks["token_id"],
                                                 strict=True))
        rows.append(row)
    return pd.DataFrame(rows, columns=["direction", "singular value", "promoted",
                                       "demoted"])
