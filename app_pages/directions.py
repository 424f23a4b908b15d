"""Directions: does SFT re-weight the base's directions or write new ones?"""

import streamlit as st

from app_lib import charts, floor, ui
from app_lib import directions as d
from app_lib import takeaways as tk

st.title("Directions")
st.caption("Which directions did fine-tuning change? Overlap: the share of "
           "||dW||^2 inside W_base's top-r singular subspace (a random subspace of "
           "that size holds r / dim). Intruders (Shuttleworth et al. 2024): W_sft's "
           "top singular vectors that match none of W_base's (max |cos| < epsilon), "
           "against random directions.")
src = ui.warehouse()
if not ui.need(src, *d.TABLES, run=d.FILL, what="No singular directions yet"):
    st.stop()

pair = ui.pick_pair(ui.load(d.pairs, src)["pair"].tolist())
c1, c2, c3 = st.columns(3)
side = c1.radio("side", ["left", "right"], horizontal=True, key="dir_side",
                help="left: rows, the output space of an (out, in) weight")
r = c2.select_slider("r (W_base's top-r)", [1, 4, 16, 64, 256], value=16,
                     key="dir_r")
measure = c3.selectbox("overlap measure", ["enrichment", "share"], key="dir_measure",
                       format_func={"enrichment": "enrichment: share / chance",
                                    "share": "share of ||dW||^2"}.get,
                       help="chance: r / dim, the share a random r-dimensional "
                            "subspace holds on average")
cells = ui.load(d.overlap_grid, src, pair, side, r)
if cells.empty:
    st.info(f"No overlap at r = {r} for pair {pair} (r is at most min(m, n)).")
else:
    ui.takeaway(tk.overlap(cells, r, side))
    if measure == "enrichment":
        ui.chart(charts.heatmap, cells, "enrichment", log=True, diverging_at=1.0,
                 legend_title="share / chance")
    else:
        ui.chart(charts.heatmap, cells, "share")
    st.caption("Enrichment 1 (white) is chance: a random r-dimensional subspace "
               "holds r / dim of ||dW||^2 on average; green above, purple below.")

seed = ui.load(floor.directions, src, pair, side)
if len(seed):
    st.subheader("Against a second fine-tune: the seed floor of the directions")
    ui.takeaway(tk.seed_floor_directions(seed, side))
    ui.chart(charts.heatmap, seed[seed["layer"].notna()], "share")
    st.caption("Each cell: the overlap ||P_k^T Q_k||_F^2 / k of the top-k singular "
               "subspaces of dW_A (this pair's SFT - base) and dW_B (a second "
               "fine-tune of the same base, same recipe, another seed; 1 = the same "
               "subspace); two random k-dimensional subspaces of the space W_base "
               "spans share k / span_dim on average (the chance level, per matrix "
               "in the table).")
    with st.expander("per matrix: overlap, chance, widest principal angle"):
        st.dataframe(seed, hide_index=True, width="stretch")

st.subheader("Intruder dimensions")
c1, c2 = st.columns(2)
k = c1.radio("W_sft's top k", ["paper", "all"], horizontal=True, key="dir_k",
             format_func={"paper": "10 (the paper's)", "all": "K (--vectors)"}.get)
eps = c2.select_slider("epsilon", [round(e / 10, 1) for e in range(1, 10)], value=0.5,
                       key="dir_eps")
grid = ui.load(d.intruder_grid, src, pair, k, eps)
if grid.empty:
    st.info("No intruder counts: W_base's whole basis was not computed for these "
            "matrices (raw.compute_runs, kind 'directions', says which).")
else:
    ui.takeaway(tk.intruders(grid, eps))
    ui.chart(charts.heatmap, d.intruder_cells(grid), "vs_null", text="label",
             legend_title="intruders / null")
    st.caption("Each cell: intruders / the number expected of random directions "
               "(the null); colour: their ratio, 0 = all of W_sft's top directions "
               "are W_base's, 1 = as many as random directions would give.")

st.subheader("One matrix")
mats = ui.load(d.matrices, src, pair)
tensor = st.selectbox("matrix", mats["tensor"].tolist(), key="dir_tensor")
curve = ui.load(d.intruder_curve, src, pair, tensor)
if not curve.empty:
    ui.chart(d.epsilon_chart, curve)
angles = ui.load(d.angles, src, pair, tensor)
if not angles.empty:
    st.markdown("**Principal angles** between the top-r subspaces of dW and of "
                "W_base (0° = a shared direction; random subspaces sit near 90°)")
    st.dataframe(d.angles_table(angles), width="stretch", hide_index=True)
toks = ui.load(d.tokens, src, pair, tensor)
table = d.token_table(toks)
if not table.empty:
    st.markdown("**What dW's top directions say**: tokens each direction promotes "
                "and demotes through the final norm and the unembedding "
                "(␣ = a space).")
    st.dataframe(table, width="stretch", hide_index=True)
rows = toks[toks["kind"] == "row_change"]
if not rows.empty:
    st.markdown("**Rows that changed most** (||dW row||):")
    rows = rows.assign(token=rows["token"].map(lambda t: charts.show_token(
        t, vocab=True)))
    st.dataframe(rows[["rank", "token_id", "token", "score"]], width="stretch",
                 hide_index=True)
