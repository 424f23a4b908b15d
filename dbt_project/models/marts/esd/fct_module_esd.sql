{#-
    One row per (pair, module type): alpha of W_base, W_sft and dW over the layers
    (median and quartiles), the median change SFT - base, and how many matrices of
    each side fall in WeightWatcher's 2-6 range.
-#}

with

matrices as (

    select * from {{ ref('fct_matrix_esd') }}

),

final as (

    select
        pair || '|' || module as module_key,
        pair,
        module,
        count(distinct tensor) as n_matrices,
        {%- for r in ['base', 'sft', 'delta'] %}
        quantile_cont(alpha, 0.25) filter (where role = '{{ r }}') as {{ r }}_alpha_q1,
        median(alpha) filter (where role = '{{ r }}') as {{ r }}_alpha_median,
        quantile_cont(alpha, 0.75) filter (where role = '{{ r }}') as {{ r }}_alpha_q3,
        median(alpha_weighted) filter (where role = '{{ r }}')
            as {{ r }}_alpha_weighted_median,
        median(mp_n_spikes) filter (where role = '{{ r }}')
            as {{ r }}_mp_n_spikes_median,
        {%- endfor %}
        median(alpha_change) filter (where role = 'sft') as alpha_change_median,
        count(*) filter (where role = 'base' and alpha_range = '2 to 6')
            as base_n_alpha_2_to_6,
        count(*) filter (where role = 'sft' and alpha_range = '2 to 6')
            as sft_n_alpha_2_to_6,

    from matrices
    group by pair, module

)

select * from final
