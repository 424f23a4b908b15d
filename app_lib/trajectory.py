"""The "Over training" page's queries (cached, read-only) and charts (pure functions).

    from app_lib import trajectory as tr
    per_module = tr.module_steps(src, "N")                 # (step, module) measures
    tr.over_training_chart(per_module, tr.behaviour(src, "N"), "relative_change")

Kept apart from app_lib/queries.py and charts.py so that the trajectory marts
(marts.fct_trajectory_weights, fct_trajectory_behaviour, fct_trajectory_onset) and
their page travel together.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from app_lib.charts import GROUP_LABEL, MODULE_ORDER, _group_scale
from app_lib.db import query
from app_lib.queries import TTL_S, Src

FILL = ("python -m compute.run --base BASE --trajectory CHECKPOINTS_DIR --name N\n"
        "cd dbt_project && dbt build")
TABLES = ("marts.fct_trajectory_weights", "marts.fct_trajectory_behaviour")
INTERVALS = "marts.fct_group_behaviour_intervals"  # drawn when it is there
LOSS_COLOR = "#333333"

# measure -> (axis title, the behaviour mart's column or None: one line per module)
MEASURES: dict[str, str] = {
    "relative_change": "relative change ||dW_t||_F / ||W_base||_F (per module type)",
    "signal_rank": "signal rank of dW_t (median over the module type's matrices)",
    "n_intruders": "intruder dimensions of W_sft (k = 10, epsilon 0.5; summed)",
    "step_change": "change since the step before ||W_t - W_t-1||_F / ||W_base||_F",
    "overlap": "overlap of dW's top-k subspace with the step before's (median)",
    "mean_kl_sft_base": "KL(p_step || p_base) per token on the prompt posts (nats)",
}
BEHAVIOUR = {"mean_kl_sft_base"}


def _cache(fn):
    return st.cache_data(ttl=TTL_S, show_spinner=False)(fn)


@_cache
def series(src: Src) -> pd.DataFrame:
    """The series in the warehouse: name, steps, the last step."""
    return query("""
        select trajectory, count(*) as n_steps, max(step) as last_step
        from marts.fct_trajectory_behaviour group by trajectory order by trajectory
    """, path=src[0])


@_cache
def module_steps(src: Src, name: str) -> pd.DataFrame:
    """Per (step, module type): the weight measures of MEASURES, aggregated over
    the module type's matrices of every layer."""
    return query("""
        select step, any_value(tokens_seen) as tokens_seen, module,
               sqrt(sum(delta_frobenius_norm ^ 2))
                   / nullif(sqrt(sum(base_frobenius_norm ^ 2)), 0) as relative_change,
               median(signal_rank) as signal_rank,
               sum(n_intruders) as n_intruders,
               sum(intruders_null_expected) as n_intruders_null,
               sqrt(sum(step_diff_frobenius_norm ^ 2))
                   / nullif(sqrt(sum(base_frobenius_norm ^ 2)), 0) as step_change,
               median(overlap_left) as overlap,
               median(overlap_left_random) as overlap_null,
        from marts.fct_trajectory_weights
        where trajectory = ?
        group by step, module
        order by step, module
    """, [name], path=src[0])


@_cache
def behaviour(src: Src, name: str) -> pd.DataFrame:
    """marts.fct_trajectory_behaviour of one series, in step order."""
    return query("select * from marts.fct_trajectory_behaviour where trajectory = ? "
                 "order by step", [name], path=src[0])


@_cache
def kl_intervals(src: Src, name: str) -> pd.DataFrame:
    """Per (step, prompt group): KL(p_step || p_base) per token with its 95% paired
    bootstrap interval over posts (marts.fct_group_behaviour_intervals of the step's
    pair run)."""
    return query("""
        select t.step, i.grp, i.n_posts, i.estimate, i.ci95_low, i.ci95_high
        from marts.fct_trajectory_behaviour t
        inner join marts.fct_group_behaviour_intervals i on i.pair = t.pair
        where t.trajectory = ? and i.metric = 'mean_kl_sft_base'
        order by t.step, i.grp
    """, [name], path=src[0])


