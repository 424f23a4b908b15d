"""The Token shift page's queries (cached, read-only) and charts (pure).

    from app_lib import shift
    diff = shift.differences(src, "demo")        # high - low per measure, intervals
    st.altair_chart(shift.difference_chart(shift.forest(groups, diff, "share_shifted")))
    st.html(shift.kl_html(shift.post_tokens(src, "demo", post_id)))

From the token-shift marts (dbt, on raw.token_shift): fct_group_difference_intervals
and fct_group_behaviour_intervals (pooled per group, paired bootstrap intervals over
posts), fct_group_token_shift (shift classes by position bucket), fct_top_shifted_tokens
and fct_token_shift (one post's tokens). Kept apart from queries.py and charts.py so
the page and its marts travel together.
"""

from __future__ import annotations

import html
import json

import altair as alt
import pandas as pd
import streamlit as st

from app_lib.charts import GROUP_COLOR, GROUP_LABEL, ROLE_COLOR, show_token
from app_lib.db import query
from app_lib.queries import TTL_S, Src

TABLE = "marts.fct_group_token_shift"
FILL = ("python -m compute.run --pair demo   # scores marts.prompts: KL, token shift\n"
        "cd dbt_project && dbt build")
MEASURES = {
    "share_shifted": "share of shifted tokens (SFT's top-1 ranked > 3 by the base)",
    "mean_kl_sft_base": "mean KL(p_sft || p_base), nats per token",
    "mean_kl_base_sft": "mean KL(p_base || p_sft), nats per token",
    "delta_bits_per_byte": "SFT - base bits per byte",
    "delta_bits_per_token": "SFT - base bits per token",
    "share_marginal": "share of marginal tokens (rank 2-3)",
    "share_unshifted": "share of unshifted tokens (rank 1)",
    "bits_per_byte_base": "bits per byte, base",
    "bits_per_byte_sft": "bits per byte, SFT",
    "bits_per_token_base": "bits per token, base",
    "bits_per_token_sft": "bits per token, SFT",
}
CLASSES = {"unshifted": "#BBBBBB", "marginal": "#F2CF5B", "shifted": "#D62728"}
BUCKETS = ["all", "0-15", "16-63", "64-255", "256-1023", "1024+"]


def _cache(fn):
    return st.cache_data(ttl=TTL_S, show_spinner=False)(fn)


# --- queries ---------------------------------------------------------------------

POST_TYPES = {"answer": "answers vs answers", "question": "questions vs questions",
              "all": "any post type (the seed's groups)"}


def post_type_options(available: list[str]) -> list[str]:
    """The post types to offer, like with like first (answers, then questions), the
    seed's 'all' last; only those the run has both groups of."""
    return [t for t in POST_TYPES if t in available]


@_cache
def compared_types(src: Src, pair: str) -> list[str]:
    """Post types with a difference row (both groups present) for the pair."""
    df = query("select distinct post_type from marts.fct_group_difference_intervals "
               "where pair = ?", [pair], path=src[0])
    return post_type_options(df["post_type"].tolist())


@_cache
def group_intervals(src: Src, pair: str, post_type: str = "all") -> pd.DataFrame:
    return query("""
        select grp, metric, n_posts, estimate, ci95_low, ci95_high, n_resamples, seed
        from marts.fct_group_behaviour_intervals where pair = ? and post_type = ?
        order by metric, grp
    """, [pair, post_type], path=src[0])


@_cache
def differences(src: Src, pair: str, post_type: str = "all") -> pd.DataFrame:
    return query("""
        select metric, group_a, group_b, n_posts_a, n_posts_b, estimate_a, estimate_b,
               difference, ci95_low, ci95_high, excludes_zero, n_resamples, seed
        from marts.fct_group_difference_intervals where pair = ? and post_type = ?
        order by metric
    """, [pair, post_type], path=src[0])


@_cache
def classes(src: Src, pair: str, post_type: str = "all") -> pd.DataFrame:
    """Shift classes per group and position bucket, of one post type ('all': any)."""
    return query(f"""
        select grp, position_bucket, first_position, n_posts, n_tokens,
               share_unshifted, share_marginal, share_shifted, mean_kl_sft_base
        from {TABLE} where pair = ? and post_type = ? order by grp, first_position
    """, [pair, post_type], path=src[0])


