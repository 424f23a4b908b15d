"""Over training: the measures along a fine-tune's checkpoints, step by step."""

import streamlit as st

from app_lib import queries as q
from app_lib import takeaways as tk
from app_lib import trajectory as tr
from app_lib import ui

st.title("Over training")
st.caption("When does fine-tuning change the model? Each checkpoint of a series "
           "(python -m compute.run --trajectory) against the base: one line per "
           "module type, the training loss of the same steps dashed on the right "
           "axis. The step-to-step change is W_t - W_t-1 measured as a pair of its "
           "own; the overlap compares dW's top-k singular subspace with the step "
           "before's at k = the smaller signal rank.")
src = ui.warehouse()
if not ui.need(src, *tr.TABLES, run=tr.FILL, what="No trajectory yet"):
    st.stop()

names = ui.load(tr.series, src)["trajectory"].tolist()
name = st.sidebar.selectbox("series", names, index=len(names) - 1,
                            key="trajectory_name")
onsets = ui.load(tr.onsets, src, name)
ui.takeaway(tk.over_training(onsets))
measure = st.selectbox("measure", list(tr.MEASURES), format_func=tr.MEASURES.get,
                       key="trajectory_measure")
per_module = ui.load(tr.module_steps, src, name)
steps = ui.load(tr.behaviour, src, name)
if measure in tr.BEHAVIOUR and steps[measure].isna().all():
    st.info("No behaviour at these steps: the series was run with --skip-behaviour "
            "or without prompts.")
else:
    st.altair_chart(tr.over_training_chart(per_module, steps, measure),
                    width="stretch")
    note = tr.null_note(per_module, measure)
    if note:
        st.caption(note)

intervals = (ui.load(tr.kl_intervals, src, name)
             if ui.load(q.has_table, src, tr.INTERVALS) else None)
if intervals is not None and not intervals.empty:
    st.subheader("KL per prompt group, with its interval")
    st.altair_chart(tr.kl_interval_chart(intervals), width="stretch")
    st.caption("KL(p_step || p_base) per token of each prompt group at each step, "
               "with a 95% paired bootstrap interval over the group's posts "
               "(marts.fct_group_behaviour_intervals of the step's pair run); 0 is "
               "the base against itself.")

st.subheader("Onset: the first step reaching 50% / 90% of the final change")
st.caption("Per module type and layer: the cell's relative change "
           "sqrt(sum ||dW||^2) / sqrt(sum ||W_base||^2) at each step against its "
           "value at the last step (NULL: the cell never changed).")
st.dataframe(onsets, hide_index=True, width="stretch")
