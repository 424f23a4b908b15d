{#- The group-level behaviour measures with bootstrap intervals: each is a ratio of
    sums over a group's posts, sum(numerator) / sum(denominator), so that a group's
    value is the pooled one (lm-eval-harness: bits per byte = -sum(log-likelihood) /
    bytes / ln 2 over the whole corpus, not a mean of per-post ratios). The columns
    are those of fct_post_token_shift. -#}
{% macro behaviour_ratios() -%}
{{ return([
    ("bits_per_byte_base", "nll_bits_base", "n_bytes"),
    ("bits_per_byte_sft", "nll_bits_sft", "n_bytes"),
    ("delta_bits_per_byte", "nll_bits_sft - nll_bits_base", "n_bytes"),
    ("bits_per_token_base", "nll_bits_base", "n_tokens"),
    ("bits_per_token_sft", "nll_bits_sft", "n_tokens"),
    ("delta_bits_per_token", "nll_bits_sft - nll_bits_base", "n_tokens"),
    ("mean_kl_sft_base", "sum_kl_sft_base", "n_tokens"),
    ("mean_kl_base_sft", "sum_kl_base_sft", "n_tokens"),
    ("share_unshifted", "n_unshifted", "n_tokens"),
    ("share_marginal", "n_marginal", "n_tokens"),
    ("share_shifted", "n_shifted", "n_tokens"),
]) }}
{%- endmacro %}

{#- AlignTDS' classes of a top-1 token's rank under the other model. -#}
{% macro shift_class(rank) -%}
(case when ({{ rank }}) = 1 then 'unshifted'
      when ({{ rank }}) <= 3 then 'marginal'
      else 'shifted' end)
{%- endmacro %}

{#- Token position buckets (powers of four from 16): '0-15', '16-63', ... -#}
{% macro position_bucket(position) -%}
(case when ({{ position }}) < 16 then '0-15'
      when ({{ position }}) < 64 then '16-63'
      when ({{ position }}) < 256 then '64-255'
      when ({{ position }}) < 1024 then '256-1023'
      else '1024+' end)
{%- endmacro %}

{#- Aggregates of fct_token_shift rows shared by the per-post and per-group marts. -#}
{% macro shift_aggregates() -%}
        count(*) as n_scored,
        sum(kl_sft_base) as sum_kl_sft_base,
        sum(kl_base_sft) as sum_kl_base_sft,
        avg(entropy_base) as mean_entropy_base,
        avg(entropy_sft) as mean_entropy_sft,
        count(*) filter (where shift_class = 'unshifted') as n_unshifted,
        count(*) filter (where shift_class = 'marginal') as n_marginal,
        count(*) filter (where shift_class = 'shifted') as n_shifted,
        count(*) filter (where reverse_shift_class = 'shifted') as n_reverse_shifted,
{%- endmacro %}
