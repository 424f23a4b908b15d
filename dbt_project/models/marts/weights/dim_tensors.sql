{#- One row per (run, weight matrix): its name, shape, module, layer and kind. -#}

with

spectra as (

    select * from {{ ref('stg_compute__spectra') }} where role = 'base'

),

final as (

    select
        run_id || '|' || tensor as tensor_key,
        run_id,
        pair,
        tensor,
        layer,
        module,
        expert,
        part,
        source_tensor,
        stored_transposed,
        case
            when module in ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'qkv_proj',
                            'c_attn', 'query_key_value', 'Wqkv', 'W_pack', 'qkv')
                then 'attention'
            when module in ('gate_proj', 'up_proj', 'down_proj', 'gate_up_proj', 'w13')
                then 'mlp'
            when module like 'shared_expert%' then 'mlp'
            when module = 'router' then 'router'
            when module in ('embed_tokens', 'embed_positions') then 'embedding'
            when module = 'lm_head' then 'head'
            else 'other'
        end as kind,
        n_rows,
        n_cols,
        n_rows::bigint * n_cols as n_params,
        storage_dtype,

    from spectra

)

select * from final
