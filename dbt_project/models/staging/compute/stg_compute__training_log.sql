with

source as (

    select * from {{ source('compute', 'training_log') }}

),

renamed as (

    select
        -- keys
        pair || '|' || role || '|' || step as training_step_key,
        pair,
        role,
        step::integer as step,

        -- progress
        epoch,
        tokens_seen,
        lr,
        seconds,

        -- losses (mean negative log-likelihood per token, nats)
        train_loss,
        heldout_post_loss,
        heldout_answer_loss,

    from source

)

select * from renamed
