{#- Do the two prompt groups' hidden states drift apart differently? Per hidden-state
    index: each post's mean relative L2 distance ||h_sft - h_base|| / ||h_base|| over
    its tokens, averaged over the posts of group `a` and of group `b` (default 'high'
    and 'low', the vars of fct_group_difference_intervals), their difference a - b and
    its 95% Welch interval: se = sqrt(s_a^2 / n_a + s_b^2 / n_b), Welch-Satterthwaite
    degrees of freedom, rounded down (a wider interval) to use the exact t quantiles
    of t_critical_95. -#}
{%- set group_a = var('difference_group_a', 'high') -%}
{%- set group_b = var('difference_group_b', 'low') -%}

with

drift as (

    select * from {{ ref('stg_compute__residual_drift') }}

),

posts as (

    select * from {{ ref('stg_compute__post_texts') }}

),

per_post as (

    select
        drift.run_id,
        drift.pair,
        posts.grp,
        drift.layer,
        drift.sum_rel_l2 / drift.n_tokens as post_rel_l2,
    from drift
    inner join posts
        on drift.run_id = posts.run_id
        and drift.pair = posts.pair
        and drift.post_id = posts.post_id
    where drift.n_tokens > 0 and posts.grp in ('{{ group_a }}', '{{ group_b }}')

),

per_group as (

    select
        run_id,
        pair,
        layer,
        grp,
        count(*) as n_posts,
        avg(post_rel_l2) as mean_rel_l2,
        var_samp(post_rel_l2) as var_rel_l2,
    from per_post
    group by all

),

paired as (

    select
        a.run_id,
        a.pair,
        a.layer,
        a.n_posts as n_posts_a,
        b.n_posts as n_posts_b,
        a.mean_rel_l2 as estimate_a,
        b.mean_rel_l2 as estimate_b,
        a.var_rel_l2 / a.n_posts as va,
        b.var_rel_l2 / b.n_posts as vb,
    from per_group as a
    inner join per_group as b
        on a.run_id = b.run_id
        and a.pair = b.pair
        and a.layer = b.layer
    where a.grp = '{{ group_a }}' and b.grp = '{{ group_b }}'

),

welch as (

    select
        *,
        sqrt(va + vb) as se,
        floor((va + vb) ^ 2 / nullif(
            va ^ 2 / nullif(n_posts_a - 1, 0) + vb ^ 2 / nullif(n_posts_b - 1, 0), 0))
            as df,
    from paired

),

final as (

    select
        -- keys
        pair || '|' || layer as pair_layer_key,
        run_id,
        pair,
        layer,
        '{{ group_a }}' as group_a,
        '{{ group_b }}' as group_b,

        -- each group's mean over posts of the post's mean relative L2 distance
        n_posts_a,
        n_posts_b,
        estimate_a,
        estimate_b,

        -- a - b with its 95% Welch interval (NULL with fewer than 2 posts a side)
        estimate_a - estimate_b as difference,
        se,
        df,
        estimate_a - estimate_b - {{ t_critical_95('df') }} * se as ci95_low,
        estimate_a - estimate_b + {{ t_critical_95('df') }} * se as ci95_high,

    from welch

)

select * from final