@_cache
def generated(src: Src, pair: str) -> pd.DataFrame:
    """URIAL's protocol (the SFT's own answers): marts.fct_generated_token_shift."""
    return query("""
        select position_bucket, n_answers, n_tokens, unshifted_share, marginal_share,
               shifted_share, shifted_share_lo95, shifted_share_hi95, mean_kl_sft_base
        from marts.fct_generated_token_shift where pair = ?
        order by position_bucket = 'all' desc, position_bucket
    """, [pair], path=src[0])


@_cache
def top_tokens(src: Src, pair: str, grp: str, direction: str, by: str,
               limit: int = 20, post_type: str = "all") -> pd.DataFrame:
    """The group's most shifted tokens within one post type ('all': any)."""
    order = "rank_by_kl_mass" if by == "kl_mass" else "rank_by_count"
    return query(f"""
        select token_id, token_text, n_shifted, n_posts, share_of_shifted, kl_mass,
               share_of_kl_mass, mean_kl_sft_base
        from marts.fct_top_shifted_tokens
        where pair = ? and grp = ? and post_type = ? and direction = ? and {order} <= ?
        order by {order}
    """, [pair, grp, post_type, direction, limit], path=src[0])


@_cache
def posts(src: Src, pair: str, post_type: str = "all") -> pd.DataFrame:
    """The pair's posts of one type ('all': every post), largest mean KL first."""
    return query("""
        select post_id, grp, n_tokens, mean_kl_sft_base, share_shifted
        from marts.fct_post_token_shift
        where pair = ? and (? = 'all' or coalesce(post_type, '(unknown)') = ?)
        order by mean_kl_sft_base desc, post_id
    """, [pair, post_type, post_type], path=src[0])


@_cache
def post_tokens(src: Src, pair: str, post_id: int) -> pd.DataFrame:
    return query("""
        select position, token_text, logprob_base, logprob_sft, kl_sft_base,
               kl_base_sft, entropy_base, entropy_sft, top_text_base, top_text_sft,
               rank_sft_top_in_base, rank_base_top_in_sft, shift_class
        from marts.fct_token_shift where pair = ? and post_id = ? order by position
    """, [pair, int(post_id)], path=src[0])


# --- charts (pure) ----------------------------------------------------------------

