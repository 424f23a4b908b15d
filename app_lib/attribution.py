"""The "Attribution" page's queries (cached, read-only) and charts (pure).

    from app_lib import attribution as at
    rank = at.ranking(src, "demo", "layer_module")       # one row per group
    st.altair_chart(at.share_heatmap(rank), width="stretch")

From marts.fct_patch_ranking, fct_patch_effects and fct_patch_vs_weights (python -m
compute.patch, then dbt build; docs/patch.md): per group G of tensors, the share of
KL(p_sft || p_base) that W_base + dW_G removes (add) and that reverting G loses
(revert), with their 95% intervals, next to dW_G's size from the weights marts.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from app_lib.db import query
from app_lib.queries import MODULE_ORDER, TTL_S, Src

TABLE = "marts.fct_patch_ranking"
FILL = ("python -m compute.patch --pair demo --by layer_module   # or: make demo-patch\n"
        "cd dbt_project && dbt build")
SHARES = {"add_share": "add: W_base + dW_G alone",
          "revert_share": "revert: lost when G goes back to the base"}
WEIGHT_MEASURES = {"relative_frobenius_change": "relative Frobenius change",
                   "signal_rank": "signal rank", "n_intruders": "intruder dimensions"}


def _cache(fn):
    return st.cache_data(ttl=TTL_S, show_spinner=False)(fn)


@_cache
def pairs(src: Src) -> list[str]:
    """Pairs with a patch run in the marts."""
    return query(f"select distinct pair from {TABLE} order by pair",
                 path=src[0])["pair"].tolist()


@_cache
def groupings(src: Src, pair: str) -> list[str]:
    """The groupings ('layer_module', 'layer', ...) patched for the pair."""
    return query(f"select distinct patch_by from {TABLE} where pair = ? order by "
                 "patch_by = 'layer_module' desc, patch_by", [pair],
                 path=src[0])["patch_by"].tolist()


@_cache
def ranking(src: Src, pair: str, by: str, grp: str = "all",
            post_type: str = "all") -> pd.DataFrame:
    """One row per group: shares, intervals, ranks, interaction, dW_G's size."""
    return query(f"""
        select * from {TABLE} where pair = ? and patch_by = ? and grp = ?
            and post_type = ?
        order by rank_add, patch_group""", [pair, by, grp, post_type], path=src[0])


@_cache
def rank_curves(src: Src, pair: str, by: str, groups: tuple[str, ...]) -> pd.DataFrame:
    """The add at each rank r (and whole: 'full') of the named groups, all posts."""
    if not groups:
        return pd.DataFrame(columns=["patch_group", "patch_rank", "is_full",
                                     "kl_share", "ci95_low_kl_share",
                                     "ci95_high_kl_share", "energy_share"])
    marks = ", ".join("?" for _ in groups)
    return query(f"""
        select patch_group, patch_rank, is_full, kl_share, ci95_low_kl_share,
               ci95_high_kl_share, energy_share
        from marts.fct_patch_effects
        where pair = ? and patch_by = ? and mode = 'add' and grp = 'all'
            and post_type = 'all' and patch_group in ({marks})
        order by patch_group, patch_rank nulls last""", [pair, by, *groups],
                 path=src[0])


@_cache
def moves(src: Src, pair: str, by: str) -> pd.DataFrame:
    """Each group's add and revert (dW_G whole), all posts: the share of KL to the
    SFT removed and how far the model moved from the base (moved_share)."""
    return query("""
        select patch_group, mode, kl_share, moved_share, ci95_low_moved_share,
               ci95_high_moved_share
        from marts.fct_patch_effects
        where pair = ? and patch_by = ? and is_full and grp = 'all'
            and post_type = 'all' and moved_share is not null
        order by mode, patch_group""", [pair, by], path=src[0])


def moved_chart(df: pd.DataFrame) -> alt.LayerChart:
    """Toward the SFT (kl_share, x) against away from the base (moved_share, y) per
    group's model; on the diagonal a change moves the base only toward the SFT."""
    top = float(max(1.0, df["kl_share"].max(), df["ci95_high_moved_share"].max()))
    x_title, title = "KL to the SFT removed", "moved from the base (SFT = 100%)"
    diag = alt.Chart(pd.DataFrame({"x": [0.0, top], "y": [0.0, top]})).mark_line(
        strokeDash=[4, 4], color="gray").encode(x=alt.X("x:Q", title=x_title),
                                                y=alt.Y("y:Q", title=title))
    base = alt.Chart(df).encode(
        x=alt.X("kl_share:Q", title=x_title, axis=alt.Axis(format="%")),
        color=alt.Color("mode:N", title=None))
    points = base.mark_point(filled=True).encode(
        y=alt.Y("moved_share:Q", axis=alt.Axis(format="%"), title=title),
        tooltip=["patch_group", "mode", alt.Tooltip("kl_share:Q", format=".1%"),
                 alt.Tooltip("moved_share:Q", format=".1%")])
    bars = base.mark_errorbar().encode(
        y=alt.Y("ci95_low_moved_share:Q", title=title), y2="ci95_high_moved_share:Q")
    return alt.layer(diag, bars, points).properties(height=300)


