"""The seed floor beside every SFT-vs-base figure that has one (cached queries).

    from app_lib import floor
    f = floor.modules(src, "demo")          # per module: A's change and A-to-B's
    f = floor.behaviour(src, "demo", "answer")
    f = floor.directions(src, "demo", side="left", k=8)

A seed floor (dbt var seed_floors; marts/seeds) is a second fine-tune B of the same
base with the same recipe and another seed: what SFT changed is read against how far
B lands from A. Every function returns an empty frame for a pair without a floor (or
a warehouse whose marts predate them), so a page shows its figures as before.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app_lib.db import query
from app_lib.queries import TTL_S, Src, has_table

MATRICES = "marts.fct_seed_floor_matrices"
SUMMARY = "marts.fct_seed_floor_summary"
BEHAVIOUR = "marts.fct_seed_floor_behaviour"
DIRECTIONS = "marts.fct_seed_floor_directions"
# the top-k subspaces compared on the Directions page: the labelled directions' count
# (compute.linalg.directions.TOKEN_DIRECTIONS), or fewer where fewer were computed
DIRECTIONS_K = 8


def _cache(fn):
    return st.cache_data(ttl=TTL_S, show_spinner=False)(fn)


def _empty(*columns: str) -> pd.DataFrame:
    return pd.DataFrame(columns=list(columns))


@_cache
def modules(src: Src, pair: str | None = None) -> pd.DataFrame:
    """Per (pair, module type or 'all'): median relative change of A (the pair's SFT)
    and of B, of A-to-B (||W_B - W_A|| / ||W_A||, the floor), and the correlation over
    the matrices of A's and B's change."""
    cols = ("pair", "other_pair", "module", "n_matrices", "median_relative_change_a",
            "median_relative_change_b", "median_relative_change_between",
            "median_floor_ratio", "corr_relative_change")
    if not has_table(src, SUMMARY):
        return _empty(*cols)
    where, params = ("where pair = ?", [pair]) if pair else ("", [])
    return query(f"select {', '.join(cols)} from {SUMMARY} {where} "
                 "order by pair, module", params, path=src[0])


@_cache
def layers(src: Src) -> pd.DataFrame:
    """Per (pair, layer, module): relative change of A and A-to-B's (the floor)."""
    cols = ("pair", "other_pair", "layer", "module", "tensor", "relative_change_a",
            "relative_change_between")
    if not has_table(src, MATRICES):
        return _empty(*cols)
    return query(f"select {', '.join(cols)} from {MATRICES} where layer is not null "
                 "order by pair, layer, module", path=src[0])


@_cache
def behaviour(src: Src, pair: str, post_type: str | None = None) -> pd.DataFrame:
    """Per (group, post type): token-weighted KL(p_B || p_A), the floor, next to
    KL(p_A || p_base); one post type, or every one (None)."""
    cols = ("grp", "post_type", "n_posts", "n_tokens", "mean_kl_a_base",
            "mean_kl_b_a", "floor_ratio", "between_pair")
    if not has_table(src, BEHAVIOUR):
        return _empty(*cols)
    where = " and post_type = ?" if post_type else ""
    return query(f"select {', '.join(cols)} from {BEHAVIOUR} where pair = ?{where} "
                 "order by grp = 'all', grp, post_type = 'all', post_type",
                 [pair, *([post_type] if post_type else [])], path=src[0])


@_cache
def directions(src: Src, pair: str, side: str, k: int = DIRECTIONS_K) -> pd.DataFrame:
    """Per matrix: the overlap of dW_A's and dW_B's top-k subspaces on `side` (k, or
    the largest computed below it), its chance level within W_base's span and the
    widest principal angle."""
    cols = ("layer", "module", "tensor", "other_pair", "k", "share", "chance_share",
            "chance_informative", "enrichment", "largest_angle_deg")
    if not has_table(src, DIRECTIONS):
        return _empty(*cols)
    return query(f"""
        select {', '.join(cols)} from {DIRECTIONS} f
        where pair = ? and side = ? and k = (
            select max(k) from {DIRECTIONS} x
            where x.run_id = f.run_id and x.other_run_id = f.other_run_id
              and x.tensor = f.tensor and x.side = f.side and x.k <= ?)
        order by layer nulls last, module
    """, [pair, side, k], path=src[0])


def layer_lines(cells: pd.DataFrame, floors: pd.DataFrame,
                module: str | None) -> pd.DataFrame:
    """The Layers page's extra lines of relative_frobenius_change, one per pair with
    a floor, named '<pair>: seed floor': ||W_B - W_A|| / ||W_A|| per layer for one
    module type, or its median over module types (module None). `cells`: the page's
    rows, whose depth and size the lines take. Empty without floors."""
    if floors.empty or cells.empty:
        return cells.iloc[0:0]
    if module is not None:
        floors = floors[floors["module"] == module]
    per_layer = floors.groupby(["pair", "layer"], as_index=False)[
        "relative_change_between"].median()
    keys = cells[["pair", "layer", "depth", "size_billions"]].drop_duplicates(
        ["pair", "layer"])
    rows = per_layer.merge(keys, on=["pair", "layer"])
    return rows.assign(pair=rows["pair"] + ": seed floor",
                       relative_frobenius_change=rows["relative_change_between"])[
        ["pair", "layer", "depth", "size_billions", "relative_frobenius_change"]]


KL_COLUMNS = {"grp": "posts", "post_type": "post type", "n_posts": "posts scored",
              "n_tokens": "tokens", "mean_kl_a_base": "KL(p_SFT || p_base)",
              "mean_kl_b_a": "seed floor KL(p_B || p_SFT)",
              "floor_ratio": "floor / change"}


def kl_table(rows: pd.DataFrame) -> pd.DataFrame:
    """floor.behaviour rows as the table the behaviour pages show (nats per token)."""
    return rows[list(KL_COLUMNS)].rename(columns=KL_COLUMNS)
