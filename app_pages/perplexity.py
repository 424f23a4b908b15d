"""Perplexity: both models on the posts, per group; per-token deltas along a post."""

import pandas as pd
import streamlit as st

from app_lib import charts, floor, lora, shift, ui
from app_lib import queries as q
from app_lib import takeaways as tk

st.title("Perplexity")
st.caption("How surprised each model is by the Stack Exchange posts (raw text, no "
           "chat template), for well-received (high score) and badly-received (low "
           "score) posts; and, token by token, where the fine-tuned model gains or "
           "loses log-probability against the base.")
src = ui.warehouse()
ui.legend_note()
if not ui.need(src, "raw.token_logprobs", run=q.FILL_BEHAVIOUR,
               what="No scored posts yet"):
    st.stop()

pair = ui.pick_pair(ui.load(q.behaviour_pairs, src))
ppl = ui.load(q.post_perplexity, src, pair)
diffs = (ui.load(shift.differences, src, pair)
         if q.has_table(src, "marts.fct_group_difference_intervals") else None)
ui.takeaway(tk.perplexity(ui.load(q.group_perplexity_delta, src, pair), diffs))
bad = ui.load(q.nonfinite_tokens, src, pair)
if not bad.empty and bad["n_posts_left_out"].iloc[0]:
    b = bad.iloc[0]
    st.warning(f"{b.n_tokens_nonfinite_base:,} token(s) under the base model and "
               f"{b.n_tokens_nonfinite_sft:,} under the SFT model had logits that are "
               f"not finite (NaN/Inf weights: python -m compute.doctor --scan); the "
               f"{b.n_posts_left_out:,} post(s) holding them (of {b.n_posts:,}) are "
               "left out of every figure here.", icon=":material/warning:")

st.subheader("Per group and model")
c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
measure = c1.radio("measure", ["perplexity", "bits_per_byte", "bits_per_token"],
                   horizontal=True, key="ppl_measure",
                   format_func=lambda m: m.replace("_", " "),
                   help="Bits per byte compare across tokenizers.")
log = c2.toggle("log y", value=False, key="ppl_log")
left, right = st.columns([3, 2])
with left:
    ui.chart(charts.perplexity_chart, ppl, measure, log=log)
table = (ppl.groupby(["grp", "role"])[measure]
         .agg(posts="count", median="median", mean="mean").reset_index())
table["role"] = table["role"].map(charts.MODEL_LABEL)
right.dataframe(table, hide_index=True, width="stretch",
                column_config={"median": st.column_config.NumberColumn(format="%.4g"),
                               "mean": st.column_config.NumberColumn(format="%.4g")})
deltas = ui.load(q.post_deltas, src, pair)
if "delta_perplexity" in deltas:
    right.caption("SFT minus base, per post: median by group")
    right.dataframe(deltas.groupby("grp")[["delta_perplexity",
                                           "delta_bits_per_byte"]].median(),
                    width="stretch")

seed = ui.load(floor.behaviour, src, pair)
if len(seed):
    st.subheader("Against a second fine-tune: the seed floor")
    st.caption("The same base fine-tuned again by the same recipe with another seed "
               "(B): how far its next-token distributions are from this SFT's, "
               "KL(p_B || p_SFT), next to how far this SFT's are from the base's, "
               "per group and post type ('all': every one), token-weighted over the "
               "posts both runs scored (nats per token).")
    ui.takeaway(tk.seed_floor_kl(seed[(seed["post_type"] == "all")]))
    st.dataframe(floor.kl_table(seed), hide_index=True, width="stretch")

st.subheader("Is SFT a LoRA? Behaviour recovered per rank")
st.caption("W_base + the best rank-r approximation of every dW, scored like the two "
           "models: the share of the SFT-minus-base log-prob delta it recovers (95% "
           "interval over posts) and of KL(p_sft || p_base) it removes, next to the "
           "share of ||dW||_F^2 the same truncation keeps.")
if ui.need(src, lora.TABLE, run=lora.FILL, what="No rank-recovery run yet"):
    opts = ui.load(lora.choices, src, pair)
    if opts.empty:
        st.info(f"No rank-recovery run of pair {pair}: `{lora.FILL.splitlines()[0]}`")
    else:
        c1, c2, c3 = st.columns(3)
        modules = c1.selectbox("matrices truncated", sorted(opts["modules"].unique()),
                               key="lora_modules")
        opts = opts[opts["modules"] == modules]
        grps = sorted(opts["grp"].unique(), key=lambda g: (g != "all", g))
        grp = c2.selectbox("posts", grps, key="lora_grp",
                           format_func=lambda g: charts.GROUP_LABEL.get(g, g))
        vectors = c3.selectbox("1-D tensors", sorted(opts["vectors"].unique(),
                                                     key=lambda v: v != "sft"),
                               key="lora_vectors",
                               format_func=lambda v: lora.VECTORS_LABEL.get(v, v))
        rec = ui.load(lora.recovery, src, pair, modules, grp, vectors)
        st.markdown(lora.headline(rec))
        ui.chart(lora.recovery_chart, rec)

st.subheader("Cumulative per-token delta along each post")
st.caption("Running sum of log p_SFT - log p_base over a post's tokens: rising "
           "where the fine-tuned model finds the text likelier. Hover for the token.")
posts = deltas.sort_values(["grp", "post_id"])
labels = {int(r.post_id): f"{r.post_id} [{r.grp}] "
          + ("" if pd.isna(r.title) else str(r.title))[:80]
          for r in posts.itertuples()}
post_id = st.selectbox("post", list(labels), format_func=labels.get,
                       key="ppl_post")
cum = ui.load(q.cumulative_deltas, src, pair)
ui.chart(charts.cumulative_chart, cum, highlight=post_id)

st.subheader("One post, token by token")
tokens = ui.load(q.token_deltas, src, pair, post_id)
if tokens.empty:
    st.info("This post has no tokens scored by both models.")
    st.stop()
row = deltas[deltas["post_id"] == post_id].iloc[0]
m1, m2, m3, m4 = st.columns(4)
m1.metric("tokens", f"{len(tokens):,}")
m2.metric("perplexity, base", f"{row.get('perplexity_base', float('nan')):.4g}")
m3.metric("perplexity, SFT", f"{row.get('perplexity_sft', float('nan')):.4g}",
          delta=f"{row.get('delta_perplexity', float('nan')):+.3g}",
          delta_color="inverse")
m4.metric("total delta (nats)", f"{tokens['delta'].sum():+.3f}")
ui.chart(charts.token_delta_chart, tokens)
clip = st.slider("full colour at |delta| (nats)", 0.25, 5.0, 2.0, 0.25,
                 key="ppl_clip")
st.html(charts.token_html(tokens, clip=clip))
