{#-
    One row per (recovery run, module choice, LoRA rank r, 1-D tensors, group, post
    type; 'all' = every group / type): how much of the SFT-minus-base behaviour the
    model W_base + rank-r truncation of dW recovers (python -m compute.lora_recovery),
    with the base's 1-D tensors ('matrices at rank r', vectors = 'base') or the
    SFT's ('plus norms', vectors = 'sft'), next to the share of ||dW||_F^2 the
    truncation keeps (the energy curve of the same matrices). The reference lp_0 is
    the base exactly as loaded: rank 0 with the base's 1-D tensors.

    Per post i: d_i = sum over tokens of (lp_r - lp_0), D_i = sum of (lp_sft - lp_0)
    (lp_0: the base, rank 0). delta_share = sum d_i / sum D_i, a ratio estimator
    over posts; its 95% interval is delta_share +- t(n - 1) se with
    se = sqrt(sum (d_i - delta_share D_i)^2 / (n (n - 1))) / mean(D_i) (the
    linearised variance of a ratio of sums; Cochran 1977, 6.9). The same for KL:
    kl_share = 1 - sum_i KL_i(p_sft || p_r) / sum_i KL_i(p_sft || p_0), the share
    of the base's KL from the SFT that rank r removes.
-#}

with

posts as (

    select * from {{ ref('stg_compute__lora_recovery_posts') }}

),

ranks as (

    select * from {{ ref('stg_compute__lora_recovery_ranks') }}

),

base_rows as (

    select
        run_id,
        post_id,
        sum_logprob as sum_logprob_base,
        sum_logprob_sft,
        sum_kl_sft_rank as sum_kl_sft_base,
    from posts
    where lora_rank = 0 and vectors = 'base'

),

paired as (

    select
        p.run_id,
        p.pair,
        p.modules,
        p.lora_rank,
        p.vectors,
        p.post_id,
        coalesce(p.grp, '(none)') as grp,
        coalesce(p.post_type, '(unknown)') as post_type,
        p.n_tokens,
        p.sum_logprob - b.sum_logprob_base as d,
        b.sum_logprob_sft - b.sum_logprob_base as big_d,
        p.sum_kl_sft_rank as k,
        b.sum_kl_sft_base as big_k,
    from posts as p
    inner join base_rows as b using (run_id, post_id)

),

both_levels as (

    {{ all_levels('paired', ['grp', 'post_type']) }}

),

ratios as (

    select
        run_id,
        pair,
        modules,
        lora_rank,
        vectors,
        grp,
        post_type,
        count(*) as n_posts,
        sum(n_tokens) as n_tokens,
        sum(d) as sum_delta_rank,
        sum(big_d) as sum_delta_sft,
        case when sum(big_d) <> 0 then sum(d) / sum(big_d) end as delta_share,
        avg(big_d) as mean_delta_sft,
        sum(k) as sum_kl_sft_rank,
        sum(big_k) as sum_kl_sft_base,
        case when sum(big_k) > 0 then sum(k) / sum(big_k) end as kl_ratio,
        avg(big_k) as mean_kl_sft_base,
    from both_levels
    group by all

),

residuals as (

    select
        r.run_id,
        r.lora_rank,
        r.vectors,
        r.grp,
        r.post_type,
        sum((b.d - r.delta_share * b.big_d) ^ 2) as ss_delta,
        sum((b.k - r.kl_ratio * b.big_k) ^ 2) as ss_kl,
    from ratios as r
    inner join both_levels as b using (run_id, lora_rank, vectors, grp, post_type)
    group by all

),

final as (

    select
        -- keys
        r.run_id || '|' || r.lora_rank || '|' || r.vectors || '|' || r.grp || '|'
            || r.post_type as recovery_key,
        r.run_id,
        r.pair,
        r.modules,
        r.lora_rank,
        k.is_full,
        r.vectors,
        case when r.vectors = 'sft' then 'plus norms' else 'matrices at rank r' end
            as step,
        r.grp,
        r.post_type,
        r.n_posts,
        r.n_tokens,

        -- the weights: what the truncation keeps
        k.n_matrices,
        k.n_params,
        k.energy_share,

        -- the behaviour: share of the SFT-minus-base log-prob delta recovered
        r.sum_delta_rank,
        r.sum_delta_sft,
        r.delta_share,
        -- a share above 1: the model moves the log-probs of these posts further in
        -- the SFT's direction than the SFT itself (the parts of dW do not add up
        -- linearly in log-prob; the rest of dW pulls back)
        case
            when r.delta_share > 1 then 'above 1: this model moves the log-probs '
                || 'further than the SFT does (the rest of dW pulls them back)'
            when r.delta_share < 0 then 'below 0: this model moves the log-probs '
                || 'against the SFT''s change'
        end as delta_share_note,
        {{ t_critical_95('r.n_posts - 1') }} as t_critical,
        r.delta_share - {{ t_critical_95('r.n_posts - 1') }}
            * {{ ratio_se('s.ss_delta', 'r.n_posts', 'r.mean_delta_sft') }}
            as ci95_low_delta_share,
        r.delta_share + {{ t_critical_95('r.n_posts - 1') }}
            * {{ ratio_se('s.ss_delta', 'r.n_posts', 'r.mean_delta_sft') }}
            as ci95_high_delta_share,

        -- the behaviour: share of KL(p_sft || p_base) removed
        r.sum_kl_sft_rank / nullif(r.n_tokens, 0) as mean_kl_sft_rank,
        r.sum_kl_sft_base / nullif(r.n_tokens, 0) as mean_kl_sft_base,
        1 - r.kl_ratio as kl_share,
        1 - r.kl_ratio - {{ t_critical_95('r.n_posts - 1') }}
            * {{ ratio_se('s.ss_kl', 'r.n_posts', 'r.mean_kl_sft_base') }}
            as ci95_low_kl_share,
        1 - r.kl_ratio + {{ t_critical_95('r.n_posts - 1') }}
            * {{ ratio_se('s.ss_kl', 'r.n_posts', 'r.mean_kl_sft_base') }}
            as ci95_high_kl_share,

        -- the run
        k.behaviour_run_id,
        k.window_tokens,

    from ratios as r
    inner join residuals as s using (run_id, lora_rank, vectors, grp, post_type)
    inner join ranks as k using (run_id, lora_rank, vectors)

)

select * from final
