with

source as (

    select * from {{ source('compute', 'direction_signs') }}

),

renamed as (

    select
        -- keys
        run_id,
        pair,
        tensor,
        direction::integer as direction,

        -- where the matrix sits
        layer::integer as layer,
        module,

        -- the effect: mean over scored tokens of v . x, its sign
        mean_projection,
        sign::integer as effect_sign,
        n_tokens::bigint as n_tokens,

    from source

)

select * from renamed
