with

source as (

    select * from {{ source('compute', 'generated_token_shift') }}

),

renamed as (

    select
        -- keys
        run_id,
        pair,
        mode,
        post_id,
        position::integer as position,

        -- the SFT's answer
        n_generated::integer as n_generated,
        token_id,

        -- the two models at that token
        logprob_base,
        logprob_sft,
        kl_sft_base,
        kl_base_sft,
        entropy_base,
        entropy_sft,
        rank_in_base,
        shift_class,
        position_bucket,

    from source

)

select * from renamed
