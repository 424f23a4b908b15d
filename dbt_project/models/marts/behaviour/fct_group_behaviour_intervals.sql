{%- set ratios = behaviour_ratios() -%}

with

posts as (

    select * from {{ ref('fct_post_token_shift') }}
    where grp is not null

),

estimates as (

    {%- for name, num, den in ratios %}
    select
        run_id,
        pair,
        grp,
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
        estimates.pair || '|' || estimates.grp || '|' || estimates.metric
            as group_metric_key,
        estimates.run_id,
        estimates.pair,
        estimates.grp,
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
        and estimates.metric = resampled.metric

)

select * from final
