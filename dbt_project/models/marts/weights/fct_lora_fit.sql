{#-
    One row per (run, dW, LoRA rank r): the share of ||dW||_F^2 that the best
    rank-r approximation (the top r singular values) captures.
-#}

with

stats as (

    select * from {{ ref('int_spectrum_stats') }} where role = 'delta'

),

long as (

    unpivot stats
    on columns('^energy_share_top_')
    into name rank_name value energy_share

),

final as (

    select
        run_id || '|' || tensor || '|' || lora_rank as fit_key,
        run_id,
        pair,
        tensor,
        layer,
        module,
        lora_rank,
        energy_share,
        lora_rank >= n_short as is_full_rank,

    from (
        select *, replace(rank_name, 'energy_share_top_', '')::integer as lora_rank
        from long
    )

)

select * from final
