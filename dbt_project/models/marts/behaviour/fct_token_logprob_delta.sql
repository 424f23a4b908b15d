{#- Built per run (macros/incremental_by_run.sql). -#}
{{ config(materialized='incremental', incremental_strategy='delete+insert',
          unique_key='run_id', on_schema_change='fail',
          pre_hook="{{ delete_replaced_runs('behaviour', 'stg_compute__token_logprobs') }}") }}
{%- set runs = incremental_runs('behaviour', 'stg_compute__token_logprobs', is_incremental()) -%}
with

logprobs as (

    -- a post with a token whose logits were not finite is left out (whole, so that
    -- every post here has all its tokens); fct_nonfinite_tokens counts them
    select logprobs.*
    from {{ ref('stg_compute__token_logprobs') }} as logprobs
    anti join {{ ref('int_nonfinite_posts') }} as bad
        on logprobs.run_id = bad.run_id and logprobs.post_id = bad.post_id
    where {{ run_filter(runs, 'logprobs.run_id') }}

),

posts as (

    select * from {{ ref('stg_compute__post_texts') }} where {{ run_filter(runs) }}

),

loads as (

    {{ run_loads('behaviour') }}

),

paired as (

    select
        base.run_id,
        base.pair,
        base.post_id,
        base.position,
        base.token_id,
        base.token_text,
        base.logprob as logprob_base,
        sft.logprob as logprob_sft,
        sft.logprob - base.logprob as delta_logprob,

    from logprobs as base
    inner join logprobs as sft
        on base.run_id = sft.run_id
        and base.pair = sft.pair
        and base.post_id = sft.post_id
        and base.position = sft.position
    where base.role = 'base' and sft.role = 'sft'

),

cumulated as (

    select
        *,
        sum(delta_logprob) over (
            partition by run_id, pair, post_id
            order by position
            rows between unbounded preceding and current row
        ) as cumulative_delta_logprob,

    from paired

),

final as (

    select
        -- keys
        cumulated.run_id || '|' || cumulated.post_id || '|' || cumulated.position
            as token_key,
        cumulated.run_id,
        cumulated.pair,
        cumulated.post_id,
        cumulated.position,
        loads.run_finished_at,

        -- the post and the token
        posts.site,
        posts.grp,
        posts.n_tokens,
        cumulated.token_id,
        cumulated.token_text,

        -- log-probs and their SFT - base delta along the post
        cumulated.logprob_base,
        cumulated.logprob_sft,
        cumulated.delta_logprob,
        cumulated.cumulative_delta_logprob,
        cumulated.cumulative_delta_logprob / (cumulated.position + 1)
            as running_mean_delta_logprob,

    from cumulated
    inner join posts
        on cumulated.run_id = posts.run_id
        and cumulated.pair = posts.pair
        and cumulated.post_id = posts.post_id
    left join loads on loads.run_id = cumulated.run_id

)

select * from final
