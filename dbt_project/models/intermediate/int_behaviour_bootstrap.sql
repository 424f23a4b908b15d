{#- Paired bootstrap over posts, per (run, prompt group, post type; 'all' = any
    type, the seed's groups): resample b = 1 .. B draws n_posts posts with
    replacement from the cell's n_posts; draw i of resample b is post number
    hash('seed|pair|grp|b|i') mod n_posts + 1 for post type 'all' (the draws of
    the groups before post types) and hash('seed|pair|grp|type|b|i') for one type
    (posts numbered by post_id), so the resamples are fixed by the seed and
    independent between cells.
    (The hash of one string, not DuckDB's variadic hash(seed, pair, grp, b, i): that
    one's draws are not independent enough; its bootstrap standard errors came out
    3% too large on average, against 0.1% for this one.)
    Both models' numbers of a post travel together (paired). Every measure of
    behaviour_ratios() is recomputed on each resample as sum(numerator) /
    sum(denominator). -#}
{%- set seed = var('bootstrap_seed', 6197) | int -%}
{%- set resamples = var('bootstrap_resamples', 1000) | int -%}
{%- set ratios = behaviour_ratios() -%}
{#- A table built per run (macros/incremental_by_run.sql); every run again when the
    seed or the number of resamples differs from the table's. -#}
{{ config(materialized='incremental', incremental_strategy='delete+insert',
          unique_key='run_id', on_schema_change='fail',
          pre_hook="{{ delete_replaced_runs('behaviour', 'stg_compute__token_shift') }}") }}
{%- set runs = incremental_runs('behaviour', 'stg_compute__token_shift', is_incremental()) -%}
{%- if runs is not none and run_query(
        'select count(*) from ' ~ this ~ ' where seed <> ' ~ seed
        ~ ' or n_resamples <> ' ~ resamples).columns[0].values()[0] > 0 -%}
  {%- set runs = none -%}
{%- endif -%}
{%- set sums = ['nll_bits_base', 'nll_bits_sft', 'n_bytes', 'n_tokens',
                'sum_kl_sft_base', 'sum_kl_base_sft', 'n_unshifted', 'n_marginal',
                'n_shifted'] -%}

with

run_posts as (

    select * from {{ ref('fct_post_token_shift') }}
    where grp is not null and {{ run_filter(runs) }}

),

typed_posts as (

    {{ all_levels(typed('run_posts'), ['post_type']) }}

),

posts as (

    select
        run_id,
        run_finished_at,
        pair,
        grp,
        post_type,
        {%- for c in sums %}
        {{ c }}::double as {{ c }},
        {%- endfor %}
        row_number() over (partition by run_id, pair, grp, post_type order by post_id)
            as k,
        count(*) over (partition by run_id, pair, grp, post_type) as n_posts,
    from typed_posts

),

groups as (

    select distinct run_id, pair, grp, post_type, n_posts from posts

),

resamples as (

    select run_id, pair, grp, post_type, n_posts,
        unnest(range(1, {{ resamples }} + 1)) as b
    from groups

),

draw_numbers as (

    select run_id, pair, grp, post_type, n_posts, b,
        unnest(range(1, n_posts + 1)) as i
    from resamples

),

draws as (

    select
        run_id,
        pair,
        grp,
        post_type,
        b,
        (hash(case when post_type = 'all'
                   then concat_ws('|', {{ seed }}, pair, grp, b, i)
                   else concat_ws('|', {{ seed }}, pair, grp, post_type, b, i) end)
            % n_posts + 1)::bigint as k,
    from draw_numbers

),

sums as (

    select
        draws.run_id,
        draws.pair,
        draws.grp,
        draws.post_type,
        draws.b,
        any_value(posts.run_finished_at) as run_finished_at,
        {%- for c in sums %}
        sum(posts.{{ c }}) as {{ c }},
        {%- endfor %}
    from draws
    inner join posts
        on draws.run_id = posts.run_id
        and draws.pair = posts.pair
        and draws.grp = posts.grp
        and draws.post_type = posts.post_type
        and draws.k = posts.k
    group by all

),

final as (

    {%- for name, num, den in ratios %}
    select
        run_id,
        run_finished_at,
        pair,
        grp,
        post_type,
        b,
        '{{ name }}' as metric,
        ({{ num }}) / nullif({{ den }}, 0) as value,
        {{ seed }} as seed,
        {{ resamples }} as n_resamples,
    from sums
    {% if not loop.last %}union all{% endif %}
    {%- endfor %}

)

select * from final
