-- One row per (series, step): what the checkpoint does to the predictions on the
-- prompt posts, next to the training loss of the same step. Token-weighted over every
-- scored token of every post: KL both ways (nats per token), the shares of tokens
-- whose SFT top-1 the base ranks 1 / 2-3 / > 3 (unshifted, marginal, shifted), and
-- the change of bits per byte. A step without a behaviour run has NULLs there. The
-- training loss: trainer_state.json's (raw.trajectory_steps), else the series' own
-- raw.training_log rows (pair = the series' name, role 'sft') at that step.
with

steps as (

    select * from {{ ref('stg_compute__trajectory_steps') }}

),

posts as (

    select * from {{ ref('fct_post_token_shift') }}

),

training_log as (

    select pair, step, train_loss, tokens_seen,
    from {{ ref('stg_compute__training_log') }}
    where role = 'sft'

),

per_step as (

    select
        pair,
        count(*) as n_posts,
        sum(n_unshifted + n_marginal + n_shifted) as n_tokens,
        sum(sum_kl_sft_base) / nullif(sum(n_unshifted + n_marginal + n_shifted), 0)
            as mean_kl_sft_base,
        sum(sum_kl_base_sft) / nullif(sum(n_unshifted + n_marginal + n_shifted), 0)
            as mean_kl_base_sft,
        sum(n_unshifted) / nullif(sum(n_unshifted + n_marginal + n_shifted), 0)
            as share_unshifted,
        sum(n_marginal) / nullif(sum(n_unshifted + n_marginal + n_shifted), 0)
            as share_marginal,
        sum(n_shifted) / nullif(sum(n_unshifted + n_marginal + n_shifted), 0)
            as share_shifted,
        (sum(nll_bits_sft) - sum(nll_bits_base)) / nullif(sum(n_bytes), 0)
            as delta_bits_per_byte,
    from posts
    group by pair

),

final as (

    select
        steps.trajectory_step_key,
        steps.trajectory,
        steps.step,
        steps.position,
        coalesce(steps.tokens_seen, log.tokens_seen) as tokens_seen,
        coalesce(steps.train_loss, log.train_loss) as train_loss,
        steps.pair,
        b.n_posts,
        b.n_tokens,
        b.mean_kl_sft_base,
        b.mean_kl_base_sft,
        b.share_unshifted,
        b.share_marginal,
        b.share_shifted,
        b.delta_bits_per_byte,
    from steps
    left join per_step as b on b.pair = steps.pair
    left join training_log as log
        on log.pair = steps.trajectory and log.step = steps.step

)

select * from final
