with

source as (

    select * from {{ source('compute', 'token_logprobs') }}

),

renamed as (

    select
        -- keys
        run_id,
        pair,
        role,
        post_id::bigint as post_id,
        position::integer as position,

        -- the token
        token_id::integer as token_id,
        token_text,

        -- measurement
        logprob::double as logprob,
        coalesce(nonfinite, false) as nonfinite,

    from source

)

select * from renamed
