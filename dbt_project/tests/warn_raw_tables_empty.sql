-- A warning, not a failure: one row per raw table (every source) that holds no rows,
-- so `dbt build` says which inputs were never loaded (or were emptied) and what
-- loads them. `dbt show --select warn_raw_tables_empty` lists them.
{{ config(severity='warn') }}

{%- set loaders = {
    'compute': 'python -m compute.run (or python -m ingest.compute_load OUT/<pair>)',
    'stackexchange': 'python -m ingest.stackexchange PATH',
} %}

with counts as (
{%- for node in graph.sources.values() | sort(attribute='unique_id') %}
    {%- if not loop.first %}
    union all
    {%- endif %}
    select
        '{{ node.source_name }}' as source_name,
        '{{ node.schema }}.{{ node.name }}' as raw_table,
        '{{ loaders.get(node.source_name, "its loader") }}' as loaded_by,
        count(*) as n_rows
    from {{ source(node.source_name, node.name) }}
{%- endfor %}
)

select source_name, raw_table, loaded_by
from counts
where n_rows = 0
