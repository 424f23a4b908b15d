with

source as (

    select * from {{ source('compute', 'intruders') }}

),

renamed as (

    select
        -- keys
        run_id,
        pair,
        tensor,
        j,

        -- where the matrix sits
        layer::integer as layer,
        module,

        -- measurements
        singular_value,
        max_cos,
        null_max_cos,
        null_dim::integer as null_dim,

    from source

)

select * from renamed
