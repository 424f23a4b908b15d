"""Weights heatmap: one measure of dW on the layer x module-type grid of a pair."""

import streamlit as st

from app_lib import charts, ui
from app_lib import queries as q

st.title("Weights heatmap")
st.caption("Each cell is one weight matrix: how much fine-tuning changed it "
           "(dW = W_sft - W_base relative to W_base), or how many directions the "
           "change has. Hover a cell for its numbers.")
src = ui.warehouse()
ui.legend_note()
if not ui.need(src, "marts.fct_layer_module_metrics", run=q.FILL_WEIGHTS,
               what="No weight metrics yet"):
    st.stop()

pairs = ui.load(q.pairs, src)["pair"].tolist()
pair = ui.pick_pair(pairs)
options = ["relative_frobenius_change", "relative_spectral_change",
           "delta_stable_rank", "delta_effective_rank", "delta_signal_rank",
           "relative_signal_rank", "relative_stable_rank", "relative_effective_rank",
           "relative_energy_rank_90", "zero_fraction"]
c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
metric = c1.selectbox("measure", options, format_func=charts.metric_title,
                      key="heatmap_metric")
log = c2.toggle("log colour scale", value=False, key="heatmap_log")

cells = ui.load(q.layer_module, src, pair)
if cells.empty:
    st.info(f"Pair {pair} has no block matrices in marts.fct_layer_module_metrics.")
    st.stop()
st.altair_chart(charts.heatmap(cells, metric, log=log), width="stretch")

with st.expander("The grid as a table"):
    grid = cells.pivot_table(index="layer", columns="module", values=metric)
    grid = grid[[m for m in charts.MODULE_ORDER if m in grid.columns]]
    st.dataframe(grid, width="stretch")
    st.download_button("Download CSV", cells.to_csv(index=False).encode(),
                       file_name=f"layer_module_{pair}.csv", mime="text/csv")
st.caption("Signal rank counts the singular values of dW above the Gavish-Donoho "
           "threshold for the bf16 rounding noise both checkpoints carry; relative "
           "rank divides it by the numerical rank of W_base. Stable and effective "
           "rank need no noise model but never reach 0.")
