with

source as (

    select * from {{ source('compute', 'patch_models') }}

),

renamed as (

    select
        -- keys
        run_id || '|' || patch_by || '|' || patch_group || '|' || mode || '|'
            || coalesce(rank::varchar, 'full') as patch_model_key,
        run_id,
        pair,
        patch_by,
        patch_group,
        group_index::integer as group_index,
        layer::integer as layer,
        module,
        mode,
        rank::integer as patch_rank,
        is_full,

        -- what the model changes
        n_tensors::integer as n_tensors,
        n_params::bigint as n_params,
        frobenius_sq,
        retained_sq,

        -- how it was scored
        n_posts::integer as n_posts,
        device,
        dtype,
        window_tokens::integer as window_tokens,
        merge_seconds,
        seconds,

    from source

)

select * from renamed
