with

source as (

    select * from {{ source('compute', 'spectra') }}

),

renamed as (

    select
        -- keys
        run_id,
        pair,
        tensor,
        role,

        -- what the matrix is
        layer::integer as layer,
        module,
        expert::integer as expert,
        part,
        coalesce(source_tensor, tensor) as source_tensor,
        coalesce(stored_transposed, false) as stored_transposed,
        n_rows::integer as n_rows,
        n_cols::integer as n_cols,
        least(n_rows, n_cols)::integer as n_short,
        greatest(n_rows, n_cols)::integer as n_long,
        storage_dtype,
        base_model,
        sft_model,

        -- measurements
        singular_values,
        len(singular_values)::integer as n_values,
        frobenius_sq,
        noise_sigma,
        n_zero::bigint as n_zero,
        n_nonfinite::bigint as n_nonfinite,

        -- how
        method,
        device,
        seconds,

    from source

)

select * from renamed
