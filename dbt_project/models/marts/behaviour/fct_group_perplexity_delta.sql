with

post_delta as (

    -- every post at its post type and under 'all' (the seed's groups: any type)
    {{ all_levels(typed(ref('fct_post_perplexity_delta')), ['post_type']) }}

),

per_group as (

    select
        run_id,
        pair,
        grp,
        post_type,
        count(*) as n_posts,
        avg(perplexity_base) as mean_perplexity_base,
        avg(perplexity_sft) as mean_perplexity_sft,
        avg(delta_perplexity) as mean_delta_perplexity,
        median(delta_perplexity) as median_delta_perplexity,
        stddev_samp(delta_perplexity) as sd_delta_perplexity,
        avg(delta_mean_logprob) as mean_delta_mean_logprob,
        stddev_samp(delta_mean_logprob) as sd_delta_mean_logprob,
        avg(delta_bits_per_byte) as mean_delta_bits_per_byte,
        avg(case when delta_perplexity < 0 then 1.0 else 0.0 end)
            as share_sft_lower_perplexity,

    from post_delta
    group by all

),

final as (

    select
        -- keys
        run_id || '|' || coalesce(grp, '') || '|' || post_type as group_key,
        run_id,
        pair,
        grp,
        post_type,
        n_posts,

        -- per-model means
        mean_perplexity_base,
        mean_perplexity_sft,

        -- paired SFT - base perplexity delta
        mean_delta_perplexity,
        median_delta_perplexity,
        sd_delta_perplexity,
        {{ t_critical_95('n_posts - 1') }} as t_critical,
        mean_delta_perplexity - {{ t_critical_95('n_posts - 1') }}
            * sd_delta_perplexity / sqrt(n_posts) as ci95_low_delta_perplexity,
        mean_delta_perplexity + {{ t_critical_95('n_posts - 1') }}
            * sd_delta_perplexity / sqrt(n_posts) as ci95_high_delta_perplexity,

        -- paired SFT - base delta of the mean log-prob (nats per token)
        mean_delta_mean_logprob,
        mean_delta_mean_logprob - {{ t_critical_95('n_posts - 1') }}
            * sd_delta_mean_logprob / sqrt(n_posts) as ci95_low_delta_mean_logprob,
        mean_delta_mean_logprob + {{ t_critical_95('n_posts - 1') }}
            * sd_delta_mean_logprob / sqrt(n_posts) as ci95_high_delta_mean_logprob,

        -- other views of the same change
        mean_delta_bits_per_byte,
        share_sft_lower_perplexity,

    from per_group

)

select * from final
