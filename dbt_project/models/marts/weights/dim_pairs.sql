{#- One row per pair in the warehouse: its models, revisions and latest runs. -#}

with

runs as (

    select * from {{ ref('stg_compute__compute_runs') }}

),

spectra as (

    -- the checkpoint's matrices: not the parts cut from fused ones a second time
    select * from {{ ref('stg_compute__spectra') }} where role = 'base' and part is null

),

-- each side's storage dtypes (a pair may mix them: docs/finetunes.md)
dtypes as (

    select
        pair,
        string_agg(distinct storage_dtype, ',' order by storage_dtype)
            filter (where role = 'base') as base_storage_dtypes,
        string_agg(distinct storage_dtype, ',' order by storage_dtype)
            filter (where role = 'sft') as sft_storage_dtypes,

    from {{ ref('stg_compute__spectra') }}
    group by pair

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
        -- what the fine-tuned side is (compute.run's options: docs/finetunes.md)
        max(case when kind = 'spectra' then options ->> '$.adapter.peft_type' end)
            as adapter_type,
        max(case when kind = 'spectra' then (options ->> '$.adapter.r')::integer end)
            as adapter_r,
        max(case when kind = 'spectra'
            then (options ->> '$.adapter.lora_alpha')::double end) as adapter_lora_alpha,
        max(case when kind = 'spectra'
            then (options ->> '$.vocabulary.sft_vocab_size')::integer
                - (options ->> '$.vocabulary.base_vocab_size')::integer end)
            as n_added_tokens,
        max(case when kind = 'spectra'
            then options ->> '$.vocabulary.tied_head_compared_with' end)
            as tied_head_compared_with,
        -- a run of a series (compute.run --trajectory marks its runs)
        max(options ->> '$.trajectory.series') as run_trajectory,
        max(options ->> '$.trajectory.role') as run_trajectory_role,

    from runs
    group by pair

),

-- the series' own record of its runs (raw.trajectory_steps, once it is loaded)
series_runs as (

    select pair, trajectory, step, 'step' as trajectory_role
    from {{ ref('stg_compute__trajectory_steps') }}
    union all
    select diff_pair, trajectory, step, 'difference'
    from {{ ref('stg_compute__trajectory_steps') }}
    where diff_pair is not null

),

final as (

    select
        p.* exclude (run_trajectory, run_trajectory_role),
        -- the series the pair is a run of (NULL: a pair of its own); the pair
        -- pickers list only pairs of their own, the Over training page the series
        coalesce(t.trajectory, p.run_trajectory) as trajectory,
        coalesce(t.trajectory_role, p.run_trajectory_role) as trajectory_role,
        t.step as trajectory_step,
        d.base_storage_dtypes,
        d.sft_storage_dtypes,
        s.n_matrices,
        s.n_matrix_params,
        -- the size the pair's name states ('7B' -> 7), else its matrices' count
        coalesce(
            try_cast(regexp_extract(p.pair, '^([0-9.]+)[Bb]$', 1) as double),
            s.n_matrix_params / 1e9
        ) as size_billions,

    from pairs as p
    left join sizes as s using (pair)
    left join dtypes as d using (pair)
    left join series_runs as t using (pair)

)

select * from final
