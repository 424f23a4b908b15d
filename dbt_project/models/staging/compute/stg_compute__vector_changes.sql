with

source as (

    select * from {{ source('compute', 'vector_changes') }}

),

renamed as (

    select
        -- keys
        run_id,
        pair,
        tensor,

        -- what the tensor is
        layer::integer as layer,
        module,
        numel,
        storage_dtype,

        -- measurements
        base_norm,
        sft_norm,
        delta_norm,
        delta_norm / nullif(base_norm, 0) as relative_change,
        n_zero,
        n_nonfinite,

    from source

)

select * from renamed
