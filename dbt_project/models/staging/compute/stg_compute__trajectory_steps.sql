with

source as (

    select * from {{ source('compute', 'trajectory_steps') }}

),

renamed as (

    select
        -- keys
        trajectory || '|' || step as trajectory_step_key,
        trajectory,
        step,
        position,

        -- the pair runs of the step
        pair,
        diff_pair,
        base_model,
        base_revision,
        sft_model,
        sft_revision,

        -- training progress
        tokens_seen,
        train_loss,
        finished_at,

    from source

)

select * from renamed
