"""Attribution: which weight changes carry the fine-tuned behaviour (weight patching)."""

import streamlit as st

from app_lib import attribution as at
from app_lib import takeaways as tk
from app_lib import ui

st.title("Attribution")
st.caption("Weight patching (python -m compute.patch): for each group G of matrices, "
           "the base with only G's fine-tuned change added (add) and the SFT with "
           "only G reverted to the base (revert), scored on the behaviour run's posts."
           " A share is of KL(p_sft || p_base): 100% the SFT's predictions, 0% the "
           "base's. The posts are the pair's scored prompts (docs/patch.md).")
src = ui.warehouse()
if not ui.need(src, at.TABLE, run=at.FILL, what="No weight-patching run yet"):
    st.stop()
pairs = ui.load(at.pairs, src)
if not pairs:
    st.info(f"No pair has a patch run yet: `{at.FILL.splitlines()[0]}`")
    st.stop()
pair = ui.pick_pair(pairs)
if pair not in pairs:
    pair = pairs[-1]
bys = ui.load(at.groupings, src, pair)
by = st.radio("groups", bys, horizontal=True, key="patch_by")
rank = ui.load(at.ranking, src, pair, by)
vs = ui.load(at.vs_weights, src, pair, by)
ui.takeaway(tk.attribution(rank, vs))
if rank["layer"].notna().any() and rank["module"].notna().any():
    share = st.radio("behavioural share", list(at.SHARES), horizontal=True,
                     format_func=at.SHARES.get, key="patch_share")
    measure = st.radio("weight change", list(at.WEIGHT_MEASURES), horizontal=True,
                       format_func=at.WEIGHT_MEASURES.get, key="patch_measure")
    left, right = st.columns(2)
    with left:
        ui.chart(at.share_heatmap, rank, share)
    with right:
        ui.chart(at.weight_heatmap, rank, measure)
st.markdown("**Top groups**: the share each group's change carries alone (add) and "
            "what reverting it loses, with 95% intervals over posts.")
ui.chart(at.top_groups_chart, rank)
top = tuple(rank.nsmallest(4, "rank_add")["patch_group"])
curves = ui.load(at.rank_curves, src, pair, by, top)
if curves["patch_rank"].notna().any():
    st.markdown("**Rank curves**: the add of only the top-r singular part of each "
                "matrix of the group's dW.")
    ui.chart(at.rank_chart, curves)
moved = ui.load(at.moves, src, pair, by)
if not moved.empty:
    st.markdown("**Toward the SFT, or elsewhere?** How far each model moved the "
                "base's predictions (KL from the base, in units of the SFT's own move, "
                "95% intervals) against the KL to the SFT it removed. On the dashed "
                "diagonal the change moves the base only toward the SFT; above it, "
                "the change also moves it elsewhere.")
    ui.chart(at.moved_chart, moved)
if not vs.empty:
    st.markdown("**Do the largest weight changes matter most?** Spearman's rank "
                "correlation over the groups (null: 0), 95% Fisher-z intervals.")
    st.dataframe(vs, hide_index=True, width="stretch")
with st.expander("Numbers"):
    st.dataframe(rank, hide_index=True, width="stretch")
