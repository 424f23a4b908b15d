{#- Built per run (macros/incremental_by_run.sql). -#}
{{ config(materialized='incremental', incremental_strategy='delete+insert',
          unique_key='run_id', on_schema_change='fail',
          pre_hook="{{ delete_replaced_runs('behaviour', 'stg_compute__token_shift') }}") }}
{%- set runs = incremental_runs('behaviour', 'stg_compute__token_shift', is_incremental()) -%}
with

shift as (

    select * from {{ ref('stg_compute__token_shift') }} where {{ run_filter(runs) }}

),

tokens as (

    select * from {{ ref('fct_token_logprob_delta') }} where {{ run_filter(runs) }}

),

final as (

    select
        -- keys
        tokens.token_key,
        shift.run_id,
        shift.pair,
        shift.post_id,
        shift.position,
        tokens.run_finished_at,

        -- the post and the observed token
        tokens.site,
        tokens.grp,
        {{ position_bucket('shift.position') }} as position_bucket,
        tokens.token_id,
        tokens.token_text,
        tokens.logprob_base,
        tokens.logprob_sft,
        tokens.delta_logprob,

        -- the two next-token distributions
        shift.kl_sft_base,
        shift.kl_base_sft,
        shift.entropy_base,
        shift.entropy_sft,
        shift.entropy_sft - shift.entropy_base as delta_entropy,

        -- top-1 tokens and token shift
        shift.top_id_base,
        shift.top_text_base,
        shift.top_id_sft,
        shift.top_text_sft,
        shift.rank_sft_top_in_base,
        shift.rank_base_top_in_sft,
        {{ shift_class('shift.rank_sft_top_in_base') }} as shift_class,
        {{ shift_class('shift.rank_base_top_in_sft') }} as reverse_shift_class,

    from shift
    inner join tokens
        on shift.run_id = tokens.run_id
        and shift.pair = tokens.pair
        and shift.post_id = tokens.post_id
        and shift.position = tokens.position

)

select * from final
