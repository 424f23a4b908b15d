{#-
    One row per (pair, layer, module) inside the blocks: the heatmap's grid. A dense
    cell is one dW; a mixture-of-experts cell aggregates its experts' dWs: each
    measure is the median over the experts, with the max of the main ones beside it
    (the experts one by one: fct_expert_metrics).
-#}
{%- set measures = ['relative_frobenius_change', 'relative_spectral_change',
                    'delta_stable_rank', 'delta_effective_rank', 'delta_numerical_rank',
                    'delta_energy_rank_90', 'delta_signal_rank', 'delta_gd_unknown_rank',
                    'relative_stable_rank', 'relative_effective_rank',
                    'relative_numerical_rank', 'relative_energy_rank_90',
                    'relative_signal_rank', 'base_stable_rank', 'base_effective_rank',
                    'base_s_max', 'delta_s_max', 'zero_fraction'] -%}
{%- set maxed = ['relative_frobenius_change', 'relative_spectral_change',
                 'delta_signal_rank', 'delta_energy_rank_90'] -%}

with

matrices as (

    select * from {{ ref('int_delta_matrices') }}

),

pairs as (

    select * from {{ ref('dim_pairs') }}

),

cells as (

    select
        pair,
        layer,
        module,
        any_value(run_id) as run_id,
        count(*) as n_matrices,
        count(expert) as n_experts,
        -- dW exactly zero in every matrix of the cell (a frozen module, an adapter's
        -- untouched matrix): its ranks are 0 or NULL, and summaries count it apart;
        -- an expert cell's medians are over its changed experts
        bool_and(unchanged) as unchanged,
        count(*) filter (where unchanged) as n_unchanged,
        -- the tensor; for experts the name with the expert index as '*'
        case
            when count(*) = 1 then any_value(tensor)
            else regexp_replace(regexp_replace(min(tensor), '\.experts\.[0-9]+\.',
                                               '.experts.*.'), '\[[0-9]+\]', '[*]')
        end as tensor,
        any_value(n_rows) as n_rows,
        any_value(n_cols) as n_cols,
        {%- for m in measures %}
        case
            when count(*) = 1 then any_value({{ m }})
            else median({{ m }}) filter (where not unchanged)
        end as {{ m }},
        {%- endfor %}
        {%- for m in maxed %}
        max({{ m }}) as max_{{ m }},
        {%- endfor %}

    from matrices
    where layer is not null
    group by pair, layer, module

),

final as (

    select
        c.run_id || '|' || c.layer || '|' || c.module as cell_key,
        c.run_id,
        c.pair,
        c.layer,
        c.module,
        p.n_layers,
        c.layer::double / p.n_layers as depth,
        p.size_billions,
        c.tensor,
        c.n_rows,
        c.n_cols,
        c.n_matrices,
        c.n_experts,
        c.unchanged,
        c.n_unchanged,

        -- how much dW changes W (experts: median; max_*: the largest expert)
        c.relative_frobenius_change,
        c.relative_spectral_change,

        -- rank of dW
        c.delta_stable_rank,
        c.delta_effective_rank,
        c.delta_numerical_rank,
        c.delta_energy_rank_90,
        c.delta_signal_rank,
        c.delta_gd_unknown_rank,

        -- rank of dW relative to W_base
        c.relative_stable_rank,
        c.relative_effective_rank,
        c.relative_numerical_rank,
        c.relative_energy_rank_90,
        c.relative_signal_rank,

        -- W_base itself
        c.base_stable_rank,
        c.base_effective_rank,
        c.base_s_max,
        c.delta_s_max,
        c.zero_fraction,

        -- the largest over the experts (= the value for a dense cell)
        {%- for m in maxed %}
        c.max_{{ m }},
        {%- endfor %}

    from cells as c
    left join pairs as p on p.pair = c.pair

)

select * from final
