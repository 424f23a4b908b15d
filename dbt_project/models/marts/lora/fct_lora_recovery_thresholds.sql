{#-
    One row per (pair, module choice, group): the smallest measured rank whose
    model recovers 90% / 99% of the SFT-minus-base log-prob delta (and removes
    90% / 99% of KL(p_sft || p_base)), next to the smallest measured rank keeping
    90% / 99% of ||dW||_F^2: "spectrally 90% at r = 16, behaviourally 60%".
    NULL where no measured rank reaches the level (score more ranks, or 'full').
-#}

with

recovery as (

    select * from {{ ref('fct_lora_recovery') }}

),

final as (

    select
        -- keys
        pair || '|' || modules || '|' || grp as threshold_key,
        pair,
        modules,
        grp,
        count(*) as n_ranks,
        max(lora_rank) filter (where not is_full) as max_rank_measured,

        -- behaviour
        min(lora_rank) filter (where delta_share >= 0.9) as delta_rank_90,
        min(lora_rank) filter (where delta_share >= 0.99) as delta_rank_99,
        min(lora_rank) filter (where kl_share >= 0.9) as kl_rank_90,
        min(lora_rank) filter (where kl_share >= 0.99) as kl_rank_99,

        -- weights
        min(lora_rank) filter (where energy_share >= 0.9) as energy_rank_90,
        min(lora_rank) filter (where energy_share >= 0.99) as energy_rank_99,

    from recovery
    group by all

)

select * from final
