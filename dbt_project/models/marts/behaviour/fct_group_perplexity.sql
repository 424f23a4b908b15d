with

post_perplexity as (

    -- every post at its post type and under 'all' (the seed's groups: any type)
    {{ all_levels(typed(ref('fct_post_perplexity')), ['post_type']) }}

),

per_group as (

    select
        run_id,
        pair,
        grp,
        post_type,
        role,
        count(*) as n_posts,
        count(*) filter (where in_training) as n_in_training,
        sum(n_tokens) as n_tokens,
        sum(n_bytes) as n_bytes,
        avg(perplexity) as mean_perplexity,
        median(perplexity) as median_perplexity,
        stddev_samp(perplexity) as sd_perplexity,
        exp(-sum(sum_logprob) / sum(n_tokens)) as pooled_perplexity,
        avg(bits_per_byte) as mean_bits_per_byte,
        -sum(sum_logprob) / ln(2) / sum(n_bytes) as pooled_bits_per_byte,

    from post_perplexity
    group by all

),

final as (

    select
        -- keys
        run_id || '|' || coalesce(grp, '') || '|' || post_type || '|' || role
            as group_model_key,
        run_id,
        pair,
        grp,
        post_type,
        role,

        -- sizes
        n_posts,
        -- posts of threads the pair was trained on (in-sample; 0 where none or
        -- where the pair's training data is not known: see fct_post_perplexity)
        n_in_training,
        n_tokens,
        n_bytes,

        -- perplexity over the group's posts
        mean_perplexity,
        median_perplexity,
        sd_perplexity,
        sd_perplexity / sqrt(n_posts) as se_perplexity,
        {{ t_critical_95('n_posts - 1') }} as t_critical,
        mean_perplexity - {{ t_critical_95('n_posts - 1') }} * sd_perplexity
            / sqrt(n_posts) as ci95_low_perplexity,
        mean_perplexity + {{ t_critical_95('n_posts - 1') }} * sd_perplexity
            / sqrt(n_posts) as ci95_high_perplexity,
        pooled_perplexity,

        -- bits per byte
        mean_bits_per_byte,
        pooled_bits_per_byte,

    from per_group

)

select * from final
