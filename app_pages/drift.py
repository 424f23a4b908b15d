"""Residual drift: how far the two models' hidden states part, layer by layer."""

import streamlit as st

from app_lib import charts, ui
from app_lib import queries as q
from app_lib import takeaways as tk

st.title("Residual drift")
st.caption("The same post through both models: the distance between their hidden "
           "states (the residual stream) at each layer, averaged over the post's "
           "tokens and then over the posts of each group (token-weighted).")
src = ui.warehouse()
ui.legend_note()
if not ui.need(src, "raw.residual_drift", run=q.FILL_BEHAVIOUR,
               what="No residual drift yet"):
    st.stop()

pair = ui.pick_pair(ui.load(q.behaviour_pairs, src))
drift = ui.load(q.residual_drift, src, pair)
if drift.empty:
    st.info(f"Pair {pair} has no residual drift rows.")
    st.stop()
diff = ui.load(q.drift_difference, src, pair)
ui.takeaway(tk.drift(diff) or (
    ["No interval for the groups' difference yet: `cd dbt_project && dbt build` "
     "builds marts.fct_residual_drift_group_difference."] if diff.empty else []))
measure = st.radio("measure", ["mean_rel_l2", "pooled_rel_l2", "mean_cos"],
                   horizontal=True, key="drift_measure",
                   format_func={"mean_rel_l2": "relative L2 distance (mean)",
                                "pooled_rel_l2": "relative L2 distance (pooled)",
                                "mean_cos": "cosine similarity"}.get)
ui.chart(charts.drift_chart, drift, measure)
if not diff.empty and diff["ci95_low"].notna().any():
    st.markdown("**Do the groups differ?** The difference of the posts' mean "
                "relative L2 distance, with its 95% Welch interval; an interval "
                "that holds 0 is no difference.")
    ui.chart(charts.drift_difference_chart, diff)
with st.expander("Numbers"):
    st.dataframe(drift, hide_index=True, width="stretch")
st.caption("Index 0 is the embedding output, index L the final normed state the LM "
           "head reads; a change in block k first shows at index k + 1.")
