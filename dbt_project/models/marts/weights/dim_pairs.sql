{#- One row per pair in the warehouse: its models, revisions and latest runs. -#}

with

runs as (

    select * from {{ ref('stg_compute__compute_runs') }}

),

spectra as (

    -- the checkpoint's matrices: not the parts cut from fused ones a second time
    select * from {{ ref('stg_compute__spectra') }} where role = 'base' and part is null

),

sizes as (

    select
        pair,
        count(*) as n_matrices,
        sum(n_rows::bigint * n_cols) as n_matrix_params,

    from spectra
    group by pair

),

pairs as (

    select
        pair,
        any_value(base_model order by kind desc) as base_model,
        any_value(sft_model order by kind desc) as sft_model,
        any_value(base_revision order by kind desc) as base_revision,
        any_value(sft_revision order by kind desc) as sft_revision,
        any_value(n_layers order by kind desc) as n_layers,
        any_value(code_version order by kind desc) as code_version,
        max(case when kind = 'spectra' then run_id end) as spectra_run_id,
        max(case when kind = 'spectra' then device end) as spectra_device,
        max(case when kind = 'spectra' then method end) as spectra_method,
        max(case when kind = 'spectra' then finished_at end) as spectra_finished_at,
        max(case when kind = 'behaviour' then run_id end) as behaviour_run_id,
        max(case when kind = 'behaviour' then device end) as behaviour_device,
        max(case when kind = 'behaviour' then finished_at end) as behaviour_finished_at,

    from runs
    group by pair

),

final as (

    select
        p.*,
        s.n_matrices,
        s.n_matrix_params,
        -- the size the pair's name states ('7B' -> 7), else its matrices' count
        coalesce(
            try_cast(regexp_extract(p.pair, '^([0-9.]+)[Bb]$', 1) as double),
            s.n_matrix_params / 1e9
        ) as size_billions,

    from pairs as p
    left join sizes as s using (pair)

)

select * from final
