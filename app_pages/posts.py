"""Posts: search and read the prompts, with their scores, groups and perplexities."""

import streamlit as st

from app_lib import queries as q
from app_lib import takeaways as tk
from app_lib import ui

st.title("Posts")
st.caption("The Stack Exchange posts both models read: well-received (high score) "
           "and badly-received (low score), with each model's perplexity once "
           "scored. Select a row to read the post.")
src = ui.warehouse()
ui.legend_note()
if not ui.need(src, "marts.prompts", run=q.FILL_PROMPTS, what="No prompts yet"):
    st.stop()

c1, c2 = st.columns([3, 1])
search = c1.text_input("search title and text", key="posts_search",
                       placeholder="e.g. entropy")
groups = c2.multiselect("group", ["high", "low"], default=[], key="posts_groups",
                        placeholder="both")
found = ui.load(q.prompts, src, search.strip(), tuple(groups))

scored = ui.load(q.behaviour_pairs, src) if ui.load(q.row_count, src,
                                                    "raw.token_logprobs") else []
if scored:
    pair = ui.pick_pair(scored)
    deltas = ui.load(q.post_deltas, src, pair)
    cols = [c for c in ("post_id", "perplexity_base", "perplexity_sft",
                        "delta_perplexity", "delta_bits_per_byte") if c in deltas]
    found = found.merge(deltas[cols], on="post_id", how="left")
else:
    st.caption("Perplexities appear here once a pair has scored the prompts "
               "(`python -m compute.run ...`, then `dbt build`).")

ui.takeaway(tk.posts(found))
st.caption(f"{len(found)} post(s)" + (" (first 500)" if len(found) >= 500 else ""))
event = st.dataframe(
    found, hide_index=True, width="stretch", height=360, key="posts_table",
    on_select="rerun", selection_mode="single-row",
    column_order=[c for c in ("post_id", "grp", "score", "title", "perplexity_base",
                              "perplexity_sft", "delta_perplexity",
                              "delta_bits_per_byte", "n_chars", "post_type", "site")
                  if c in found],
    column_config={
        "title": st.column_config.TextColumn(width="large"),
        "perplexity_base": st.column_config.NumberColumn("ppl base", format="%.4g"),
        "perplexity_sft": st.column_config.NumberColumn("ppl SFT", format="%.4g"),
        "delta_perplexity": st.column_config.NumberColumn("SFT - base",
                                                          format="%+.3g"),
        "delta_bits_per_byte": st.column_config.NumberColumn("d bits/byte",
                                                             format="%+.3g"),
    })
if found.empty:
    st.stop()
rows = event.selection.rows if event is not None and hasattr(event, "selection") else []
post_id = int(found.iloc[rows[0] if rows else 0]["post_id"])
post = ui.load(q.prompt_text, src, post_id).iloc[0]
st.subheader(post["title"] if isinstance(post["title"], str) and post["title"]
             else f"Answer {post_id}")
st.caption(f"post {post_id} · {post.get('site', '')} · {post.get('post_type', '')} "
           f"· score {post['score']} · group {post['grp']} · {post['n_chars']:,} "
           "characters")
with st.container(border=True, height=420):
    st.text(post["text"])
