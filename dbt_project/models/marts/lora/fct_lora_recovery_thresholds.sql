{#-
    One row per (recovery run, module choice, 1-D tensors, group, post type): the
    smallest measured rank whose model recovers 90% / 99% of the SFT-minus-base
    log-prob delta (and removes 90% / 99% of KL(p_sft || p_base)), next to the
    smallest measured rank keeping 90% / 99% of ||dW||_F^2: "spectrally 90% at
    r = 16, behaviourally 60%". Only ranks below 'full' count: NULL where no measured
    rank below full reaches the level ('full' is dW whole, not a rank found).
-#}

with

recovery as (

    select * from {{ ref('fct_lora_recovery') }}

),

final as (

    select
        -- keys
        run_id || '|' || vectors || '|' || grp || '|' || post_type as threshold_key,
        run_id,
        pair,
        modules,
        vectors,
        any_value(step) as step,
        grp,
        post_type,
        count(*) as n_ranks,
        max(lora_rank) filter (where not is_full) as max_rank_measured,

        -- behaviour
        min(lora_rank) filter (where not is_full and delta_share >= 0.9)
            as delta_rank_90,
        min(lora_rank) filter (where not is_full and delta_share >= 0.99)
            as delta_rank_99,
        min(lora_rank) filter (where not is_full and kl_share >= 0.9) as kl_rank_90,
        min(lora_rank) filter (where not is_full and kl_share >= 0.99) as kl_rank_99,

        -- weights
        min(lora_rank) filter (where not is_full and energy_share >= 0.9)
            as energy_rank_90,
        min(lora_rank) filter (where not is_full and energy_share >= 0.99)
            as energy_rank_99,

    from recovery
    group by all

)

select * from final
