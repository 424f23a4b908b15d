"""Spectra: the singular values of W_base, W_sft and dW of one weight matrix."""

import pandas as pd
import streamlit as st

from app_lib import charts, ui
from app_lib import queries as q
from app_lib import takeaways as tk

st.title("Spectra")
st.caption("All singular values of one weight matrix: the base model's W_base, the "
           "fine-tuned W_sft and their difference dW, on log axes. Below the dashed "
           "lines dW is indistinguishable from the bf16 rounding noise of the two "
           "checkpoints. Drag to pan, scroll to zoom, double-click to reset.")
src = ui.warehouse()
ui.legend_note()
if not ui.need(src, "marts.dim_tensors", "marts.fct_matrix_metrics",
               run=q.FILL_WEIGHTS, what="No spectra yet"):
    st.stop()

pair = ui.pick_pair(ui.load(q.pairs, src)["pair"].tolist())
tensors = ui.load(q.tensors, src, pair)
if tensors.empty:
    st.info(f"No matrices for pair {pair}.")
    st.stop()

modules = [m for m in charts.MODULE_ORDER if m in set(tensors["module"])] + sorted(
    set(tensors["module"]) - set(charts.MODULE_ORDER))
c1, c2 = st.columns([1, 2])
module = c1.selectbox("module type", modules, key="spectra_module")
of_module = tensors[tensors["module"] == module]
layers = sorted(int(x) for x in of_module["layer"].dropna())
if layers:
    layer = c2.select_slider("layer", layers, value=layers[len(layers) // 2],
                             key="spectra_layer")
    row = of_module[of_module["layer"] == layer].iloc[0]
else:
    c2.caption("outside the blocks")
    row = of_module.iloc[0]
tensor = row["tensor"]
st.markdown(f"`{tensor}` &nbsp; {int(row['n_rows']):,} x {int(row['n_cols']):,}, "
            f"{row['storage_dtype']}")

metrics = ui.load(q.matrix_metrics, src, pair, tensor)
delta = metrics[metrics["role"] == "delta"]
noise = {}
if len(delta):
    noise = {"mp_edge": delta["mp_edge"].iloc[0],
             "gd_threshold": delta["gd_threshold"].iloc[0]}
values = ui.load(q.spectrum, src, pair, tensor)
energy = ui.load(q.energy_curve, src, pair, tensor)
ui.takeaway(tk.spectrum(delta.iloc[0] if len(delta) else None, energy))
ui.chart(charts.spectra_chart, values, noise)

# one above the other: side by side, a laptop-wide page cut the table's dW column
st.markdown("**Energy of dW**: the share of ||dW||_F^2 its top-k directions hold "
            "(dots: LoRA ranks 1 ... 256)")
lora = ui.load(q.lora_fit, src, pair, tensor)
signal = delta["signal_rank"].iloc[0] if len(delta) else None
if energy.empty:
    st.info("No spectrum of dW for this matrix.")
else:
    ui.chart(charts.energy_chart, energy, lora, signal)
st.markdown("**Measures** (base, SFT, dW)")
shown = ["stable_rank", "effective_rank", "numerical_rank", "energy_rank_90",
         "s_max", "frobenius_norm", "signal_rank", "noise_sigma", "mp_edge",
         "gd_threshold", "relative_frobenius_change", "relative_spectral_change",
         "relative_signal_rank", "zero_fraction"]
table = metrics.set_index("role")[[c for c in shown if c in metrics]].T
table.columns = [charts.ROLE_LABEL.get(c, c).split(" =")[0] for c in table.columns]
st.dataframe(table.map(lambda v: "" if pd.isna(v) else f"{v:.4g}"),
             width="stretch", height=530,
             column_config={"_index": st.column_config.TextColumn(
                 "measure", width="medium")})

esd = ui.load(q.matrix_esd, src, pair, tensor)
if len(esd):
    st.markdown("**ESD tail** (WeightWatcher): the share of eigenvalues lambda = s^2 "
                "at or above each, the fitted power law (dashed) and the "
                "Marchenko-Pastur bulk edge (dotted); " + ", ".join(
                    f"{charts.ROLE_LABEL[r.role].split(' =')[0]} alpha "
                    f"{r.alpha:.2f} +- {r.alpha_sigma:.2f}, {r.mp_n_spikes} spikes"
                    for r in esd.dropna(subset=["alpha"]).itertuples()))
    st.altair_chart(charts.esd_tail_chart(values, esd), width="stretch")
