{#-
    One row per (module type, measure), one column per pair: the medians over
    layers of fct_pair_summary, so 0.5B ... 72B read side by side.
-#}

with

summary as (

    select
        module,
        median_relative_frobenius_change,
        median_relative_spectral_change,
        median_delta_stable_rank,
        median_delta_signal_rank::double as median_delta_signal_rank,
        median_relative_signal_rank,
        suggested_lora_rank::double as suggested_lora_rank,
        pair,
    from {{ ref('fct_pair_summary') }}

),

long as (

    unpivot summary
    on columns(* exclude (module, pair))
    into name measure value value

)

pivot long on pair using first(value) group by module, measure order by module, measure
