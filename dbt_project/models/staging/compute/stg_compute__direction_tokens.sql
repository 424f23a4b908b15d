with

source as (

    select * from {{ source('compute', 'direction_tokens') }}

),

renamed as (

    select
        -- keys
        run_id,
        pair,
        tensor,
        kind,
        direction,
        pole,
        rank,

        -- where the matrix sits
        layer::integer as layer,
        module,

        -- the token
        token_id,
        token,
        singular_value,
        score,

    from source

)

select * from renamed