@_cache
def onsets(src: Src, name: str) -> pd.DataFrame:
    """marts.fct_trajectory_onset of one series."""
    return query("""
        select module, layer, final_relative_change, onset_50_step, onset_90_step,
               onset_50_tokens_seen, onset_90_tokens_seen
        from marts.fct_trajectory_onset where trajectory = ?
        order by module, layer nulls first
    """, [name], path=src[0])


def _measure_layer(per_module: pd.DataFrame, steps: pd.DataFrame, measure: str):
    """The measure's lines: one per module type, or the behaviour's single line."""
    title = MEASURES[measure]
    if measure in BEHAVIOUR:
        data = steps[["step", measure]].dropna().assign(module="all (behaviour)")
    else:
        data = per_module[["step", "module", measure]].dropna()
    modules = [m for m in MODULE_ORDER if m in set(data["module"])] + sorted(
        set(data["module"]) - set(MODULE_ORDER))
    return alt.Chart(data).mark_line(point=True).encode(
        x=alt.X("step:Q", title="training step"),
        y=alt.Y(f"{measure}:Q", title=title),
        color=alt.Color("module:N", sort=modules, title="module type"),
        tooltip=["step:Q", "module:N", alt.Tooltip(f"{measure}:Q", format=".4g")])


def over_training_chart(per_module: pd.DataFrame, steps: pd.DataFrame,
                        measure: str) -> alt.LayerChart:
    """`measure` against step (one line per module type; KL: one line), with the
    training loss of the same steps on a second axis (dashed, right)."""
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; one of {', '.join(MEASURES)}")
    lines = _measure_layer(per_module, steps, measure)
    loss = steps[["step", "train_loss"]].dropna()
    if loss.empty:
        return alt.layer(lines)
    loss_line = alt.Chart(loss).mark_line(
        color=LOSS_COLOR, strokeDash=[6, 3], point=alt.OverlayMarkDef(
            color=LOSS_COLOR)).encode(
        x="step:Q",
        y=alt.Y("train_loss:Q", title="training loss (nats per token, dashed)",
                axis=alt.Axis(orient="right", titleColor=LOSS_COLOR)),
        tooltip=["step:Q", alt.Tooltip("train_loss:Q", format=".4f")])
    return alt.layer(lines, loss_line).resolve_scale(y="independent")


def null_note(per_module: pd.DataFrame, measure: str) -> str:
    """What the measure's chance level is, from the data, for the caption."""
    if measure == "n_intruders" and per_module["n_intruders_null"].notna().any():
        return ("Null: the count expected of random directions, "
                f"{per_module['n_intruders_null'].max():.2f} at most per module type "
                "and step.")
    if measure == "overlap" and per_module["overlap_null"].notna().any():
        return ("Null: two random subspaces of the same k overlap k / dim, "
                f"{per_module['overlap_null'].max():.3f} at most here.")
    return ""


def kl_interval_chart(intervals: pd.DataFrame) -> alt.LayerChart:
    """KL per token against step, one line per prompt group (the app's group
    colours), its 95% bootstrap interval over posts as a band (the null is 0)."""
    data = intervals.assign(group=intervals["grp"].map(GROUP_LABEL).fillna(
        intervals["grp"]))
    base = alt.Chart(data).encode(
        x=alt.X("step:Q", title="training step"),
        color=alt.Color("group:N", title="prompt group",
                        scale=_group_scale(data["grp"])))
    band = base.mark_area(opacity=0.2).encode(
        y=alt.Y("ci95_low:Q", title="KL(p_step || p_base) per token (nats), 95% CI"),
        y2="ci95_high:Q")
    line = base.mark_line(point=True).encode(
        y="estimate:Q",
        tooltip=["step:Q", "group:N", "n_posts:Q",
                 *(alt.Tooltip(f"{c}:Q", format=".3g")
                   for c in ("estimate", "ci95_low", "ci95_high"))])
    return alt.layer(band, line)
