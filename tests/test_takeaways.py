"""The sentences atop each page (app_lib.takeaways) on small frames whose numbers are
worked out by hand here or by SciPy: what they claim, with which interval or chance
level, and what they say when the data are too thin."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app_lib import takeaways as tk


def cells(changes, modules=("q_proj", "k_proj"), layers=2, rows=(128, 64),
          signal=(128, 32)):
    """fct_layer_module_metrics rows of one pair: layer-major, one value each."""
    out, it = [], iter(changes)
    for layer in range(layers):
        for m, n_rows, s in zip(modules, rows, signal, strict=True):
            out.append({"pair": "p", "layer": layer, "module": m, "n_rows": n_rows,
                        "n_cols": 128, "unchanged": False, "delta_signal_rank": s,
                        "relative_frobenius_change": next(it)})
    return pd.DataFrame(out)


def test_weights_range_median_and_full_rank():
    """Changes 0.16, 0.30, 0.20, 0.24: range 16% to 30%, median 22%; q_proj's median
    (0.16 + 0.20) / 2 = 0.18 is the least, k_proj's 0.27 the most. Signal ranks
    128 of min(128, 128) (q) and 32 of min(64, 128) (k): shares 1 and 0.5, median
    0.75; q_proj is full rank in both layers, k_proj is not."""
    text = tk.weights(cells([0.16, 0.30, 0.20, 0.24]))
    assert text[0] == ("**p**: fine-tuning moved every one of its 4 block matrices by "
                       "16% to 30% of its norm (||dW||_F / ||W_base||_F, median 22%); "
                       "most in k_proj (median 27%), least in q_proj (18%).")
    assert "in 75% of its possible directions" in text[1]
    assert "50% to 100%" in text[1]
    assert "q_proj is full rank in every layer" in text[1]
    assert "k_proj" not in text[1].split("full rank")[0].split(";")[-1]


def test_weights_counts_unchanged_and_thin():
    one = cells([0.2], modules=("q_proj",), layers=1, rows=(128,), signal=(0,))
    assert "one matrix: nothing to compare" in tk.weights(one)[0]
    two = cells([0.2, 0.0], layers=1)
    two.loc[1, "unchanged"] = True
    assert "1 of its 2 block matrices (1 unchanged)" in tk.weights(two)[0]
    assert tk.weights(pd.DataFrame()) == ["No block matrices in the warehouse yet."]


def test_heatmap_names_extremes_and_which_spread_is_larger():
    """q: 0.1, 0.1 by layer; k: 0.5, 0.6. Module medians 0.1 vs 0.55 (spread 0.45);
    layer medians (0.1 + 0.5) / 2 = 0.3 and 0.35 (spread 0.05): module type, 9x."""
    text = tk.heatmap(cells([0.1, 0.5, 0.1, 0.6]), "relative_frobenius_change")
    assert text[0].startswith("Relative Frobenius change ||dW||_F / ||W_base||_F: "
                              "from 0.1 (layer 0 q_proj) to 0.6 (layer 1 k_proj)")
    assert "the module type matters more than depth" in text[1]
    # spreads 0.1 and 0.1: neither
    even = tk.heatmap(cells([0.1, 0.2, 0.2, 0.3]), "relative_frobenius_change")
    assert "neither spreads it 1.5x more than the other" in even[1]
    thin = tk.heatmap(cells([0.1, 0.2], layers=1), "relative_frobenius_change")
    assert "too thin" in thin[1]


def test_depth_trend_against_scipy():
    from scipy.stats import spearmanr

    depth = np.arange(8) / 8
    rising = pd.DataFrame({"pair": "p", "depth": depth,
                           "m": [0.1, 0.12, 0.11, 0.2, 0.25, 0.24, 0.3, 0.35]})
    rho, p = spearmanr(rising["depth"], rising["m"])
    (text,) = tk.depth_trend(rising, "m")
    assert text == (f"**p**: rises with depth (Spearman rho {rho:+.2f}, p = {p:.2g}, "
                    "8 layers; chance: rho 0).")
    flat = rising.assign(m=[0.2, 0.1, 0.3, 0.15, 0.25, 0.1, 0.3, 0.2])
    assert "no clear trend with depth" in tk.depth_trend(flat, "m")[0]
    (thin,) = tk.depth_trend(rising.head(4), "m")
    assert "4 layer(s): too few to test a trend" in thin


def test_spectrum_against_a_flat_spectrum():
    """n = 128, top 16 hold 64%: a flat spectrum would hold 16 / 128 = 12.5%,
    ratio 5.1; signal rank 96 of 128 = 75%."""
    energy = pd.DataFrame({"rank": np.arange(1, 129),
                           "share": np.linspace(0.04, 1.0, 128)})
    energy.loc[15, "share"] = 0.64
    text = tk.spectrum(pd.Series({"signal_rank": 96}), energy)
    assert text[0].startswith("96 of dW's 128 singular values") and "(75% of" in text[0]
    assert text[1] == ("Its top 16 directions hold 64% of ||dW||_F^2, against 12% for "
                       "a flat spectrum (5.1x): concentrated.")
    flat = energy.assign(share=energy["rank"] / 128)
    assert "spread out, not low-rank" in tk.spectrum(pd.Series({}), flat)[-1]


def test_overlap_sorted_against_chance():
    """q: 0.49, 0.53 vs 16 / 128 = 0.125 -> above; gate: 0.12, 0.15 vs 0.125 ->
    at chance (0.12 < 0.125 * 1.25); up: 0.02, 0.03 vs 0.125 -> below."""
    rows = []
    for m, shares in (("q_proj", (0.49, 0.53)), ("gate_proj", (0.12, 0.15)),
                      ("up_proj", (0.02, 0.03))):
        for layer, s in enumerate(shares):
            rows.append({"layer": layer, "module": m, "share": s,
                         "random_share": 0.125, "enrichment": s / 0.125})
    (text,) = tk.overlap(pd.DataFrame(rows), 16, "left")
    assert "**above chance** in every layer: q_proj 0.49-0.53 vs chance 0.12" in text
    assert "**at chance** (within 1.25x of r / dim in some layer): gate_proj " \
           "0.12-0.15 vs chance 0.12" in text
    assert "**below chance**: up_proj 0.02-0.03 vs chance 0.12" in text


def test_intruders_against_the_null():
    grid = pd.DataFrame({"layer": [0, 0], "module": ["q_proj", "o_proj"],
                         "n_intruders": [0, 1], "null_expected": [10.0, 9.5],
                         "k": [10, 10]})
    (text,) = tk.intruders(grid, 0.5)
    assert text.startswith("At epsilon 0.5: 1 of the 20 top-10 singular vectors of "
                           "W_sft over 2 matrices are intruders")
    assert "against 19.5 for random directions: W_sft's top directions are W_base's" \
        in text
    many = grid.assign(n_intruders=[9, 10])
    assert "many are new directions" in tk.intruders(many, 0.5)[0]


def delta_rows(n=35):
    return pd.DataFrame({
        "grp": ["high", "low"], "n_posts": [n, n],
        "mean_delta_perplexity": [-5.16, 7.64],
        "ci95_low_delta_perplexity": [-5.98, 6.70],
        "ci95_high_delta_perplexity": [-4.33, 8.58],
        "mean_delta_bits_per_byte": [-0.05, 0.11], "share_sft_lower_perplexity":
        [0.8, 0.1]})


def diff_rows(metric="delta_bits_per_byte", lo=-0.169, hi=-0.148, n=35):
    return pd.DataFrame({"metric": [metric], "group_a": ["high"], "group_b": ["low"],
                         "n_posts_a": [n], "n_posts_b": [n], "difference": [
                             (lo + hi) / 2], "ci95_low": [lo], "ci95_high": [hi],
                         "excludes_zero": [lo > 0 or hi < 0], "n_resamples": [1000]})


def test_perplexity_directions_and_the_groups_difference():
    text = tk.perplexity(delta_rows(), diff_rows())
    assert text[0] == ("SFT's perplexity against the base's: lower on high score "
                       "posts (-5.16 per post, 95% interval -5.98 to -4.33, 35 posts);"
                       " higher on low score posts (+7.64 per post, 95% interval +6.7 "
                       "to +8.58, 35 posts).")
    unclear = delta_rows().assign(ci95_high_delta_perplexity=[0.5, 8.58])
    assert "no clear change (the interval holds 0) on high score posts" in \
        tk.perplexity(unclear)[0]
    assert text[1] == ("The change in bits per byte is larger on low score posts: "
                       f"high - low {(-0.169 - 0.148) / 2:.3g} (95% interval -0.169 to "
                       "-0.148, 1000 bootstrap resamples).")
    same = tk.perplexity(delta_rows(), diff_rows(lo=-0.01, hi=0.02))
    assert same[1].startswith("No difference between the groups in the change in "
                              "bits per byte") and "holds 0" in same[1]
    thin = tk.perplexity(delta_rows(n=3), diff_rows(n=3))
    assert "only 3, too few for an interval" in thin[0]
    assert "too few posts per group (3 and 3)" in thin[1]


def test_token_shift_and_drift():
    groups = pd.DataFrame({"grp": ["high", "low"], "metric": "share_shifted",
                           "estimate": [0.156, 0.150], "ci95_low": [0.149, 0.143],
                           "ci95_high": [0.162, 0.156]})
    text = tk.token_shift(groups, diff_rows("mean_kl_sft_base", -0.016, -0.0056))
    assert "high score 15.6% (95% interval 0.149 to 0.162)" in text[0]
    assert "5-8% in 7B chat models" in text[0]
    assert text[1].startswith("KL(p_sft || p_base) per token is larger on low score")
    drift = pd.DataFrame({"layer": [0, 1, 2], "group_a": "high", "group_b": "low",
                          "n_posts_a": 35, "n_posts_b": 35,
                          "estimate_a": [0.1, 0.4, 0.3], "estimate_b": [0.1, 0.38, 0.3],
                          "difference": [0.0, 0.02, 0.0],
                          "ci95_low": [-0.01, -0.01, -0.02],
                          "ci95_high": [0.01, 0.05, 0.02]})
    text = tk.drift(drift)
    assert text[0].startswith("The hidden states part most at index 1")
    assert text[1].startswith("No difference between the groups at any index: at the "
                              "final state high - low 0, 95% interval -0.02 to +0.02 "
                              "holds 0.")
    apart = drift.assign(ci95_low=[-0.01, 0.005, 0.001])
    assert "differ at 2 of 3 indices" in tk.drift(apart)[1]
    assert "Too few posts" in tk.drift(drift.assign(n_posts_b=2))[1]


def test_posts_sign_test_against_scipy():
    from scipy.stats import binomtest

    found = pd.DataFrame({"grp": ["high"] * 10 + ["low"] * 3,
                          "score": [*range(4, 14), -3, -4, -5],
                          "delta_perplexity": [-1.0] * 9 + [0.5] + [1.0] * 3})
    text = tk.posts(found)
    assert text[0] == "13 post(s): 10 high score (score 4 to 13); 3 low score " \
                      "(score -5 to -3)."
    assert text[1] == (f"SFT lowered the perplexity of 9 of 10 high score posts (sign "
                       f"test against 50%: p = {binomtest(9, 10).pvalue:.2g}).")
    assert "3 scored post(s), too few for a sign test" in text[2]
    assert tk.posts(found.drop(columns="delta_perplexity")) == text[:1]


def test_console_counts_relations():
    rel = pd.DataFrame({"schema": ["marts", "marts", "raw"], "name": ["a", "b", "c"],
                        "n_rows": [10, None, 1234]})
    assert tk.console(rel) == ["The warehouse holds 3 tables and views: 2 in marts "
                               "and 1 in raw; the largest is raw.c (about 1,234 "
                               "rows)."]


@pytest.mark.parametrize("x, want", [(0.000123456, "0.000123"), (1234567.0, "1.23e+06"),
                                     (0, "0"), (float("nan"), "n/a")])
def test_numbers(x, want):
    assert tk._num(x) == want


def test_over_training_onsets_by_hand():
    """Cells (module, layer) with onset steps 100/200/300 (50%) and 200/300/400
    (90%) in three changed cells, one cell that never changed: medians 200 and 300;
    q_proj's 90% median is 200 (one cell), mlp's (300 + 400) / 2 = 350."""
    onsets = pd.DataFrame({
        "module": ["q_proj", "down_proj", "down_proj", "k_proj"],
        "layer": [0, 0, 1, 0],
        "onset_50_step": [100, 200, 300, None],
        "onset_90_step": [200, 300, 400, None]})
    text = tk.over_training(onsets)
    assert text[0] == ("Half of a cell's final change arrives by step 200 (median "
                       "over 3 layer x module cells; range 100 to 300), 90% by step "
                       "300 (range 200 to 400).")
    assert text[1] == ("Q_proj settles first (90% by step 200, median of its cells), "
                       "down_proj last (step 350).")
    assert tk.over_training(onsets.iloc[[3]]) == [
        "No cell changed along this series (every final change is 0)."]
    assert tk.over_training(onsets.iloc[:0]) == ["No onsets for this series yet."]
    # one module type only: no first/last sentence
    assert len(tk.over_training(onsets.iloc[[1, 2]])) == 1


def test_seed_floor_sentences_by_hand():
    """The floor beside the change: A's median relative change 0.23 over every matrix
    and q_proj's 0.30 (the most), A-to-B 0.10 and 0.12, correlation 0.91 over 8
    matrices; KL(A || base) 0.12 vs KL(B || A) 0.03 (25%); top-8 overlaps 0.8, 0.9
    and 0.7 (median 0.8) against chance 8 / 128 = 0.0625; nothing without floors."""
    floors = pd.DataFrame({
        "pair": "demo", "other_pair": "demo-seed29", "module": ["all", "q_proj", "k_proj"],
        "n_matrices": [8, 4, 4], "median_relative_change_a": [0.23, 0.30, 0.15],
        "median_relative_change_between": [0.10, 0.12, 0.08],
        "corr_relative_change": [0.91, 0.5, 0.4]})
    (text,) = tk.seed_floor_weights(floors)
    assert text == ("**demo**: SFT moved its matrices by 23% of their norm (median); a "
                    "second fine-tune with another seed (demo-seed29) differs from it "
                    "by 10% (||W_B - W_A||_F / ||W_A||_F, the seed floor); SFT moved "
                    "q_proj 30% of its norm, a second seed differs from it by 12%; the "
                    "two fine-tunes' changes correlate at 0.91 over the 8 matrices.")
    assert tk.seed_floor_weights(floors.iloc[0:0]) == []
    kl = pd.DataFrame({"grp": ["all"], "post_type": ["answer"], "n_posts": [40],
                       "mean_kl_a_base": [0.12], "mean_kl_b_a": [0.03],
                       "floor_ratio": [0.25], "between_pair": ["demo-seeds"]})
    (text,) = tk.seed_floor_kl(kl)
    assert "(demo-seeds): all answers: 0.12 vs seed 0.03 (25%, 40 posts)" in text
    dirs = pd.DataFrame({"other_pair": "demo-seed29", "k": 8, "share": [0.8, 0.9, 0.7],
                         "chance_share": 0.0625, "chance_informative": True})
    (text,) = tk.seed_floor_directions(dirs, "left")
    assert text.startswith("Seed floor: a second fine-tune with another seed "
                           "(demo-seed29) moves the base along much the same top-8 "
                           "left directions")
    assert "is 0.8 (median over 3 matrices, 0.7 to 0.9) against chance 0.062" in text
    low = dirs.assign(share=[0.06, 0.07, 0.05])
    assert "along other top-8 left directions" in tk.seed_floor_directions(low,
                                                                          "left")[0]


def test_attribution_top_groups_sum_and_correlation():
    """Add shares 0.5, 0.2, 0.1 (sum 0.8: 'below 1'); the top group named with its
    interval; rho 0.8 over 12 groups with a Fisher-z interval 0.40 to 0.94 (above 0:
    the largest changes matter), then one holding 0, then too few groups."""
    rank = pd.DataFrame({"patch_group": ["1.q_proj", "0.down_proj", "embeddings"],
                         "add_share": [0.5, 0.2, 0.1],
                         "ci95_low_add_share": [0.4, 0.2, 0.0],
                         "ci95_high_add_share": [0.6, 0.4, 0.2]})
    z, se = np.arctanh(0.8), np.sqrt(1.06 / 9)
    lo, hi = np.tanh(z - 1.96 * se), np.tanh(z + 1.96 * se)
    vs = pd.DataFrame({"weight_measure": ["relative_frobenius_change"],
                       "behaviour_share": ["add"], "n_groups": [12],
                       "spearman_rho": [0.8], "ci95_low_rho": [lo],
                       "ci95_high_rho": [hi]})
    text = " ".join(tk.attribution(rank, vs))
    assert "Of 3 groups" in text and "1.q_proj 50.0% (95% interval 40.0% to 60.0%)" in text
    assert "sum to 80%: below 1" in text
    assert f"rho +0.8 (95% interval {lo:+.3g} to {hi:+.3g}; null 0)" in text
    assert "the largest weight changes are the ones that matter" in text
    vs.loc[0, ["ci95_low_rho", "ci95_high_rho"]] = [-0.1, 0.9]
    assert "no evidence either way" in " ".join(tk.attribution(rank, vs))
    vs.loc[0, ["n_groups", "ci95_low_rho", "ci95_high_rho"]] = [3, None, None]
    assert "Too few groups (3)" in " ".join(tk.attribution(rank, vs))
    assert tk.attribution(rank.iloc[:0], vs) == []
    assert "Signal rank" not in text  # no other measure in vs


def test_attribution_names_another_measure_whose_interval_excludes_zero():
    """Frobenius change vs add share holds 0, signal rank's excludes it (+0.64, 0.34
    to 0.82 over 29 groups, the demo's), intruders' holds 0, and a revert
    correlation is not named: the takeaway names signal rank alone, with the number
    of correlations looked at (4)."""
    rank = pd.DataFrame({"patch_group": ["embeddings"], "add_share": [0.5],
                         "ci95_low_add_share": [0.49], "ci95_high_add_share": [0.51]})
    vs = pd.DataFrame({
        "weight_measure": ["relative_frobenius_change", "signal_rank", "n_intruders",
                           "signal_rank"],
        "behaviour_share": ["add", "add", "add", "revert"], "n_groups": [29] * 4,
        "spearman_rho": [0.16, 0.64, -0.05, -0.7],
        "ci95_low_rho": [-0.23, 0.34, -0.42, -0.9],
        "ci95_high_rho": [0.51, 0.82, 0.34, -0.4]})
    text = " ".join(tk.attribution(rank, vs))
    assert "no evidence either way" in text
    assert ("Signal rank vs add share: rho +0.64 (95% interval +0.34 to +0.82): "
            "groups with more of it carry more of the behaviour (one of 4 "
            "correlations looked at).") in text
    assert "Intruder dimensions" not in text and text.count("Signal rank") == 1
