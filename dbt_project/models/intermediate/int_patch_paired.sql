{#-
    One row per (patch run, grouping, patched model, post, prompt group, post type;
    'all' = every group / type): a weight-patching model's sums over the post's
    tokens beside the base's as loaded (python -m compute.patch; docs/patch.md),
    what marts.fct_patch_effects and intermediate.int_patch_bootstrap reduce.
    k = KL(p_sft || p_model), big_k = KL(p_sft || p_base); d = lp_model - lp_base,
    big_d = lp_sft - lp_base; m = KL(p_base || p_model), big_m = KL(p_base || p_sft)
    (NULL before raw step 17).
-#}

with

posts as (

    select * from {{ ref('stg_compute__patch_posts') }}

),

base_rows as (

    select
        run_id,
        patch_by,
        post_id,
        sum_logprob as sum_logprob_base,
        sum_logprob_sft,
        sum_kl_sft_model as sum_kl_sft_base,
        sum_kl_model_sft as sum_kl_base_sft,
    from posts
    where mode = 'base'

),

paired as (

    select
        p.run_id,
        p.pair,
        p.patch_by,
        p.patch_group,
        p.group_index,
        p.layer,
        p.module,
        p.mode,
        p.patch_rank,
        p.is_full,
        p.post_id,
        coalesce(p.grp, '(none)') as grp,
        coalesce(p.post_type, '(unknown)') as post_type,
        p.n_tokens,
        p.sum_logprob - b.sum_logprob_base as d,
        b.sum_logprob_sft - b.sum_logprob_base as big_d,
        p.sum_kl_sft_model as k,
        b.sum_kl_sft_base as big_k,
        p.sum_kl_base_model as m,
        b.sum_kl_base_sft as big_m,
    from posts as p
    inner join base_rows as b using (run_id, patch_by, post_id)
    where p.mode <> 'base'

),

both_levels as (

    {{ all_levels('paired', ['grp', 'post_type']) }}

)

select * from both_levels
