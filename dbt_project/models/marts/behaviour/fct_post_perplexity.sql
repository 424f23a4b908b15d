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

training as (

    select * from {{ ref('int_post_training') }} where {{ run_filter(runs) }}

),

per_post as (

    select
        run_id,
        pair,
        post_id,
        role,
        count(*) as n_scored,
        sum(logprob) as sum_logprob,

    from logprobs
    group by all

),

final as (

    select
        -- keys
        per_post.run_id || '|' || per_post.post_id || '|' || per_post.role
            as post_model_key,
        per_post.run_id,
        per_post.pair,
        per_post.post_id,
        per_post.role,
        loads.run_finished_at,

        -- the post
        posts.site,
        posts.grp,
        posts.post_type,
        training.in_training,
        posts.n_tokens,
        per_post.n_scored,
        posts.n_bytes,
        posts.n_words,

        -- metrics
        per_post.sum_logprob,
        per_post.sum_logprob / per_post.n_scored as mean_logprob,
        exp(-per_post.sum_logprob / per_post.n_scored) as perplexity,
        -per_post.sum_logprob / per_post.n_scored / ln(2) as bits_per_token,
        -per_post.sum_logprob / ln(2) / nullif(posts.n_bytes, 0) as bits_per_byte,
        -per_post.sum_logprob / ln(2) / nullif(posts.n_words, 0) as bits_per_word,

    from per_post
    inner join posts
        on per_post.run_id = posts.run_id
        and per_post.pair = posts.pair
        and per_post.post_id = posts.post_id
    left join training
        on training.run_id = per_post.run_id
        and training.pair = per_post.pair
        and training.post_id = per_post.post_id
    left join loads on loads.run_id = per_post.run_id

)

select * from final
