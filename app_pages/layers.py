"""Layers: a measure against depth, one line per pair, so sizes compare."""

import pandas as pd
import streamlit as st

from app_lib import charts, floor, ui
from app_lib import queries as q
from app_lib import takeaways as tk

MEDIAN = "median over module types"

st.title("Layers")
st.caption("A measure of dW against depth = layer / n_layers, one line per pair, "
           "so 0.5B ... 72B line up on one axis. Click a pair in the legend to "
           "pick it out; drag to pan, scroll to zoom.")
src = ui.warehouse()
ui.legend_note()
if not ui.need(src, "marts.fct_layer_module_metrics", run=q.FILL_WEIGHTS,
               what="No weight metrics yet"):
    st.stop()

cells = ui.load(q.layer_module, src)
options = ["relative_spectral_change", "relative_frobenius_change",
           "relative_signal_rank", "delta_signal_rank", "delta_stable_rank",
           "delta_effective_rank", "relative_stable_rank", "delta_s_max",
           "base_s_max", "base_stable_rank"]
c1, c2, c3 = st.columns([3, 2, 1], vertical_alignment="bottom")
metric = c1.selectbox("measure", options, format_func=charts.metric_title,
                      key="layers_metric")
modules = [m for m in charts.MODULE_ORDER if m in set(cells["module"])]
module = c2.selectbox("module type", [MEDIAN, *modules], key="layers_module")
log = c3.toggle("log y", value=False, key="layers_log")

data = (ui.load(q.layer_medians, src) if module == MEDIAN
        else cells[cells["module"] == module])
all_pairs = data.drop_duplicates("pair").sort_values("size_billions")["pair"]
shown = st.multiselect("pairs", all_pairs.tolist(), default=all_pairs.tolist(),
                       key="layers_pairs")
data = data[data["pair"].isin(shown)]
if data.empty:
    st.info("Choose at least one pair.")
    st.stop()
ui.takeaway(tk.depth_trend(data, metric))
floors = ui.load(floor.layers, src)
seed = (floor.layer_lines(data, floors[floors["pair"].isin(shown)],
                          None if module == MEDIAN else module)
        if metric == "relative_frobenius_change" else data.iloc[0:0])
ui.takeaway(tk.seed_floor_layers(seed))
st.altair_chart(charts.layers_chart(pd.concat([data, seed]) if len(seed) else data,
                                    metric, log=log).interactive(bind_y=False),
                width="stretch")
st.caption(f"{module}: {charts.metric_title(metric)}."
           + (" '<pair>: seed floor' is ||W_B - W_A||_F / ||W_A||_F for a second "
              "fine-tune B of the same base (same recipe, another seed): the change "
              "a fine-tune's randomness alone makes." if len(seed) else ""))

st.subheader("Power-law alpha of the ESD (WeightWatcher)")
st.caption("alpha of p(lambda) ~ lambda^-alpha fitted to the eigenvalues of W^T W "
           "(maximum likelihood, xmin by the KS distance), for W_base, W_sft and dW "
           "of one pair; WeightWatcher reads 2-6 (band) as well trained. "
           "docs/esd.md.")
esd_pair = st.selectbox("pair", all_pairs.tolist(), key="layers_esd_pair",
                        help="the pair of the alpha and correlation-trap charts")
if ui.need(src, "marts.fct_layer_module_esd", run=q.FILL_WEIGHTS,
           what="No ESD measures yet"):
    esd = ui.load(q.esd_layers, src, esd_pair, None if module == MEDIAN else module)
    st.altair_chart(charts.esd_alpha_chart(esd), width="stretch")

st.subheader("Correlation traps (WeightWatcher's randomised ESD)")
st.caption("W's entries shuffled (seeded) destroy every correlation; the shuffled "
           "W should be a Marchenko-Pastur bulk. Eigenvalues still above its edge "
           "(plus the Tracy-Widom margin) are traps: large entries that no shuffle "
           "removes. 0 is the null, what a W without outsized entries gives. "
           "`compute.run --traps`; docs/esd.md.")
if ui.need(src, "marts.fct_layer_module_traps", what="No correlation traps yet",
           run=f"python -m compute.run --pair {esd_pair} --skip-behaviour --traps"
               "\ncd dbt_project && dbt build"):
    traps = ui.load(q.traps_layers, src, esd_pair,
                    None if module == MEDIAN else module)
    if traps.empty:
        st.info(f"No traps for {esd_pair}: `python -m compute.run --pair {esd_pair} "
                "--traps`.")
    else:
        total = traps[["base_n_traps", "sft_n_traps"]].sum()
        st.markdown(f"W_base: **{int(total['base_n_traps'])}** traps, W_sft: "
                    f"**{int(total['sft_n_traps'])}** over "
                    f"{int(traps['n_matrices'].sum())} matrices per side "
                    f"({module}).")
        st.altair_chart(charts.traps_chart(traps), width="stretch")
