"""The "Is SFT a LoRA?" section's queries (cached, read-only) and chart (pure).

    from app_lib import lora
    df = lora.recovery(src, "planted", "all", "all")   # one row per rank
    st.altair_chart(lora.recovery_chart(df), width="stretch")
    st.markdown(lora.headline(df))

From marts.fct_lora_recovery (python -m compute.lora_recovery, then dbt build):
per rank r, the share of ||dW||_F^2 the rank-r truncation keeps (the energy curve)
next to the share of the SFT-minus-base log-prob delta and of KL(p_sft || p_base)
that the model W_base + the truncation recovers. Kept apart from queries.py and
charts.py so the section and its mart travel together.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from app_lib.db import query
from app_lib.queries import TTL_S, Src

TABLE = "marts.fct_lora_recovery"
FILL = ("python -m compute.lora_recovery --pair demo --ranks 1,4,16,64,full\n"
        "cd dbt_project && dbt build")
MEASURES = {"energy_share": "||dW||_F^2 kept (spectral)",
            "delta_share": "log-prob delta recovered (behaviour)",
            "kl_share": "KL(p_sft || p_base) removed (behaviour)"}
COLORS = ["#8E44AD", "#F58518", "#4C78A8"]


def _cache(fn):
    return st.cache_data(ttl=TTL_S, show_spinner=False)(fn)


@_cache
def choices(src: Src, pair: str) -> pd.DataFrame:
    """(modules, grp, vectors) measured for the pair."""
    return query(f"select distinct modules, grp, vectors from {TABLE} where pair = ? "
                 "and post_type = 'all' order by modules, grp, vectors", [pair],
                 path=src[0])


VECTORS_LABEL = {"sft": "plus norms (SFT's 1-D tensors)",
                 "base": "matrices alone (base's 1-D tensors)"}


@_cache
def recovery(src: Src, pair: str, modules: str, grp: str, vectors: str = "sft",
             post_type: str = "all") -> pd.DataFrame:
    """One row per rank: the models with the SFT's 1-D tensors ('plus norms', whose
    'full' is the SFT) by default, or the base's (vectors 'base')."""
    return query(f"""
        select lora_rank, is_full, n_posts, n_tokens, n_params, energy_share,
               delta_share, ci95_low_delta_share, ci95_high_delta_share,
               kl_share, ci95_low_kl_share, ci95_high_kl_share
        from {TABLE} where pair = ? and modules = ? and grp = ? and vectors = ?
            and post_type = ?
        order by lora_rank""", [pair, modules, grp, vectors, post_type], path=src[0])


def rank_label(row) -> str:
    return "full" if row["is_full"] else str(int(row["lora_rank"]))


def long_form(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (rank, measure): value and its interval (NULL for energy)."""
    out = []
    for _, r in df.iterrows():
        for m, label in MEASURES.items():
            out.append({"rank": rank_label(r), "order": int(r["lora_rank"]),
                        "measure": label, "value": r[m],
                        "low": r.get(f"ci95_low_{m}"), "high": r.get(f"ci95_high_{m}")})
    return pd.DataFrame(out, columns=["rank", "order", "measure", "value", "low",
                                      "high"])


def recovery_chart(df: pd.DataFrame) -> alt.LayerChart:
    """Shares against the rank (ordinal axis: 0, 1, 4, ..., full), behaviour with
    its 95% interval, the energy curve beside it; the 90% and 99% levels drawn and
    labelled, and 100% (all of SFT's change) as a solid line: a behaviour share above
    it means the truncated model moved further than the SFT model itself."""
    data = long_form(df)
    order = list(dict.fromkeys(data.sort_values("order")["rank"]))
    x = alt.X("rank:O", sort=order, title="LoRA rank r (per matrix)",
              axis=alt.Axis(labelAngle=0))
    color = alt.Color("measure:N", title=None,
                      scale=alt.Scale(domain=list(MEASURES.values()), range=COLORS),
                      legend=alt.Legend(orient="right", labelLimit=0))
    y = alt.Y("value:Q", title="share of SFT's change (95% interval)",
              axis=alt.Axis(format="%", titleLimit=0), scale=alt.Scale(zero=True))
    base = alt.Chart(data).encode(x=x, color=color)
    lines = base.mark_line(point=True).encode(
        y=y,
        tooltip=["rank", "measure", alt.Tooltip("value:Q", format=".1%"),
                 alt.Tooltip("low:Q", format=".1%", title="95% low"),
                 alt.Tooltip("high:Q", format=".1%", title="95% high")])
    bars = base.transform_filter("isValid(datum.low)").mark_errorbar(
        ticks=alt.MarkConfig(size=10)).encode(
        y=alt.Y("low:Q", title="share of SFT's change (95% interval)"), y2="high:Q")
    levels = pd.DataFrame({"level": [0.9, 1.0], "label": ["90%", "100% = SFT"]})
    guide = alt.Chart(levels).encode(y="level:Q")
    rules = guide.mark_rule(color="#999").encode(
        strokeDash=alt.condition("datum.level < 1", alt.value([4, 4]),
                                 alt.value([1, 0])))
    # 90% under its line, 100% over its own: the two are close
    under = guide.transform_filter("datum.level < 1").mark_text(
        align="left", baseline="top", dx=3, dy=2, color="#777", fontSize=10).encode(
        x=alt.value(0), text="label:N")
    over = guide.transform_filter("datum.level >= 1").mark_text(
        align="left", baseline="bottom", dx=3, dy=-2, color="#777", fontSize=10
    ).encode(x=alt.value(0), text="label:N")
    return alt.layer(rules, under, over, bars, lines).properties(height=320)


def headline(df: pd.DataFrame) -> str:
    """'spectrally 90% at r = 16, behaviourally 60% (KL: 75%)', from the smallest
    measured rank keeping 90% of ||dW||_F^2."""
    if df.empty:
        return "No ranks measured."
    measured = df[~df["is_full"].astype(bool)]
    hit = measured[measured["energy_share"] >= 0.9]
    if hit.empty:
        r = measured.iloc[-1]
        text = (f"No measured rank keeps 90% of ||dW||_F^2: r = {int(r['lora_rank'])} "
                f"keeps {r['energy_share']:.0%} and recovers "
                f"{_pct(r['delta_share'])} of the log-prob delta "
                f"({_span(r, 'delta_share')}; KL removed: {_pct(r['kl_share'])}, "
                f"{_span(r, 'kl_share')}{_posts(r)}); score larger ranks.")
    else:
        r = hit.iloc[0]
        text = (f"Spectrally {r['energy_share']:.0%} at r = {int(r['lora_rank'])}, "
                f"behaviourally {_pct(r['delta_share'])} of the log-prob delta "
                f"({_span(r, 'delta_share')}; KL removed: {_pct(r['kl_share'])}, "
                f"{_span(r, 'kl_share')}{_posts(r)}).")
    if (df["delta_share"] > 1).any() or (df["kl_share"] > 1).any():
        text += (" A share above 100% means the truncated model moved further than "
                 "the SFT model (it overshoots SFT's change).")
    return text


def _posts(row) -> str:
    n = row.get("n_posts")
    return "" if n is None or pd.isna(n) else f"; {int(n)} posts"


def _span(row, measure: str) -> str:
    lo, hi = row.get(f"ci95_low_{measure}"), row.get(f"ci95_high_{measure}")
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return "too few posts for an interval"
    return f"95% interval {lo:.0%} to {hi:.0%}"


def _pct(x) -> str:
    return "n/a" if x is None or pd.isna(x) else f"{x:.0%}"
