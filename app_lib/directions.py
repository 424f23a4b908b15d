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
import numpy as np
import pandas as pd
import streamlit as st

from app_lib.charts import show_token
from app_lib.db import query
from app_lib.queries import SERIES_RUNS, TTL_S, Src

FILL = ("python -m compute.run --pair demo   # --vectors K, on by default\n"
        "cd dbt_project && dbt build")
TABLES = ("marts.fct_direction_overlap", "marts.fct_intruder_counts")


def _cache(fn):
    return st.cache_data(ttl=TTL_S, show_spinner=False)(fn)


@_cache
def pairs(src: Src) -> pd.DataFrame:
    """Pairs with direction overlaps, but a series' runs (the Over training page's)."""
    return query("select distinct pair from marts.fct_direction_overlap where pair "
                 f"not in ({SERIES_RUNS}) order by pair", path=src[0])


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
        select kind, direction, singular_value, pole, effect, rank, token_id, token,
               score
        from marts.fct_direction_tokens where pair = ? and tensor = ?
        order by kind, direction, pole desc, rank
    """, [pair, tensor], path=src[0])


def epsilon_chart(df: pd.DataFrame) -> alt.LayerChart:
    """Intruder count against epsilon for each k: W_sft's count as a solid line with
    filled dots, the random-direction null as a dashed line with open squares (the
    legend shows both marks).

    df: fct_intruder_counts rows of one matrix (k, epsilon, n_intruders,
    null_expected)."""
    observed, null = "W_sft (observed)", "random directions (null)"
    long = pd.concat([
        df.assign(series=observed, count=df["n_intruders"]),
        df.assign(series=null, count=df["null_expected"]),
    ])
    long["k"] = "k = " + long["k"].astype(str)
    enc = {
        "x": alt.X("epsilon:Q", title="epsilon (max |cos| below it: intruder)"),
        "y": alt.Y("count:Q", title="intruder dimensions", scale=alt.Scale(zero=True)),
        "color": alt.Color("k:N", title="W_sft's top",
                           scale=alt.Scale(scheme="dark2")),
        "strokeDash": alt.StrokeDash("series:N", title=None, scale=alt.Scale(
            domain=[observed, null], range=[[1, 0], [6, 4]]),
            legend=alt.Legend(symbolStrokeColor="#333", labelLimit=0)),
        "shape": alt.Shape("series:N", title=None, scale=alt.Scale(
            domain=[observed, null], range=["circle", "square"]), legend=alt.Legend(
            symbolStrokeColor="#333", labelLimit=0)),
        "tooltip": ["k", "series", alt.Tooltip("epsilon:Q", format=".1f"),
                    alt.Tooltip("count:Q", format=".3g")],
    }
    solid = alt.Chart(long[long["series"] == observed]).mark_line(
        point=alt.OverlayMarkDef(filled=True, size=45)).encode(**enc)
    dashed = alt.Chart(long[long["series"] == null]).mark_line(
        point=alt.OverlayMarkDef(filled=False, size=45)).encode(**enc)
    return alt.layer(dashed, solid).properties(height=320)


def angles_table(df: pd.DataFrame) -> pd.DataFrame:
    """Principal angles in whole degrees (0 = shared direction, 90 = orthogonal),
    smallest first, instead of their cosines. df: fct_principal_angles rows."""
    def degrees(cosines) -> str:
        if cosines is None:
            return ""
        c = np.clip(np.abs(np.asarray(list(cosines), dtype=float)), 0.0, 1.0)
        return " ".join(f"{d:.0f}°" for d in sorted(np.degrees(np.arccos(c))))

    return pd.DataFrame({
        "side": df["side"].tolist(), "r": df["r"].tolist(),
        "largest angle": [f"{a:.0f}°" for a in df["largest_angle_deg"]],
        "angles, smallest first": [degrees(c) for c in df["cosines"]],
    })


def intruder_cells(grid: pd.DataFrame) -> pd.DataFrame:
    """The intruder grid with the null in every cell: 'observed / null' as text and
    the ratio observed / null to colour by (0: W_base's directions, 1: as random)."""
    out = grid.copy()
    out["vs_null"] = out["n_intruders"] / out["null_expected"].where(
        out["null_expected"] > 0)
    out["label"] = [f"{int(n)} / {nu:.3g}" for n, nu in
                    zip(out["n_intruders"], out["null_expected"], strict=True)]
    return out


def token_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per direction: its singular value, the tokens of its two poles in
    order ('+u', '-u': a singular vector's sign is arbitrary), written as on every
    page (charts.show_token, the byte-level vocabulary decoded: '␣the', not 'Ġthe'),
    and which pole dW promotes on the scored texts (the effect sign from the
    matrix's inputs; 'not measured' without activations). df: fct_direction_tokens
    rows of one matrix, kind 'direction'."""
    rows = []
    for k, g in df[df["kind"] == "direction"].groupby("direction", sort=True):
        row = {"direction": int(k), "singular value": float(g["singular_value"].iloc[0])}
        for pole in ("+u", "-u"):
            toks = g[g["pole"] == pole].sort_values("rank")
            row[pole] = " ".join(f"#{i}" if t is None or pd.isna(t)
                                 else show_token(t, vocab=True) for t, i in
                                 zip(toks["token"], toks["token_id"], strict=True))
        effect = g[g["pole"] == "+u"]["effect"] if "effect" in g else pd.Series()
        effect = effect.dropna()
        row["dW promotes"] = ("not measured" if effect.empty else
                              "+u" if effect.iloc[0] == "promoted" else "-u")
        rows.append(row)
    return pd.DataFrame(rows, columns=["direction", "singular value", "+u", "-u",
                                       "dW promotes"])