def forest(groups: pd.DataFrame, diffs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows to draw for one measure: each group's value and the difference, each
    with its interval. Columns: row, kind ('group' | 'difference'), value, low,
    high."""
    rows = [{"row": GROUP_LABEL.get(r.grp, r.grp), "kind": "group",
             "value": r.estimate, "low": r.ci95_low, "high": r.ci95_high}
            for r in groups[groups["metric"] == metric].itertuples()]
    for r in diffs[diffs["metric"] == metric].itertuples():
        rows.append({"row": f"{r.group_a} - {r.group_b}", "kind": "difference",
                     "value": r.difference, "low": r.ci95_low, "high": r.ci95_high})
    return pd.DataFrame(rows, columns=["row", "kind", "value", "low", "high"])


def difference_chart(data: pd.DataFrame, title: str = "") -> alt.LayerChart:
    """Point and 95% interval per row (groups, then their difference), with the
    groups' difference against a rule at 0."""
    y = alt.Y("row:N", sort=list(data["row"]), title=None)
    color = alt.Color("kind:N", title=None, legend=None,
                      scale=alt.Scale(domain=["group", "difference"],
                                      range=[GROUP_COLOR["all"], ROLE_COLOR["delta"]]))
    tip = ["row", alt.Tooltip("value:Q", format=".4g"),
           alt.Tooltip("low:Q", format=".4g"), alt.Tooltip("high:Q", format=".4g")]
    base = alt.Chart(data).encode(y=y, color=color)
    bars = base.mark_errorbar(ticks=True).encode(
        x=alt.X("low:Q", title=title or "value (95% bootstrap interval)"), x2="high:Q")
    points = base.mark_point(filled=True, size=80).encode(x="value:Q", tooltip=tip)
    zero = alt.Chart(pd.DataFrame({"x": [0.0]})).mark_rule(
        strokeDash=[4, 4], color="#999").encode(x="x:Q")
    return alt.layer(zero, bars, points).properties(height=40 + 40 * len(data))


def classes_long(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (group, bucket, class) with its share."""
    out = df.melt(id_vars=["grp", "position_bucket", "first_position", "n_tokens"],
                  value_vars=[f"share_{c}" for c in CLASSES], var_name="class",
                  value_name="share")
    out["class"] = out["class"].str.removeprefix("share_")
    out["group"] = out["grp"].map(lambda g: GROUP_LABEL.get(g, g))
    return out


def classes_chart(df: pd.DataFrame) -> alt.Chart:
    """Stacked shares of unshifted / marginal / shifted tokens per position bucket
    ('all' first), one column per group."""
    data = classes_long(df)
    order = [b for b in BUCKETS if b in set(data["position_bucket"])]
    return alt.Chart(data).mark_bar().encode(
        x=alt.X("position_bucket:N", sort=order, title="token position"),
        y=alt.Y("share:Q", stack="normalize", title="share of tokens",
                axis=alt.Axis(format="%")),
        color=alt.Color("class:N", title="SFT's top-1 under the base",
                        scale=alt.Scale(domain=list(CLASSES),
                                        range=list(CLASSES.values()))),
        order=alt.Order("class_order:Q"),
        column=alt.Column("group:N", title=None),
        tooltip=["group", "position_bucket", "class",
                 alt.Tooltip("share:Q", format=".2%"), "n_tokens"],
    ).transform_calculate(
        class_order="indexof(['unshifted', 'marginal', 'shifted'], datum['class'])",
    ).properties(width=220, height=260)


GENERATED = "SFT's own answers (generated)"
PUBLISHED = {"Llama-2-7b-chat": 0.078, "Mistral-7B-Instruct": 0.052}  # URIAL, Table 1


def generated_classes(df: pd.DataFrame) -> pd.DataFrame:
    """marts.fct_generated_token_shift rows (`generated`) in the frame
    `classes_chart` draws: one group, GENERATED, its buckets and shares."""
    out = df.rename(columns={f"{c}_share": f"share_{c}" for c in CLASSES})
    out = out.assign(grp=GENERATED, first_position=out["position_bucket"].map(
        lambda b: BUCKETS.index(b) if b in BUCKETS else len(BUCKETS)))
    return out[["grp", "position_bucket", "first_position", "n_tokens",
                *(f"share_{c}" for c in CLASSES)]]


def generated_headline(df: pd.DataFrame) -> str:
    """The shifted share of the generated tokens with its interval over answers,
    the null (an SFT equal to its base: 0% shifted) and URIAL's published
    ratios, from the 'all' row of `generated`."""
    row = df[df["position_bucket"] == "all"]
    if row.empty:
        return "No generated tokens for this pair."
    r = row.iloc[0]
    interval = ("one answer: no interval" if pd.isna(r["shifted_share_lo95"]) else
                f"95% t interval over answers {r['shifted_share_lo95']:.1%} to "
                f"{r['shifted_share_hi95']:.1%}")
    published = ", ".join(f"{v:.1%} {k}" for k, v in PUBLISHED.items())
    return (f"**{r['shifted_share']:.1%} shifted**, {r['marginal_share']:.1%} "
            f"marginal, {r['unshifted_share']:.1%} unshifted of "
            f"{int(r['n_tokens']):,} generated tokens in {int(r['n_answers'])} "
            f"answers ({interval}). Null: an SFT equal to its base shifts 0% (its "
            f"greedy token is the base's top-1). URIAL reports {published}; the "
            "teacher-forced shares above are a different quantity.")


def top_tokens_chart(df: pd.DataFrame, by: str) -> alt.Chart:
    """Horizontal bars of the top tokens by count or by KL mass, every bar labelled
    (the token as `show_token` writes it; two tokens that read alike keep their
    own bars)."""
    field = "kl_mass" if by == "kl_mass" else "n_shifted"
    data = df.reset_index(drop=True)
    data = data.assign(label=data["token_text"].map(show_token),
                       row=[f"{i:03d}" for i in range(len(data))])
    expr = " : ".join(f"datum.value == {r!r} ? {json.dumps(t)}"
                      for r, t in zip(data["row"], data["label"], strict=True))
    return alt.Chart(data).mark_bar(color=ROLE_COLOR["delta"]).encode(
        y=alt.Y("row:N", sort=list(data["row"]), title=None,
                axis=alt.Axis(labelExpr=f"{expr} : ''" if expr else None,
                              labelOverlap=False, labelLimit=240, labelFontSize=11,
                              labelFont="ui-monospace, monospace")),
        x=alt.X(f"{field}:Q", title="KL mass (nats)" if field == "kl_mass"
                else "positions shifted"),
        tooltip=[alt.Tooltip("label:N", title="token"), "token_id", "n_shifted",
                 "n_posts", alt.Tooltip("kl_mass:Q", format=".4g"),
                 alt.Tooltip("share_of_shifted:Q", format=".1%")],
    ).properties(height=alt.Step(20))


def kl_html(df: pd.DataFrame, clip: float = 1.0) -> str:
    """One post's tokens as HTML spans shaded by KL(p_sft || p_base) of the
    distribution that predicted them (full colour at `clip` nats), a red underline
    where the token is shifted; the hover title gives both models' top-1 tokens,
    ranks, KL and entropies. Token text is escaped.

    df: position, token_text, kl_sft_base, kl_base_sft, entropy_base, entropy_sft,
    top_text_base, top_text_sft, rank_sft_top_in_base, rank_base_top_in_sft,
    shift_class."""
    r, g, b = (int(ROLE_COLOR["delta"][i:i + 2], 16) for i in (1, 3, 5))
    spans = []
    for row in df.itertuples(index=False):
        alpha = min(float(row.kl_sft_base) / clip, 1.0) * 0.85
        title = (f"#{row.position}: KL(sft||base) {row.kl_sft_base:.4f}, "
                 f"KL(base||sft) {row.kl_base_sft:.4f}; top-1 base "
                 f"{show_token(row.top_text_base)} (rank under SFT "
                 f"{row.rank_base_top_in_sft}), SFT {show_token(row.top_text_sft)} "
                 f"(rank under base {row.rank_sft_top_in_base}: {row.shift_class}); "
                 f"entropy base {row.entropy_base:.3f}, SFT {row.entropy_sft:.3f}")
        under = ("border-bottom:2px solid #D62728;" if row.shift_class == "shifted"
                 else "")
        text = html.escape("" if row.token_text is None else str(row.token_text))
        spans.append(f'<span title="{html.escape(title)}" style="background:'
                     f'rgba({r},{g},{b},{alpha:.2f});{under}border-radius:2px">'
                     f'{text}</span>')
    legend = (f'<div style="font-size:0.8em;margin-bottom:0.4em">shade: KL(p_sft || '
              f'p_base) of the next-token distributions, full at &ge; {clip:g} nats; '
              f'<span style="border-bottom:2px solid #D62728">underlined</span>: '
              f'shifted (the base ranks SFT\'s top-1 below 3rd); hover a token</div>')
    return (f'{legend}<div style="white-space:pre-wrap;line-height:1.7;'
            f'font-family:ui-monospace,monospace;font-size:0.85em">'
            f'{"".join(spans)}</div>')


def headline(diffs: pd.DataFrame, metric: str) -> str:
    """'high - low: +0.012 (95% interval -0.003 to +0.027, 1000 resamples, seed
    6197): no clear difference' for one measure."""
    rows = diffs[diffs["metric"] == metric]
    if rows.empty:
        return "Both groups are needed for a difference."
    r = rows.iloc[0]
    verdict = ("the groups differ" if r["excludes_zero"]
               else "no clear difference (the interval holds 0)")
    return (f"**{r['group_a']} - {r['group_b']}: {r['difference']:+.4g}** (95% "
            f"interval {r['ci95_low']:+.4g} to {r['ci95_high']:+.4g}; "
            f"{int(r['n_posts_a'])} vs {int(r['n_posts_b'])} posts, "
            f"{int(r['n_resamples'])} bootstrap resamples, seed {int(r['seed'])}): "
            f"{verdict}.")
