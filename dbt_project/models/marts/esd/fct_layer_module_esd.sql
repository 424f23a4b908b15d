{#-
    One row per (pair, layer, module) inside the blocks: the ESD measures of W_base,
    W_sft and dW side by side, on the heatmap's grid (fct_layer_module_metrics). A
    mixture-of-experts cell holds the median over its experts.
-#}
{%- set measures = ['alpha', 'alpha_weighted', 'log_spectral_norm', 'log_norm',
                    'mp_n_spikes', 'mp_softrank'] -%}
{%- set roles = ['base', 'sft', 'delta'] -%}

with

matrices as (

    select * from {{ ref('fct_matrix_esd') }} where layer is not null

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
        count(distinct tensor) as n_matrices,
        {%- for r in roles %}
        {%- for m in measures %}
        median({{ m }}) filter (where role = '{{ r }}') as {{ r }}_{{ m }},
        {%- endfor %}
        {%- endfor %}
        median(alpha_change) filter (where role = 'sft') as alpha_change,

    from matrices
    group by pair, layer, module

),

final as (

    select
        c.pair || '|' || c.layer || '|' || c.module as cell_key,
        c.run_id,
        c.pair,
        c.layer,
        c.module,
        p.n_layers,
        c.layer::double / p.n_layers as depth,
        p.size_billions,
        c.n_matrices,
        {%- for r in roles %}
        {%- for m in measures %}
        c.{{ r }}_{{ m }},
        {%- endfor %}
        {%- endfor %}
        c.alpha_change,

    from cells as c
    left join pairs as p on p.pair = c.pair

)

select * from final
