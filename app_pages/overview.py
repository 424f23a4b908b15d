"""Overview: the pairs in the warehouse, their models, runs and sizes."""

import streamlit as st

from app_lib import charts, floor, ui
from app_lib import queries as q
from app_lib import takeaways as tk

st.title("sftscope")
st.caption("What did supervised fine-tuning do to this model? Singular-value "
           "spectra of every weight matrix of a base model and its fine-tuned "
           "sibling, and both models' log-probs on Stack Exchange posts.")
src = ui.warehouse()
ui.legend_note()
st.caption(f"Warehouse: `{src[0]}`")

if ui.need(src, "marts.dim_pairs", run=q.FILL_ALL + "\n# or\n" + q.FILL_WEIGHTS,
           what="No pairs in the warehouse yet"):
    pairs = ui.load(q.pairs, src)
    said = []
    if ui.load(q.row_count, src, "marts.fct_layer_module_metrics"):
        said += tk.weights(ui.load(q.layer_module, src))
    floors = ui.load(floor.modules, src)
    said += tk.seed_floor_weights(floors)
    scored = (ui.load(q.behaviour_pairs, src)
              if ui.load(q.row_count, src, "raw.token_logprobs") else [])
    if scored:  # a series' runs (the Over training page's) are not among them
        said += tk.perplexity(ui.load(q.group_perplexity_delta, src, scored[-1]),
                              pair=scored[-1])
    ui.takeaway(said)
    c1, c2, c3 = st.columns(3)
    c1.metric("pairs", len(pairs))
    c2.metric("weight matrices", f"{int(pairs['n_matrices'].fillna(0).sum()):,}")
    c3.metric("pairs with behaviour", int(pairs["behaviour_run_id"].notna().sum()))
    st.subheader("Pairs")
    st.dataframe(
        pairs[["pair", "base_model", "sft_model", "base_revision", "sft_revision",
               "n_layers", "n_matrices", "n_matrix_params", "size_billions",
               "spectra_device", "spectra_method", "spectra_finished_at",
               "behaviour_device", "behaviour_finished_at", "code_version"]],
        hide_index=True, width="stretch",
        column_config={
            "n_matrix_params": st.column_config.NumberColumn("matrix params",
                                                             format="compact"),
            "size_billions": st.column_config.NumberColumn("size (B)",
                                                           format="%.3g"),
            "spectra_finished_at": st.column_config.DatetimeColumn("spectra at"),
            "behaviour_finished_at": st.column_config.DatetimeColumn(
                "behaviour at"),
        })

    if ui.load(q.row_count, src, "marts.fct_pair_summary"):
        st.subheader("Median over layers, per module type")
        st.caption("How much dW changes each module type (relative to W_base) and "
                   "how many directions of it stand above bf16 rounding noise; "
                   "the suggested LoRA rank holds the signal but no more than 90% "
                   "of ||dW||_F^2.")
        summary = ui.load(q.pair_summary, src)
        rank = {m: i for i, m in enumerate(q.MODULE_ORDER)}
        summary = summary.sort_values(
            ["size_billions", "pair", "module"],
            key=lambda c: c.map(rank).fillna(99) if c.name == "module" else c)
        if len(floors):  # the seed floor beside the change, where the pair has one
            summary = summary.merge(
                floors[["pair", "module", "median_relative_change_between"]],
                on=["pair", "module"], how="left")
            st.caption("Seed floor: the same median of ||W_B - W_A||_F / ||W_A||_F "
                       "for a second fine-tune B of the same base (same recipe, "
                       "another seed), where the pair has one.")
        st.dataframe(
            summary.drop(columns=["size_billions"]), hide_index=True, width="stretch",
            column_config={
                "median_relative_frobenius_change": st.column_config.NumberColumn(
                    "||dW||_F / ||W||_F", format="%.4f"),
                "median_relative_change_between": st.column_config.NumberColumn(
                    "seed floor ||W_B - W_A||_F / ||W_A||_F", format="%.4f"),
                "median_relative_spectral_change": st.column_config.NumberColumn(
                    "||dW||_2 / ||W||_2", format="%.4f"),
                "median_delta_stable_rank": st.column_config.NumberColumn(
                    "stable rank dW", format="%.2f"),
                "median_delta_signal_rank": st.column_config.NumberColumn(
                    "signal rank dW", format="%.0f"),
                "median_relative_signal_rank": st.column_config.NumberColumn(
                    "relative rank", format="%.4f"),
                "suggested_lora_rank": st.column_config.NumberColumn("LoRA rank"),
            })

if ui.load(q.row_count, src, "marts.fct_training_curve"):
    st.subheader("How the trained pairs learned")
    st.caption("Pairs trained here (`python -m compute.train_demo`): the base "
               "pretrained from random weights on Stack Exchange posts, then the SFT "
               "copy fine-tuned on question -> answer pairs in a chat format. Loss per "
               "token on the training batches, on held-out posts (raw text) and on "
               "held-out answers (chat format).")
    curve = ui.load(q.training_curve, src)
    trained = list(dict.fromkeys(curve["pair"]))
    pick = (st.selectbox("trained pair", trained) if len(trained) > 1
            else trained[0])
    as_ppl = st.toggle("perplexity (log axis) instead of loss", value=False)
    ui.chart(charts.training_chart, curve[curve["pair"] == pick], perplexity=as_ppl)

st.subheader("What is in the warehouse")
rel = ui.load(q.relations, src)
if rel.empty:
    st.info("The warehouse file exists but holds no tables yet. Run:",
            icon=":material/info:")
    st.code(q.FILL_ALL, language="bash")
else:
    st.dataframe(rel, hide_index=True, width="stretch", height=300,
                 column_config={"n_rows": st.column_config.NumberColumn(
                     "rows (est.)", format="localized")})