@_cache
def vs_weights(src: Src, pair: str, by: str) -> pd.DataFrame:
    """Spearman's rho between dW_G's size and the shares, all posts."""
    return query("""
        select weight_measure, behaviour_share, n_groups, spearman_rho,
               ci95_low_rho, ci95_high_rho, excludes_null, largest_change_group,
               largest_share_group
        from marts.fct_patch_vs_weights
        where pair = ? and patch_by = ? and grp = 'all' and post_type = 'all'
        order by weight_measure, behaviour_share""", [pair, by], path=src[0])


def cells(rank: pd.DataFrame) -> pd.DataFrame:
    """The layer x module groups (layer and module set), in module order."""
    data = rank[rank["layer"].notna() & rank["module"].notna()].copy()
    data["layer"] = data["layer"].astype(int)
    return data


def _modules(data: pd.DataFrame) -> list[str]:
    found = list(dict.fromkeys(data["module"]))
    return [m for m in MODULE_ORDER if m in found] + sorted(
        m for m in found if m not in MODULE_ORDER)


def grid(data: pd.DataFrame, field: str, title: str, fmt: str) -> alt.Chart:
    """Layer (rows, 0 on top) x module type, coloured by `field`, value printed."""
    x = alt.X("module:N", sort=_modules(data), title="module type",
              axis=alt.Axis(labelAngle=0, orient="top"))
    y = alt.Y("layer:O", title="layer")
    base = alt.Chart(data).encode(x=x, y=y)
    rect = base.mark_rect().encode(
        color=alt.Color(f"{field}:Q", title=None, scale=alt.Scale(zero=True),
                        legend=alt.Legend(orient="bottom", format=fmt,
                                          gradientLength=160)),
        tooltip=["patch_group", alt.Tooltip(f"{field}:Q", format=fmt),
                 alt.Tooltip("add_share:Q", format=".1%"),
                 alt.Tooltip("revert_share:Q", format=".1%")])
    text = base.mark_text(fontSize=10).encode(text=alt.Text(f"{field}:Q", format=fmt))
    return alt.layer(rect, text).properties(title=title, height=alt.Step(28))


def share_heatmap(rank: pd.DataFrame, share: str = "add_share") -> alt.Chart:
    """Behavioural share per layer x module (groups of --by layer_module)."""
    return grid(cells(rank), share, SHARES[share], ".0%")


def weight_heatmap(rank: pd.DataFrame,
                   measure: str = "relative_frobenius_change") -> alt.Chart:
    """dW_G's size per layer x module, the same cells."""
    return grid(cells(rank), measure, WEIGHT_MEASURES[measure], ".3~g")


def top_groups_chart(rank: pd.DataFrame, n: int = 10) -> alt.LayerChart:
    """The n groups with the largest add share: add and revert shares with their
    95% intervals."""
    top = rank.nsmallest(n, "rank_add")["patch_group"].tolist()
    rows = []
    for _, r in rank[rank["patch_group"].isin(top)].iterrows():
        for s, label in SHARES.items():
            rows.append({"group": r["patch_group"], "share": label, "value": r[s],
                         "low": r[f"ci95_low_{s}"], "high": r[f"ci95_high_{s}"]})
    data = pd.DataFrame(rows, columns=["group", "share", "value", "low", "high"])
    y = alt.Y("group:N", sort=top, title=None)
    color = alt.Color("share:N", title=None, legend=alt.Legend(orient="bottom",
                                                               labelLimit=0))
    x_title = "share of KL(p_sft || p_base) (95% interval)"
    base = alt.Chart(data).encode(y=y, yOffset="share:N", color=color)
    points = base.mark_point(filled=True).encode(
        x=alt.X("value:Q", title=x_title, axis=alt.Axis(format="%")),
        tooltip=["group", "share", alt.Tooltip("value:Q", format=".1%"),
                 alt.Tooltip("low:Q", format=".1%"), alt.Tooltip("high:Q", format=".1%")])
    bars = base.mark_rule().encode(x=alt.X("low:Q", title=x_title), x2="high:Q")
    return alt.layer(bars, points).properties(height=max(160, 36 * len(top)))


def rank_chart(curves: pd.DataFrame) -> alt.LayerChart:
    """Add share against r (top-r singular part of each matrix of dW_G; 'full'
    last) for each group, with its 95% interval."""
    data = curves.copy()
    data["r"] = [("full" if f else str(int(r))) for r, f in
                 zip(data["patch_rank"], data["is_full"], strict=True)]
    order = [str(int(r)) for r in sorted(data["patch_rank"].dropna().unique())]
    x = alt.X("r:O", sort=[*order, "full"], title="rank r of each matrix's dW_G part",
              axis=alt.Axis(labelAngle=0))
    base = alt.Chart(data).encode(x=x, color=alt.Color("patch_group:N", title="group"))
    title = "KL removed (95% interval)"
    lines = base.mark_line(point=True).encode(
        y=alt.Y("kl_share:Q", title=title, axis=alt.Axis(format="%")),
        tooltip=["patch_group", "r", alt.Tooltip("kl_share:Q", format=".1%"),
                 alt.Tooltip("energy_share:Q", format=".1%")])
    bars = base.mark_errorbar().encode(y=alt.Y("ci95_low_kl_share:Q", title=title),
                                       y2="ci95_high_kl_share:Q")
    return alt.layer(bars, lines).properties(height=300)
