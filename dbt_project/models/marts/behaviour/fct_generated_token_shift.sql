{#-
    One row per (pair, mode, position bucket, plus 'all'): URIAL's token shift on the
    SFT's own greedy answers (python -m compute.urial), never mixed with the
    teacher-forced fct_token_shift. Shares pooled over tokens, and the shifted share
    with a 95% t interval over answers (the mean of per-answer shares), since tokens
    of one answer are not independent.
-#}

with

tokens as (

    select * from {{ ref('stg_compute__generated_token_shift') }}

),

both_levels as (

    select pair, mode, post_id, position_bucket, shift_class, kl_sft_base,
           kl_base_sft
    from tokens
    union all
    select pair, mode, post_id, 'all' as position_bucket, shift_class, kl_sft_base,
           kl_base_sft
    from tokens

),

per_answer as (

    select
        pair, mode, position_bucket, post_id,
        avg((shift_class = 'shifted')::double) as shifted_share,

    from both_levels
    group by pair, mode, position_bucket, post_id

),

answers as (

    select
        pair, mode, position_bucket,
        count(*) as n_answers,
        avg(shifted_share) as mean_answer_shifted_share,
        stddev_samp(shifted_share) as sd_answer_shifted_share,

    from per_answer
    group by pair, mode, position_bucket

),

pooled as (

    select
        pair, mode, position_bucket,
        count(*) as n_tokens,
        avg((shift_class = 'unshifted')::double) as unshifted_share,
        avg((shift_class = 'marginal')::double) as marginal_share,
        avg((shift_class = 'shifted')::double) as shifted_share,
        avg(kl_sft_base) as mean_kl_sft_base,
        avg(kl_base_sft) as mean_kl_base_sft,

    from both_levels
    group by pair, mode, position_bucket

),

final as (

    select
        p.pair || '|' || p.mode || '|' || p.position_bucket as shift_key,
        p.pair,
        p.mode,
        p.position_bucket,
        p.n_tokens,
        a.n_answers,
        p.unshifted_share,
        p.marginal_share,
        p.shifted_share,
        p.mean_kl_sft_base,
        p.mean_kl_base_sft,
        a.mean_answer_shifted_share,
        case when a.n_answers > 1 then a.mean_answer_shifted_share
            - {{ t_critical_95('a.n_answers - 1') }} * a.sd_answer_shifted_share
              / sqrt(a.n_answers) end as shifted_share_lo95,
        case when a.n_answers > 1 then a.mean_answer_shifted_share
            + {{ t_critical_95('a.n_answers - 1') }} * a.sd_answer_shifted_share
              / sqrt(a.n_answers) end as shifted_share_hi95,

    from pooled as p
    inner join answers as a using (pair, mode, position_bucket)

)

select * from final
