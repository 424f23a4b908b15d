"""Residual drift: how far the two models' hidden states part, layer by layer."""

import streamlit as st

from app_lib import charts, ui
from app_lib import queries as q

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
measure = st.radio("measure", ["mean_rel_l2", "pooled_rel_l2", "mean_cos"],
                   horizontal=True, key="drift_measure",
                   format_func={"mean_rel_l2": "relative L2 distance (mean)",
                                "pooled_rel_l2": "relative L2 distance (pooled)",
                                "mean_cos": "cosine similarity"}.get)
st.altair_chart(charts.drift_chart(drift, measure), width="stretch")
with st.expander("Numbers"):
    st.dataframe(drift, hide_index=True, width="stretch")
st.caption("Index 0 is the embedding output, index L the final normed state the LM "
           "head reads; a change in block k first shows at index k + 1.")
