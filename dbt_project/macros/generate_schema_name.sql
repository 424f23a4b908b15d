{#- Models land in the schema their folder names (staging, intermediate, marts),
    not in "<target>_<folder>", so ad-hoc SQL reads `marts.fct_matrix_metrics`. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}{{ target.schema }}{%- else -%}{{ custom_schema_name | trim }}{%- endif -%}
{%- endmacro %}
