{#-
  Marts incremental per compute run (docs/scale.md, "Many pairs in one warehouse").

  A per-run mart holds, on every row, `run_finished_at`: the `finished_at` of its
  run's row of one kind in raw.compute_runs (NULL for rows that have none). A load
  writes that row and the run's raw rows in one transaction, so (run_id,
  run_finished_at) names one load of one run. An incremental build then
    - deletes the rows whose (run_id, run_finished_at) is no longer in the raw tables
      (the run was deleted or loaded again: pre-hook `delete_replaced_runs`), and
    - builds only the runs whose (run_id, finished_at) the mart does not hold yet
      (new or loaded again: `incremental_runs` lists them, `run_filter` selects them),
  inserted by dbt's delete+insert on run_id. `dbt build --full-refresh` rebuilds every
  run and gives the same rows.

  A model of one kind uses them as:

    {{ config(materialized='incremental', incremental_strategy='delete+insert',
              unique_key='run_id', on_schema_change='fail',
              pre_hook="{{ delete_replaced_runs('behaviour', 'stg_compute__post_texts') }}") }}
    {%- set runs = incremental_runs('behaviour', 'stg_compute__post_texts',
                                    is_incremental()) -%}
    ... where {{ run_filter(runs) }} ...
    ... left join ({{ run_loads('behaviour') }}) as loads on loads.run_id = x.run_id

  `runs_from` is the staging model whose run ids are the runs the mart covers (the
  raw table the mart's rows come from).
-#}

{#- One row per run: when its `kind` half finished (the load the rows come from). -#}
{% macro run_loads(kind) -%}
    select run_id, max(finished_at) as run_finished_at
    from {{ ref('stg_compute__compute_runs') }}
    where kind = '{{ kind }}'
    group by run_id
{%- endmacro %}

{#- The runs in `runs_from` with their loads' run_finished_at. -#}
{% macro current_run_loads(kind, runs_from) -%}
    select runs.run_id, loads.run_finished_at
    from (select distinct run_id from {{ ref(runs_from) }}) as runs
    left join ({{ run_loads(kind) }}) as loads on loads.run_id = runs.run_id
{%- endmacro %}

{#- In an incremental build: the run ids to build now (new, or loaded again since the
    mart's rows of them were built); None in a full build (every run). The model
    passes its is_incremental() (a unit test's override of it applies there). -#}
{% macro incremental_runs(kind, runs_from, incremental) -%}
  {#- what the queries below read, made known to dbt when it parses the model (not
      when it runs it: a unit test mocks only its model's own inputs) -#}
  {%- if not execute -%}
    {%- set parsed = [ref(runs_from), ref('stg_compute__compute_runs')] -%}
  {%- endif -%}
  {%- if execute and incremental -%}
    {%- set built = adapter.get_columns_in_relation(this) | map(attribute='name')
                    | list -%}
    {%- if 'run_finished_at' not in built -%}
      {{ exceptions.raise_compiler_error(this ~ " was built by an earlier release, "
         ~ "as a plain table: rebuild the marts once with `dbt build --full-refresh` "
         ~ "(docs/scale.md)") }}
    {%- endif -%}
    {%- set sql -%}
      select run_id from (
          {{ current_run_loads(kind, runs_from) }}
          except
          select distinct run_id, run_finished_at from {{ this }}
      )
      order by run_id
    {%- endset -%}
    {{ return(run_query(sql).columns[0].values() | list) }}
  {%- endif -%}
  {{ return(none) }}
{%- endmacro %}

{#- A predicate on `column`: true in a full build, else column in (the runs). -#}
{% macro run_filter(runs, column='run_id') -%}
  {%- if runs is not defined -%}
    {{ exceptions.raise_compiler_error("run_filter: no runs (set them with "
                                       "incremental_runs first)") }}
  {%- elif runs is none -%}
    true
  {%- elif runs | length == 0 -%}
    false
  {%- else -%}
    {{ column }} in (
      {%- for r in runs -%}
        '{{ r | replace("'", "''") }}'{{ ", " if not loop.last }}
      {%- endfor -%})
  {%- endif -%}
{%- endmacro %}

{#- Pre-hook: delete the rows of runs no longer loaded as they were built (deleted
    from the raw tables, or replaced by a later load of the same run id). -#}
{% macro delete_replaced_runs(kind, runs_from) -%}
  {%- if is_incremental() -%}
    delete from {{ this }} as built
    where not exists (
        select 1
        from ({{ current_run_loads(kind, runs_from) }}) as now
        where now.run_id = built.run_id
            and now.run_finished_at is not distinct from built.run_finished_at
    )
  {%- endif -%}
{%- endmacro %}
