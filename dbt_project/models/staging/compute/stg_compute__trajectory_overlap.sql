with

source as (

    select * from {{ source('compute', 'trajectory_overlap') }}

),

renamed as (

    select
        -- keys
        trajectory || '|' || step || '|' || tensor || '|' || side || '|' || k
            as overlap_key,
        trajectory,
        step,
        prev_step,
        tensor,
        side,
        k,

        -- where the matrix sits
        layer::integer as layer,
        module,

        -- measurements
        share,
        random_share,

    from source

)

select * from renamed
