with

source as (

    select * from {{ source('compute', 'lora_extractions') }}

),

renamed as (

    select
        -- keys
        pair || '|' || extraction || '|' || tensor as extraction_matrix_key,
        extraction,
        pair,
        tensor,

        -- what was extracted, how
        base_model,
        sft_model,
        rule,
        rank_asked,
        min_energy,
        adapter_dir,
        dtype,

        -- the matrix
        module_path,
        layer::integer as layer,
        module,
        n_rows::integer as n_rows,
        n_cols::integer as n_cols,

        -- what the adapter keeps of dW
        rank::integer as lora_rank,
        frobenius_sq,
        retained_sq,
        retained_share,
        s_last,
        s_next,
        n_params::bigint as n_params,
        coalesce(full_rank, false) as full_rank,
        seconds,
        options,

    from source

)

select * from renamed
