{#-
    One row per (seed floor, module type; 'all' = every matrix): do two fine-tunes
    with different seeds change the same matrices by the same amount? The Pearson
    correlation over the matrices of the relative change of A and of B, and the
    median of ||W_B - W_A|| / ||W_A|| next to the median change of A (the floor).
-#}

with

matrices as (

    select * from {{ ref('fct_seed_floor_matrices') }}

),

levels as (

    {{ all_levels('matrices', ['module']) }}

),

final as (

    select
        -- keys
        run_id || '|' || other_run_id || '|' || between_run_id || '|' || module
            as floor_module_key,
        run_id,
        other_run_id,
        between_run_id,
        pair,
        other_pair,
        between_pair,
        module,
        count(*) as n_matrices,

        -- the change of each fine-tune and between the two
        median(relative_change_a) as median_relative_change_a,
        median(relative_change_b) as median_relative_change_b,
        median(relative_change_between) as median_relative_change_between,
        median(floor_ratio) as median_floor_ratio,
        corr(relative_change_a, relative_change_b) as corr_relative_change,

    from levels
    group by all

)

select * from final
