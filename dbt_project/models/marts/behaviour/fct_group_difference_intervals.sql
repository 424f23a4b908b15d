{#- The seed's question: do the two prompt groups differ in how much SFT moved
    them? Group `a` minus group `b` (default 'high' - 'low') of every measure of
    fct_group_behaviour_intervals, within one post type (answers against answers,
    questions against questions) or over every type ('all': the seed's groups,
    where the groups can differ by type as much as by reception), with a
    percentile interval from the groups' independent bootstrap resamples paired by
    resample number. -#}
{%- set group_a = var('difference_group_a', 'high') -%}
{%- set group_b = var('difference_group_b', 'low') -%}

with

groups as (

    select * from {{ ref('fct_group_behaviour_intervals') }}

),

resamples as (

    select * from {{ ref('int_behaviour_bootstrap') }}

),

differences as (

    select
        a.run_id,
        a.pair,
        a.post_type,
        a.metric,
        any_value(a.seed) as seed,
        count(*) as n_resamples,
        quantile_cont(a.value - b.value, 0.025) as ci95_low,
        quantile_cont(a.value - b.value, 0.975) as ci95_high,
        stddev_samp(a.value - b.value) as se_bootstrap,
        avg(case when a.value > b.value then 1.0 else 0.0 end) as share_resamples_above,
    from resamples as a
    inner join resamples as b
        on a.run_id = b.run_id
        and a.pair = b.pair
        and a.metric = b.metric
        and a.post_type = b.post_type
        and a.b = b.b
    where a.grp = '{{ group_a }}' and b.grp = '{{ group_b }}'
    group by all

),

final as (

    select
        -- keys
        ga.run_id || '|' || ga.post_type || '|' || ga.metric as difference_key,
        ga.run_id,
        ga.pair,
        ga.post_type,
        ga.metric,

        -- the two groups
        ga.grp as group_a,
        gb.grp as group_b,
        ga.n_posts as n_posts_a,
        gb.n_posts as n_posts_b,
        ga.estimate as estimate_a,
        gb.estimate as estimate_b,

        -- a - b with its percentile bootstrap interval
        ga.estimate - gb.estimate as difference,
        differences.ci95_low,
        differences.ci95_high,
        differences.se_bootstrap,
        differences.share_resamples_above,
        differences.ci95_low > 0 or differences.ci95_high < 0 as excludes_zero,
        differences.n_resamples,
        differences.seed,

    from groups as ga
    inner join groups as gb
        on ga.run_id = gb.run_id
        and ga.pair = gb.pair
        and ga.metric = gb.metric
        and ga.post_type = gb.post_type
    inner join differences
        on ga.run_id = differences.run_id
        and ga.pair = differences.pair
        and ga.metric = differences.metric
        and ga.post_type = differences.post_type
    where ga.grp = '{{ group_a }}' and gb.grp = '{{ group_b }}'

)

select * from final
