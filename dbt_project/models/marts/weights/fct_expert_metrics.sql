{#-
    One row per (pair, layer, module, expert): each expert's dW in a mixture-of-
    experts model (the heatmap's cell holds their median and max).
-#}

with

matrices as (

    select * from {{ ref('int_delta_matrices') }}

),

pairs as (

    select * from {{ ref('dim_pairs') }}

),

final as (

    select
        m.run_id || '|' || m.layer || '|' || m.module || '|' || m.expert as expert_key,
        m.run_id,
        m.pair,
        m.layer,
        m.module,
        m.expert,
        m.tensor,
        m.source_tensor,
        p.n_layers,
        m.layer::double / p.n_layers as depth,
        m.n_rows,
        m.n_cols,
        m.relative_frobenius_change,
        m.relative_spectral_change,
        m.delta_stable_rank,
        m.delta_effective_rank,
        m.delta_energy_rank_90,
        m.delta_signal_rank,
        m.relative_signal_rank,
        m.base_stable_rank,
        m.delta_s_max,
        m.zero_fraction,
        -- the expert's place among its cell's experts (1 = largest change)
        rank() over (partition by m.pair, m.layer, m.module
                     order by m.relative_frobenius_change desc) as change_rank,

    from matrices as m
    left join pairs as p on p.pair = m.pair
    where m.expert is not null and m.layer is not null

)

select * from final
