{#-
  on-run-end (dbt_project.yml): publish the warehouse to its readers (ingest/snapshot.py)
  after a run or build in which nothing failed. The app and ad-hoc readers read that
  copy, so they see the state before this build or after it, never a half-built one.
  A failed model or test leaves the last good snapshot in place. Checkpoint first: the
  copy is of the file alone, which then holds every change. sftscope_publish() is the
  Python function ingest/dbt_lock.py gives dbt's connection.
-#}
{% macro publish_snapshot() %}
  {%- set failed = [] -%}
  {%- for r in results if r.status in ('error', 'fail', 'runtime error') -%}
    {%- do failed.append(r) -%}
  {%- endfor -%}
  {%- if execute and flags.WHICH in ('run', 'build', 'seed')
        and target.path != ':memory:'
        and env_var('SFTSCOPE_SNAPSHOTS', '1') != '0' and not failed -%}
    checkpoint;
    select sftscope_publish() as published
  {%- else -%}
    select 'not published' as published
  {%- endif -%}
{% endmacro %}
