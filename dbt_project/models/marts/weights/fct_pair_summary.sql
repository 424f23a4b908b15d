{#-
    One row per (pair, module type): medians and quartiles over the layers, so
    pairs of different sizes compare module by module. Over the changed cells only:
    an unchanged one (dW exactly zero: a frozen module, an adapter's untouched
    matrix) is counted in n_unchanged, not mixed into the medians as rank 0.
-#}
{%- set measures = ['relative_frobenius_change', 'relative_spectral_change',
                    'delta_stable_rank', 'delta_effective_rank', 'delta_signal_rank',
                    'delta_energy_rank_90', 'relative_signal_rank',
                    'relative_energy_rank_90', 'base_stable_rank'] -%}

with

cells as (

    select * from {{ ref('fct_layer_module_metrics') }}

),

final as (

    select
        run_id || '|' || module as summary_key,
        run_id,
        pair,
        module,
        any_value(size_billions) as size_billions,
        any_value(n_layers) as n_layers,
        count(*) as n_matrices,
        count(*) filter (where unchanged) as n_unchanged,
        {%- for m in measures %}
        quantile_cont({{ m }}, 0.25) filter (where not unchanged) as q1_{{ m }},
        median({{ m }}) filter (where not unchanged) as median_{{ m }},
        quantile_cont({{ m }}, 0.75) filter (where not unchanged) as q3_{{ m }},
        {%- endfor %}
        -- a LoRA rank for this module type: the power of two at or above the median
        -- over layers of min(signal rank, rank holding 90% of ||dW||_F^2)
        -- (NULL when every layer is unchanged)
        case when count(*) filter (where not unchanged) > 0 then
            (2 ^ ceil(log2(greatest(1, median(
                least(coalesce(delta_signal_rank, delta_energy_rank_90),
                      delta_energy_rank_90)) filter (where not unchanged))))
            )::integer
        end as suggested_lora_rank,

    from cells
    group by run_id, pair, module

)

select * from final
