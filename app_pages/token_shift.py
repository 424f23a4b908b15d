"""Token shift: where the two models' next-token distributions differ, per group."""

import streamlit as st

from app_lib import charts, floor, shift, ui
from app_lib import queries as q
from app_lib import takeaways as tk

st.title("Token shift")
st.caption("Beyond perplexity: at every token of a post, how far apart the base and "
           "the fine-tuned model's next-token distributions are (KL), and whether "
           "SFT's most likely token is one the base also ranks first (unshifted), 2nd "
           "or 3rd (marginal) or lower (shifted), as in URIAL / AlignTDS (Lin et al. "
           "2023, who find 5-8% shifted tokens in 7B chat models).")
src = ui.warehouse()
ui.legend_note()
if not ui.need(src, shift.TABLE, run=shift.FILL, what="No token shift yet"):
    st.stop()

pair = ui.pick_pair(ui.load(q.behaviour_pairs, src))

types = ui.load(shift.compared_types, src, pair) or ["all"]
post_type = st.radio("posts compared", types, horizontal=True, key="shift_post_type",
                     format_func=lambda t: shift.POST_TYPES.get(t, t),
                     help="Like with like by default: each group's answers against "
                          "the other's (the fine-tune's loss was on answers); 'any "
                          "post type' is the seed's comparison, where the groups can "
                          "differ by type as much as by reception.")
groups = ui.load(shift.group_intervals, src, pair, post_type)
diffs = ui.load(shift.differences, src, pair, post_type)
ui.takeaway(tk.token_shift(groups, diffs))
seed = ui.load(floor.behaviour, src, pair, post_type)
if len(seed):
    ui.takeaway(tk.seed_floor_kl(seed))
    with st.expander("the seed floor: KL to a second fine-tune with another seed"):
        st.dataframe(floor.kl_table(seed), hide_index=True, width="stretch")
        st.caption("KL(p_B || p_SFT), B the same base fine-tuned again by the same "
                   "recipe with another seed, next to KL(p_SFT || p_base), "
                   "token-weighted over the posts both runs scored.")

st.subheader("Do the two post groups differ in how much SFT moved them?")
metric = st.selectbox("measure", list(shift.MEASURES), key="shift_metric",
                      format_func=shift.MEASURES.get)
st.markdown(shift.headline(diffs, metric))
ui.chart(shift.difference_chart, shift.forest(groups, diffs, metric),
         shift.MEASURES[metric])
with st.expander("every measure: groups and their difference"):
    st.dataframe(diffs, hide_index=True, width="stretch")
    st.caption("Group values pool the posts (lm-eval-harness: bits per byte = "
               "-sum log-likelihood / ln 2 / bytes); intervals are percentile "
               "bootstrap intervals over posts (both models' numbers of a post "
               "resampled together), seeded.")

st.subheader("Shift classes by token position")
st.caption(f"Posts compared: {shift.POST_TYPES.get(post_type, post_type)}.")
cls = ui.load(shift.classes, src, pair, post_type)
st.altair_chart(shift.classes_chart(cls), width="content")

st.subheader("On the SFT's own answers (URIAL's protocol)")
st.caption("The classes above are teacher-forced on human posts. URIAL defines them "
           "on the fine-tuned model's own greedy answers, a different quantity "
           "(`python -m compute.urial`; docs/behaviour.md): kept apart here.")
gen = (ui.load(shift.generated, src, pair)
       if ui.load(q.row_count, src, "marts.fct_generated_token_shift") else None)
if gen is not None and not gen.empty:
    st.markdown(shift.generated_headline(gen))
    st.altair_chart(shift.classes_chart(shift.generated_classes(gen)),
                    width="content")
    with st.expander("generated: every bucket"):
        st.dataframe(gen, hide_index=True, width="stretch")
else:
    st.code(f"python -m compute.urial --pair {pair} --generate 50\n"
            "cd dbt_project && dbt build", language="bash")

st.subheader("The tokens SFT shifts most")
c1, c2, c3 = st.columns(3)
grps = sorted(cls["grp"].dropna().unique())
grp = c1.selectbox("posts", grps, key="shift_grp",
                   format_func=lambda g: charts.GROUP_LABEL.get(g, g))
direction = c2.radio("direction", ["promoted", "demoted"], horizontal=True,
                     key="shift_direction",
                     help="promoted: SFT's top-1 where the base ranks it below 3rd; "
                          "demoted: the base's top-1 where SFT ranks it below 3rd")
by = c3.radio("ranked by", ["count", "kl_mass"], horizontal=True, key="shift_by",
              format_func=lambda b: "KL mass" if b == "kl_mass" else b)
top = ui.load(shift.top_tokens, src, pair, grp, direction, by, 20, post_type)
if top.empty:
    st.info("No shifted tokens in this group and direction.")
else:
    ui.chart(shift.top_tokens_chart, top, by)

st.subheader("One post, coloured by per-token KL")
posts = ui.load(shift.posts, src, pair, post_type)
labels = {int(r.post_id): f"{r.post_id} [{r.grp}] mean KL {r.mean_kl_sft_base:.3g}, "
          f"{r.share_shifted:.0%} shifted" for r in posts.itertuples()}
post_id = st.selectbox("post (largest mean KL first)", list(labels),
                       format_func=labels.get, key="shift_post")
tokens = ui.load(shift.post_tokens, src, pair, post_id)
m1, m2, m3 = st.columns(3)
m1.metric("tokens", f"{len(tokens):,}")
m2.metric("mean KL(p_sft || p_base)", f"{tokens['kl_sft_base'].mean():.4g}")
m3.metric("shifted", f"{(tokens['shift_class'] == 'shifted').mean():.1%}")
clip = st.slider("full colour at KL (nats)", 0.05, 5.0, 1.0, 0.05, key="shift_clip")
st.html(shift.kl_html(tokens, clip=clip))
