with

source as (

    select * from {{ source('compute', 'direction_overlap') }}

),

renamed as (

    select
        -- keys
        run_id,
        pair,
        tensor,
        side,
        r,

        -- where the matrix sits
        layer::integer as layer,
        module,

        -- measurements
        share,
        random_share,
        span_dim::integer as span_dim,

    from source

)

select * from renamed
