"""Weights heatmap: one measure of dW on the layer x module-type grid of a pair."""

import streamlit as st

from app_lib import charts, floor, ui
from app_lib import queries as q
from app_lib import takeaways as tk

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
ui.takeaway(tk.heatmap(cells, metric))
floors = ui.load(floor.modules, src, pair)
if metric == "relative_frobenius_change" and len(floors):
    ui.takeaway(tk.seed_floor_weights(floors))
ui.chart(charts.heatmap, cells, metric, log=log)
if metric == "relative_frobenius_change" and len(floors):
    seed = ui.load(floor.layers, src)
    with st.expander("The seed floor per cell: ||W_B - W_A||_F / ||W_A||_F"):
        st.dataframe(seed[seed["pair"] == pair].pivot_table(
            index="layer", columns="module", values="relative_change_between"),
            width="stretch")
        st.caption("B: the same base fine-tuned again by the same recipe with "
                   "another seed; a cell's change stands out where it is well "
                   "above this.")
if metric in charts.RANK_METRICS:
    st.caption("Colour: the rank as a share of the matrix's full rank min(m, n) "
               "(k/v projections are narrower than q); the cells print the rank.")

with st.expander("The grid as a table"):
    grid = cells.pivot_table(index="layer", columns="module", values=metric)
    grid = grid[[m for m in charts.MODULE_ORDER if m in grid.columns] + sorted(
        set(grid.columns) - set(charts.MODULE_ORDER))]
    st.dataframe(grid, width="stretch")
    st.download_button("Download CSV", cells.to_csv(index=False).encode(),
                       file_name=f"layer_module_{pair}.csv", mime="text/csv")
experts = (ui.load(q.expert_metrics, src, pair)
           if ui.load(q.has_table, src, "marts.fct_expert_metrics") else None)
if experts is not None and not experts.empty:
    st.subheader("Experts")
    st.caption("A mixture-of-experts cell above is the median over its experts "
               "(max_* columns: the largest). Here each expert of one module type: "
               "which experts did fine-tuning change most?")
    modules = [m for m in charts.MODULE_ORDER if m in set(experts.module)] + sorted(
        set(experts.module) - set(charts.MODULE_ORDER))
    module = st.selectbox("module type", modules, key="heatmap_expert_module")
    shown = experts[experts.module == module]
    if metric in shown.columns:
        st.altair_chart(charts.heatmap(shown, metric, log=log, columns="expert"),
                        width="stretch")
    else:
        st.info(f"{charts.metric_title(metric)} is not kept per expert; pick "
                "another measure.")
    with st.expander("The experts as a table"):
        st.dataframe(shown, width="stretch")

st.caption("Signal rank counts the singular values of dW above the Gavish-Donoho "
           "threshold for the bf16 rounding noise both checkpoints carry; relative "
           "rank divides it by the numerical rank of W_base. Stable and effective "
           "rank need no noise model but never reach 0.")
