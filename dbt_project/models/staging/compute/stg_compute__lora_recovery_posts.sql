with

source as (

    select * from {{ source('compute', 'lora_recovery_posts') }}

),

renamed as (

    select
        -- keys
        run_id || '|' || pair || '|' || modules || '|' || rank || '|'
            || coalesce(vectors, 'sft') || '|' || post_id as recovery_post_key,
        run_id,
        pair,
        modules,
        rank::integer as lora_rank,
        -- the model's 1-D tensors: 'base' (matrices at rank r) | 'sft' (plus norms);
        -- rows of release 8 and before took the SFT's
        coalesce(vectors, 'sft') as vectors,
        post_id::bigint as post_id,

        -- where the post comes from
        site,
        grp,
        post_type,

        -- sums over the post's tokens (nats)
        n_tokens::integer as n_tokens,
        sum_logprob,
        sum_logprob_sft,
        sum_kl_sft_rank,
        sum_kl_rank_sft,

    from source

)

select * from renamed
