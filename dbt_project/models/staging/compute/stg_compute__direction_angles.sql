with

source as (

    select * from {{ source('compute', 'direction_angles') }}

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

        -- cosines of the principal angles, descending
        cosines,

    from source

)

select * from renamed
