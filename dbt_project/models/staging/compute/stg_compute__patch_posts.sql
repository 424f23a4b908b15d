with

source as (

    select * from {{ source('compute', 'patch_posts') }}

),

renamed as (

    select
        -- keys
        run_id || '|' || patch_by || '|' || patch_group || '|' || mode || '|'
            || coalesce(rank::varchar, 'full') || '|' || post_id as patch_post_key,
        run_id,
        pair,
        patch_by,
        patch_group,
        group_index::integer as group_index,
        layer::integer as layer,
        module,
        mode,
        rank::integer as patch_rank,
        is_full,
        post_id::bigint as post_id,

        -- where the post comes from
        site,
        grp,
        post_type,

        -- sums over the post's tokens (nats)
        n_tokens::integer as n_tokens,
        sum_logprob,
        sum_logprob_sft,
        sum_kl_sft_model,
        sum_kl_model_sft,
        sum_kl_base_model,
        sum_kl_model_base,

    from source

)

select * from renamed
