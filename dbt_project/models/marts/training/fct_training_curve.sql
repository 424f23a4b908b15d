with

training_log as (

    select * from {{ ref('stg_compute__training_log') }}

),

base_steps as (

    select pair, max(step) as n_base_steps
    from training_log
    where role = 'base'
    group by all

),

curve as (

    select
        training_log.training_step_key,
        training_log.pair,
        training_log.role,
        training_log.step,
        -- one axis for both phases: SFT's steps continue after pretraining's
        training_log.step
            + case when training_log.role = 'sft'
                   then coalesce(base_steps.n_base_steps, 0) else 0 end
            as global_step,
        training_log.epoch,
        training_log.tokens_seen,
        training_log.lr,
        training_log.seconds,
        training_log.train_loss,
        training_log.heldout_post_loss,
        training_log.heldout_answer_loss,
        exp(training_log.train_loss) as train_perplexity,
        exp(training_log.heldout_post_loss) as heldout_post_perplexity,
        exp(training_log.heldout_answer_loss) as heldout_answer_perplexity,

    from training_log
    left join base_steps using (pair)

)

select * from curve
