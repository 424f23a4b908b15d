with

logprobs as (

    select * from {{ ref('stg_compute__token_logprobs') }}

),

posts as (

    select * from {{ ref('stg_compute__post_texts') }}

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
        cumulated.pair || '|' || cumulated.post_id || '|' || cumulated.position
            as token_key,
        cumulated.run_id,
        cumulated.pair,
        cumulated.post_id,
        cumulated.position,

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

)

select * from final
