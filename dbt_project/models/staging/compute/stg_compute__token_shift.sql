with

source as (

    select * from {{ source('compute', 'token_shift') }}

),

renamed as (

    select
        -- keys
        run_id,
        pair,
        post_id::bigint as post_id,
        position::integer as position,

        -- how far apart the two next-token distributions are (nats)
        kl_sft_base::double as kl_sft_base,
        kl_base_sft::double as kl_base_sft,
        entropy_base::double as entropy_base,
        entropy_sft::double as entropy_sft,

        -- each model's top-1 and its rank under the other model
        rank_sft_top_in_base::integer as rank_sft_top_in_base,
        rank_base_top_in_sft::integer as rank_base_top_in_sft,
        top_id_base::integer as top_id_base,
        top_id_sft::integer as top_id_sft,
        top_text_base,
        top_text_sft,
        coalesce(nonfinite, false) as nonfinite,

    from source

)

select * from renamed
