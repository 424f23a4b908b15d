{#-
    One row per (pair, layer, module) inside the blocks, for the pairs run with
    --traps: the correlation traps of W_base and W_sft side by side on the heatmap's
    grid (a mixture-of-experts cell sums its experts' traps and takes the median
    of the distances), and depth for the Layers page.
-#}
{%- set roles = ['base', 'sft'] -%}

with

matrices as (

    select * from {{ ref('fct_matrix_traps') }} where layer is not null

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
        sum(n_traps) filter (where role = '{{ r }}') as {{ r }}_n_traps,
        count(*) filter (where role = '{{ r }}' and has_traps)
            as {{ r }}_n_matrices_with_traps,
        median(rand_distance) filter (where role = '{{ r }}') as {{ r }}_rand_distance,
        median(ww_softrank) filter (where role = '{{ r }}') as {{ r }}_ww_softrank,
        {%- endfor %}

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
        c.n_matrices,
        {%- for r in roles %}
        c.{{ r }}_n_traps,
        c.{{ r }}_n_matrices_with_traps,
        c.{{ r }}_rand_distance,
        c.{{ r }}_ww_softrank,
        {%- endfor %}
        c.sft_n_traps - c.base_n_traps as n_traps_change,

    from cells as c
    left join pairs as p on p.pair = c.pair

)

select * from final
