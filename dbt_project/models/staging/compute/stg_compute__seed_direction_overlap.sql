with

source as (

    select * from {{ source('compute', 'seed_direction_overlap') }}

),

renamed as (

    select
        -- keys
        run_id,
        other_run_id,
        pair,
        other_pair,
        tensor,
        side,
        k::integer as k,

        -- where the matrix sits
        layer::integer as layer,
        module,

        -- measurements
        share,
        dim::integer as dim,
        span_dim::integer as span_dim,
        cosines,

    from source

)

select * from renamed
