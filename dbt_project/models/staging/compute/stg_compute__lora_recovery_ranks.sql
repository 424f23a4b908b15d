with

source as (

    select * from {{ source('compute', 'lora_recovery_ranks') }}

),

renamed as (

    select
        -- keys
        run_id || '|' || pair || '|' || modules || '|' || rank || '|' || vectors
            as recovery_rank_key,
        run_id,
        pair,
        modules,
        rank::integer as lora_rank,
        is_full,

        -- the models
        base_model,
        sft_model,
        vectors,
        n_vectors::integer as n_vectors,
        behaviour_run_id,
        window_tokens::integer as window_tokens,

        -- what the truncation keeps
        n_matrices::integer as n_matrices,
        n_params::bigint as n_params,
        retained_sq,
        frobenius_sq,
        case when frobenius_sq > 0 then retained_sq / frobenius_sq end as energy_share,

        -- where and how long
        device,
        dtype,
        seconds,

    from source

)

select * from renamed
