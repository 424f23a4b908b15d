{%- set ratios = behaviour_ratios() -%}

with

run_posts as (

    select * from {{ ref('fct_post_token_shift') }}
    where grp is not null

),

posts as (

    -- every post at its post type and under 'all' (the seed's groups: any type)
    {{ all_levels(typed('run_posts'), ['post_type']) }}

),

estimates as (

    {%- for name, num, den in ratios %}
    select
        run_id,
        pair,
        grp,
        post_type,
        '{{ name }}' as metric,
        count(*) as n_posts,
        sum({{ num }}) / nullif(sum({{ den }}), 0) as estimate,
    from posts
    group by all
    {% if not loop.last %}union all{% endif %}
    {%- endfor %}

),

resampled as (

    select
        run_id,
        pair,
        grp,
        post_type,
        metric,
        any_value(seed) as seed,
        count(*) as n_resamples,
        quantile_cont(value, 0.025) as ci95_low,
        quantile_cont(value, 0.975) as ci95_high,
        stddev_samp(value) as se_bootstrap,
    from {{ ref('int_behaviour_bootstrap') }}
    group by all

),

final as (

    select
        -- keys
        estimates.run_id || '|' || estimates.grp || '|' || estimates.post_type || '|'
            || estimates.metric as group_metric_key,
        estimates.run_id,
        estimates.pair,
        estimates.grp,
        estimates.post_type,
        estimates.metric,

        -- the group's pooled value and its percentile bootstrap interval
        estimates.n_posts,
        estimates.estimate,
        resampled.ci95_low,
        resampled.ci95_high,
        resampled.se_bootstrap,
        resampled.n_resamples,
        resampled.seed,

    from estimates
    inner join resampled
        on estimates.run_id = resampled.run_id
        and estimates.pair = resampled.pair
        and estimates.grp = resampled.grp
        and estimates.post_type = resampled.post_type
        and estimates.metric = resampled.metric

)

select * from final
