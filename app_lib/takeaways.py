"""The sentences each page opens with: pure functions, DataFrames in, Markdown out.

    from app_lib import takeaways as tk
    ui.takeaway(tk.weights(cells))        # cells: marts.fct_layer_module_metrics

Every sentence is computed from the marts the page reads, with the interval, the
chance level or the null that makes it true, and says when the data are too thin to
carry it. Each function returns a list of sentences (possibly empty); no Streamlit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from app_lib.charts import GROUP_LABEL, metric_title, module_list

# Fewer than this many posts in a group: no interval is worth quoting.
MIN_POSTS = 5
# Fewer layers than this: no trend with depth can be tested.
MIN_LAYERS = 5
# Overlap within this factor of its chance level reads as "at chance".
CHANCE_BAND = 1.25
# One spread of medians (by module type, by layer) must exceed the other this many
# times to be called the one that matters more.
SPREAD_RATIO = 1.5


def _num(x: float, digits: int = 3) -> str:
    """A number to `digits` significant digits, no exponent for everyday sizes."""
    if x is None or pd.isna(x):
        return "n/a"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}" if 1e-4 <= abs(x) < 1e6 else f"{x:.{digits - 1}e}"


def _signed(x: float, digits: int = 3) -> str:
    return ("+" if x > 0 else "") + _num(x, digits)


def _interval(lo: float, hi: float, signed: bool = False) -> str:
    f = _signed if signed else _num
    return f"95% interval {f(lo)} to {f(hi)}"


def _cap(text: str) -> str:
    """The first letter upper case, the rest as it is (not str.capitalize)."""
    return text[:1].upper() + text[1:]


def _group(g: str) -> str:
    return GROUP_LABEL.get(g, g)


def _modules_in(df: pd.DataFrame) -> list[str]:
    return module_list(df["module"]) if len(df) else []


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# --- weights -------------------------------------------------------------------------

def full_rank_share(df: pd.DataFrame, rank: str = "delta_signal_rank") -> pd.Series:
    """A rank as a share of the matrix's full rank min(n_rows, n_cols)."""
    full = np.minimum(df["n_rows"], df["n_cols"]).astype(float)
    return df[rank] / full.where(full > 0)


def weights(cells: pd.DataFrame) -> list[str]:
    """How far fine-tuning moved each pair's block matrices, and how many
    directions of dW stand above the rounding noise (one sentence each, at most
    three pairs). cells: marts.fct_layer_module_metrics rows."""
    out = []
    if cells.empty:
        return ["No block matrices in the warehouse yet."]
    for pair, c in list(cells.groupby("pair", sort=False))[:3]:
        rel = c["relative_frobenius_change"].dropna()
        if rel.empty:
            continue
        n = len(rel)
        thin = " (one matrix: nothing to compare)" if n < 2 else ""
        meds = c.groupby("module")["relative_frobenius_change"].median()
        unchanged = int(c["unchanged"].fillna(False).sum()) if "unchanged" in c else 0
        moved = (f"every one of its {n} block matrices" if not unchanged
                 else f"{n - unchanged} of its {n} block matrices ({unchanged} "
                      "unchanged)")
        text = (f"**{pair}**: fine-tuning moved {moved} by {rel.min():.0%} to "
                f"{rel.max():.0%} of its norm (||dW||_F / ||W_base||_F, median "
                f"{rel.median():.0%}){thin}")
        if len(meds) > 1:
            text += (f"; most in {meds.idxmax()} (median {meds.max():.0%}), least "
                     f"in {meds.idxmin()} ({meds.min():.0%})")
        out.append(text + ".")
        if {"delta_signal_rank", "n_rows", "n_cols"} <= set(c.columns):
            share = full_rank_share(c).dropna()
            if len(share):
                full = [m for m in _modules_in(c)
                        if (full_rank_share(c[c["module"] == m]) >= 0.999).all()]
                text = (f"dW stands above the bf16 rounding noise in {share.median():.0%}"
                        f" of its possible directions (signal rank / min(m, n), "
                        f"median; {share.min():.0%} to {share.max():.0%})")
                if full:
                    text += (f"; {_join(full)} {'is' if len(full) == 1 else 'are'} "
                             "full rank in every layer: not a low-rank update there")
                out.append(text + ".")
    return out


def heatmap(cells: pd.DataFrame, metric: str) -> list[str]:
    """The range of one measure over the grid, where it peaks, and how far module
    types and layers each spread it. cells: one pair's fct_layer_module_metrics."""
    c = cells.dropna(subset=[metric])
    if c.empty:
        return [f"No values of {metric_title(metric)} for this pair."]
    lo, hi = c.loc[c[metric].idxmin()], c.loc[c[metric].idxmax()]
    out = [f"{_cap(metric_title(metric))}: from {_num(lo[metric])} (layer "
           f"{int(lo['layer'])} {lo['module']}) to {_num(hi[metric])} (layer "
           f"{int(hi['layer'])} {hi['module']}) over {len(c)} matrices."]
    by_module = c.groupby("module")[metric].median()
    by_layer = c.groupby("layer")[metric].median()
    if len(by_module) < 2 or len(by_layer) < 2:
        out.append("One module type or one layer only: too thin to say which of "
                   "the two matters more.")
        return out
    spread_m = by_module.max() - by_module.min()
    spread_l = by_layer.max() - by_layer.min()
    if max(spread_m, spread_l) > SPREAD_RATIO * min(spread_m, spread_l):
        verdict = ("the module type matters more than depth" if spread_m > spread_l
                   else "depth matters more than the module type")
    else:
        verdict = (f"neither spreads it {SPREAD_RATIO:g}x more than the other")
    out.append(f"Medians by module type span {_num(by_module.min())} "
               f"({by_module.idxmin()}) to {_num(by_module.max())} "
               f"({by_module.idxmax()}); by layer {_num(by_layer.min())} (layer "
               f"{int(by_layer.idxmin())}) to {_num(by_layer.max())} (layer "
               f"{int(by_layer.idxmax())}): {verdict}.")
    return out


def depth_trend(data: pd.DataFrame, metric: str) -> list[str]:
    """Per pair: Spearman's rank correlation of `metric` with depth and its
    two-sided p-value (SciPy), or a note that there are too few layers.
    data: pair, depth, metric (one row per layer)."""
    from scipy.stats import spearmanr

    out = []
    for pair, d in list(data.dropna(subset=[metric]).groupby("pair", sort=False))[:3]:
        n = len(d)
        if n < MIN_LAYERS:
            out.append(f"**{pair}**: {n} layer(s): too few to test a trend with depth "
                       f"(at least {MIN_LAYERS}).")
            continue
        if d[metric].nunique() < 2:
            out.append(f"**{pair}**: the same value at every depth.")
            continue
        rho, p = spearmanr(d["depth"], d[metric])
        verdict = (("rises" if rho > 0 else "falls") + " with depth"
                   if p < 0.05 else "no clear trend with depth")
        out.append(f"**{pair}**: {verdict} (Spearman rho {rho:+.2f}, p = {p:.2g}, "
                   f"{n} layers; chance: rho 0).")
    return out


def spectrum(delta: pd.Series | None, energy: pd.DataFrame) -> list[str]:
    """One matrix: how much of dW stands above the noise, and how concentrated its
    energy is against a flat spectrum (the top k of n hold k / n).
    delta: the fct_matrix_metrics row of dW; energy: rank, share."""
    if delta is None or energy.empty:
        return ["No spectrum of dW for this matrix."]
    n = int(energy["rank"].max())
    out = []
    signal = delta.get("signal_rank")
    if signal is not None and not pd.isna(signal):
        out.append(f"{int(signal)} of dW's {n} singular values stand above the "
                   f"Gavish-Donoho threshold for bf16 rounding noise "
                   f"({signal / n:.0%} of full rank).")
    k = min(16, max(1, n // 8))
    row = energy[energy["rank"] >= k].iloc[0]
    k = int(row["rank"])
    if n > 1:
        ratio = row["share"] / (k / n)
        out.append(f"Its top {k} directions hold {row['share']:.0%} of ||dW||_F^2, "
                   f"against {k / n:.0%} for a flat spectrum ({ratio:.1f}x): "
                   + ("concentrated." if ratio >= 2 else "spread out, not low-rank."))
    return out


# --- the seed floor ------------------------------------------------------------------
# (app_lib.floor: a second fine-tune B of the same base, same recipe, another seed)

def seed_floor_weights(floors: pd.DataFrame) -> list[str]:
    """Per pair with a floor: how far SFT moved the weights (median relative change
    over the matrices, overall and in the module type it moved most) next to how far
    a second seed's fine-tune lands from it. floors: app_lib.floor.modules rows."""
    out = []
    for pair, f in floors.groupby("pair", sort=False):
        every = f[f["module"] == "all"]
        mods = f[f["module"] != "all"].dropna(subset=["median_relative_change_a"])
        if every.empty:
            continue
        a = every.iloc[0]
        text = (f"**{pair}**: SFT moved its matrices by "
                f"{a.median_relative_change_a:.0%} of their norm (median); a second "
                f"fine-tune with another seed ({a.other_pair}) differs from it by "
                f"{a.median_relative_change_between:.0%} (||W_B - W_A||_F / "
                f"||W_A||_F, the seed floor)")
        if len(mods):
            m = mods.loc[mods["median_relative_change_a"].idxmax()]
            text += (f"; SFT moved {m.module} {m.median_relative_change_a:.0%} of its "
                     f"norm, a second seed differs from it by "
                     f"{m.median_relative_change_between:.0%}")
        if pd.notna(a.corr_relative_change):
            text += (f"; the two fine-tunes' changes correlate at "
                     f"{a.corr_relative_change:.2f} over the {int(a.n_matrices)} "
                     "matrices")
        out.append(text + ".")
    return out


def seed_floor_layers(lines: pd.DataFrame) -> list[str]:
    """The Layers page's floor lines: their median against depth, said once."""
    if lines.empty:
        return []
    parts = [f"{p.removesuffix(': seed floor')} "
             f"{g['relative_frobenius_change'].median():.0%}"
             for p, g in lines.groupby("pair", sort=False)]
    return [f"Seed floor (a second fine-tune with another seed against this one, "
            f"||W_B - W_A||_F / ||W_A||_F, median over layers): {_join(parts)}; the "
            "lines named ': seed floor' show it per layer."]


def seed_floor_kl(rows: pd.DataFrame) -> list[str]:
    """KL(p_A || p_base) per token next to KL(p_B || p_A), the floor, per group of
    one post type. rows: app_lib.floor.behaviour rows."""
    rows = rows.dropna(subset=["mean_kl_a_base", "mean_kl_b_a"])
    if rows.empty:
        return []
    parts = []
    for r in rows.itertuples():
        name = _group(r.grp) if r.grp != "all" else "all"
        kind = "" if r.post_type == "all" else f" {r.post_type}s"
        parts.append(f"{name}{kind}: {_num(r.mean_kl_a_base)} vs seed "
                     f"{_num(r.mean_kl_b_a)} ({r.floor_ratio:.0%}, {int(r.n_posts)} "
                     "posts)")
    return [f"Seed floor: KL(p_SFT || p_base) per token next to KL(p_B || p_SFT), B "
            f"a second fine-tune with another seed ({rows['between_pair'].iloc[0]}): "
            + "; ".join(parts) + ". The fine-tune's change stands out where the first "
            "is well above the second."]


def seed_floor_directions(cells: pd.DataFrame, side: str) -> list[str]:
    """The overlap of dW_A's and dW_B's top-k subspaces over the matrices against
    its chance level. cells: app_lib.floor.directions rows."""
    c = cells.dropna(subset=["share"])
    if c.empty:
        return []
    k = int(c["k"].max())
    flat = c[~c["chance_informative"].astype(bool)]
    text = (f"Seed floor: a second fine-tune with another seed "
            f"({c['other_pair'].iloc[0]}) moves the base along much the same top-{k} "
            f"{side} directions" if c["share"].median()
            > CHANCE_BAND * c["chance_share"].median() else
            f"Seed floor: a second fine-tune with another seed "
            f"({c['other_pair'].iloc[0]}) moves the base along other top-{k} {side} "
            "directions")
    text += (f": the overlap of dW_A's and dW_B's top-{k} subspaces is "
             f"{_num(c['share'].median(), 2)} (median over {len(c)} matrices, "
             f"{_num(c['share'].min(), 2)} to {_num(c['share'].max(), 2)}) against "
             f"chance {_num(c['chance_share'].median(), 2)}")
    if len(flat):
        text += (f"; in {len(flat)} matrices k reaches the dimension W_base spans, "
                 "where chance says nothing")
    return [text + "."]


# --- directions ----------------------------------------------------------------------

def overlap(cells: pd.DataFrame, r: int, side: str) -> list[str]:
    """Per module type: the layers' range of dW's energy share in W_base's top-r
    subspace against the chance level r / dim (a random r-dimensional subspace),
    sorted into above, at and below chance. cells: overlap_grid rows."""
    c = cells.dropna(subset=["share", "random_share"])
    if c.empty:
        return [f"No overlap at r = {r}."]
    above, at, below = [], [], []
    for m in _modules_in(c):
        g = c[c["module"] == m]
        lo, hi, chance = g["share"].min(), g["share"].max(), g["random_share"].median()
        text = (f"{m} {_num(lo, 2)}" + (f"-{_num(hi, 2)}" if hi - lo > 0.005 else "")
                + f" vs chance {_num(chance, 2)}")
        if lo > chance * CHANCE_BAND:
            above.append(text)
        elif hi < chance / CHANCE_BAND:
            below.append(text)
        else:
            at.append(text)
    out = [f"At r = {r} ({side} side), the share of ||dW||^2 in W_base's top-{r} "
           "subspace, over the layers:"]
    if above:
        out.append(f"**above chance** in every layer: {'; '.join(above)}.")
    if at:
        out.append(f"**at chance** (within {CHANCE_BAND:g}x of r / dim in some "
                   f"layer): {'; '.join(at)}.")
    if below:
        out.append(f"**below chance**: {'; '.join(below)}.")
    return [" ".join(out)]


def intruders(grid: pd.DataFrame, epsilon: float) -> list[str]:
    """Intruders among W_sft's top k against the random-direction null, summed over
    the matrices of the grid. grid: intruder_grid rows."""
    if grid.empty:
        return []
    n, null, k = int(grid["n_intruders"].sum()), grid["null_expected"].sum(), \
        int(grid["k"].max())
    total = int(grid["k"].sum())
    verdict = ("W_sft's top directions are W_base's, rotated at most a little"
               if n <= 0.1 * null else
               "many are new directions" if n >= 0.5 * null else
               "some are new directions")
    return [f"At epsilon {epsilon:g}: {n} of the {total} top-{k} singular vectors of "
            f"W_sft over {len(grid)} matrices are intruders (max |cos| with W_base's "
            f"< {epsilon:g}), against {_num(null)} for random directions: {verdict}."]


# --- behaviour -----------------------------------------------------------------------

def perplexity(delta: pd.DataFrame, diffs: pd.DataFrame | None = None,
               pair: str | None = None) -> list[str]:
    """Per group: SFT minus base perplexity per post with its Student-t interval
    (marts.fct_group_perplexity_delta), then the groups' difference in bits per byte
    with its bootstrap interval (fct_group_difference_intervals), where there.
    `pair`: named at the start (the Overview speaks of several)."""
    if delta.empty:
        return ["No scored posts yet."]
    parts = []
    for r in delta.sort_values("grp", key=lambda s: s.map(
            {"high": 0, "low": 1}).fillna(2)).itertuples():
        name = _group(r.grp) if isinstance(r.grp, str) else "all"
        if r.n_posts < MIN_POSTS or pd.isna(r.ci95_low_delta_perplexity):
            parts.append(f"{name} posts: only {int(r.n_posts)}, too few for an "
                         "interval")
            continue
        lo, hi = r.ci95_low_delta_perplexity, r.ci95_high_delta_perplexity
        how = ("lower" if hi < 0 else "higher" if lo > 0 else
               "no clear change (the interval holds 0)")
        parts.append(f"{how} on {name} posts ({_signed(r.mean_delta_perplexity)} "
                     f"per post, {_interval(lo, hi, True)}, {int(r.n_posts)} posts)")
    who = f"**{pair}**: " if pair else ""
    out = [who + "SFT's perplexity against the base's: " + "; ".join(parts) + "."]
    out += difference(diffs, "delta_bits_per_byte", "the change in bits per byte")
    return out


def difference(diffs: pd.DataFrame | None, metric: str, what: str) -> list[str]:
    """One measure's high - low difference with its bootstrap interval:
    'differ' when the interval excludes 0, else 'no difference'."""
    if diffs is None or diffs.empty:
        return []
    rows = diffs[diffs["metric"] == metric]
    if rows.empty:
        return []
    r = rows.iloc[0]
    if min(r["n_posts_a"], r["n_posts_b"]) < MIN_POSTS:
        return [f"{_cap(what)}: too few posts per group "
                f"({int(r['n_posts_a'])} and {int(r['n_posts_b'])}) to compare."]
    span = _interval(r["ci95_low"], r["ci95_high"], True)
    if r["ci95_low"] > 0 or r["ci95_high"] < 0:
        larger = r["group_a"] if r["difference"] > 0 else r["group_b"]
        return [f"{_cap(what)} is larger on {_group(larger)} posts: "
                f"{r['group_a']} - {r['group_b']} {_signed(r['difference'])} ({span}, "
                f"{int(r['n_resamples'])} bootstrap resamples)."]
    return [f"No difference between the groups in {what}: {r['group_a']} - "
            f"{r['group_b']} {_signed(r['difference'])}, {span} holds 0."]


def token_shift(groups: pd.DataFrame, diffs: pd.DataFrame) -> list[str]:
    """The share of shifted tokens per group (against Lin et al.'s 5-8% for 7B chat
    models) and whether KL differs between the groups."""
    out = []
    g = groups[groups["metric"] == "share_shifted"]
    if len(g):
        parts = [f"{_group(r.grp)} {r.estimate:.1%} ({_interval(r.ci95_low, r.ci95_high)})"
                 for r in g.itertuples()]
        out.append(f"SFT's top-1 token is ranked below 3rd by the base (shifted) at "
                   f"{'; '.join(parts)} of positions (Lin et al. 2023: 5-8% in 7B "
                   "chat models).")
    out += difference(diffs, "mean_kl_sft_base", "KL(p_sft || p_base) per token")
    return out or ["No token-shift measures for this pair."]


def drift(diff: pd.DataFrame) -> list[str]:
    """Residual drift: where the two models part most, and whether the groups differ
    there (Welch interval over posts). diff: fct_residual_drift_group_difference
    rows of one pair (layer, estimate_a, estimate_b, difference, ci95_low, ...)."""
    if diff.empty:
        return []
    last = diff.sort_values("layer").iloc[-1]
    peak = diff.loc[((diff["estimate_a"] + diff["estimate_b"]) / 2).idxmax()]
    out = [f"The hidden states part most at index {int(peak['layer'])} (relative L2 "
           f"distance {_num(peak['estimate_a'], 2)} on {_group(peak['group_a'])}, "
           f"{_num(peak['estimate_b'], 2)} on {_group(peak['group_b'])} posts; mean "
           "per post)."]
    if min(last["n_posts_a"], last["n_posts_b"]) < MIN_POSTS:
        out.append("Too few posts per group to compare them.")
        return out
    differ = diff[(diff["ci95_low"] > 0) | (diff["ci95_high"] < 0)]
    span = _interval(last["ci95_low"], last["ci95_high"], True)
    if differ.empty:
        out.append(f"No difference between the groups at any index: at the final "
                   f"state {last['group_a']} - {last['group_b']} "
                   f"{_signed(last['difference'], 2)}, {span} holds 0.")
    else:
        out.append(f"The groups differ at {len(differ)} of {len(diff)} indices (95% "
                   f"intervals, each on its own); at the final state "
                   f"{last['group_a']} - {last['group_b']} "
                   f"{_signed(last['difference'], 2)} ({span}).")
    return out


def posts(found: pd.DataFrame) -> list[str]:
    """How many posts per group and their score ranges; where both models scored
    them (a delta_perplexity column), on how many SFT found the text likelier, with
    a sign test against the 50% of no effect (SciPy's binomtest)."""
    from scipy.stats import binomtest

    if found.empty:
        return ["No posts match."]
    parts = [f"{len(d)} {_group(g)} (score {int(d['score'].min())} to "
             f"{int(d['score'].max())})" for g, d in found.groupby("grp", sort=False)]
    out = [f"{len(found)} post(s): {'; '.join(parts)}."]
    if "delta_perplexity" not in found:
        return out
    for g, d in found.dropna(subset=["delta_perplexity"]).groupby("grp", sort=False):
        n, k = len(d), int((d["delta_perplexity"] < 0).sum())
        if n < MIN_POSTS:
            out.append(f"{_group(g)}: {n} scored post(s), too few for a sign test.")
            continue
        p = binomtest(k, n).pvalue
        out.append(f"SFT lowered the perplexity of {k} of {n} {_group(g)} posts "
                   f"(sign test against 50%: p = {p:.2g}).")
    return out


def console(relations: pd.DataFrame) -> list[str]:
    """What the warehouse holds: tables per schema and the largest table."""
    if relations.empty:
        return []
    counts = relations.groupby("schema").size()
    rows = relations.dropna(subset=["n_rows"])
    text = (f"The warehouse holds {len(relations)} tables and views: "
            + _join([f"{n} in {s}" for s, n in counts.items()]))
    if len(rows):
        big = rows.loc[rows["n_rows"].idxmax()]
        text += (f"; the largest is {big['schema']}.{big['name']} "
                 f"(about {int(big['n_rows']):,} rows)")
    return [text + "."]


def over_training(onsets: pd.DataFrame) -> list[str]:
    """When the change arrived along a series of checkpoints: the median step (over
    layer x module cells that changed) at which a cell reaches 50% and 90% of its
    final relative change, and the module types that settle first and last (by the
    median of their cells' 90% onsets). onsets: marts.fct_trajectory_onset rows of
    one series (module, layer, onset_50_step, onset_90_step, ...)."""
    changed = onsets.dropna(subset=["onset_50_step", "onset_90_step"])
    if changed.empty:
        return ["No cell changed along this series (every final change is 0)."
                if len(onsets) else "No onsets for this series yet."]
    s50, s90 = changed["onset_50_step"], changed["onset_90_step"]
    out = [f"Half of a cell's final change arrives by step {int(s50.median())} "
           f"(median over {len(changed)} layer x module cells; range "
           f"{int(s50.min())} to {int(s50.max())}), 90% by step "
           f"{int(s90.median())} (range {int(s90.min())} to {int(s90.max())})."]
    by_module = changed.groupby("module")["onset_90_step"].median().sort_values()
    if len(by_module) > 1 and by_module.iloc[0] < by_module.iloc[-1]:
        out.append(f"{_cap(str(by_module.index[0]))} settles first (90% by step "
                   f"{int(by_module.iloc[0])}, median of its cells), "
                   f"{by_module.index[-1]} last (step {int(by_module.iloc[-1])}).")
    return out


# --- attribution ---------------------------------------------------------------------

def attribution(rank: pd.DataFrame, vs: pd.DataFrame) -> list[str]:
    """Which weight changes carry the behaviour: the groups whose add removes most
    of KL(p_sft || p_base) (95% intervals over posts), whether the groups add up
    (sum of the add shares vs 1), and whether the largest weight changes are the ones
    that matter (Spearman's rho over groups, its interval, the null rho = 0).
    rank: fct_patch_ranking rows of one pair, grouping, all posts; vs:
    fct_patch_vs_weights rows of the same."""
    if rank.empty:
        return []
    top = rank.sort_values("add_share", ascending=False).head(3)
    parts = [f"{r.patch_group} {r.add_share:.1%} (95% interval "
             f"{r.ci95_low_add_share:.1%} to {r.ci95_high_add_share:.1%})"
             if pd.notna(r.ci95_low_add_share) else f"{r.patch_group} {r.add_share:.0%}"
             for r in top.itertuples()]
    n = len(rank)
    out = [f"Of {n} groups, the changes that carry the behaviour alone are "
           f"{_join(parts)} of KL(p_sft || p_base) removed by adding only that "
           "group's dW to the base."]
    total = float(rank["add_share"].sum())
    out.append(f"The groups' add shares sum to {total:.0%}: "
               + ("about 1, their effects add up." if abs(total - 1) < 0.1 else
                  "above 1, they overlap in what they do." if total > 1 else
                  "below 1, they need each other (the whole does more than the "
                  "parts)."))
    row = vs[(vs["weight_measure"] == "relative_frobenius_change")
             & (vs["behaviour_share"] == "add")] if not vs.empty else vs
    if not row.empty and pd.notna(row.iloc[0]["spearman_rho"]):
        r = row.iloc[0]
        if pd.notna(r["ci95_low_rho"]):
            verdict = ("the largest weight changes are the ones that matter"
                       if r["ci95_low_rho"] > 0 else
                       "the largest weight changes are not the ones that matter"
                       if r["ci95_high_rho"] < 0 else
                       "no evidence either way that the largest changes matter most")
            out.append(f"Relative Frobenius change vs add share over "
                       f"{int(r['n_groups'])} groups: Spearman rho "
                       f"{_signed(r['spearman_rho'], 2)} "
                       f"({_interval(r['ci95_low_rho'], r['ci95_high_rho'], True)}; "
                       f"null 0): {verdict}.")
        else:
            out.append(f"Too few groups ({int(r['n_groups'])}) for an interval on "
                       "the rank correlation with the weight change.")
    return out + other_predictors(vs)


PREDICTORS = {"signal_rank": "signal rank", "n_intruders": "intruder dimensions"}


def other_predictors(vs: pd.DataFrame) -> list[str]:
    """The other weight measures (signal rank, intruders) whose rank correlation with
    the add share has a 95% interval that excludes 0, named with it."""
    if vs.empty:
        return []
    rows = vs[vs["weight_measure"].isin(list(PREDICTORS))
              & (vs["behaviour_share"] == "add") & vs["ci95_low_rho"].notna()
              & ((vs["ci95_low_rho"] > 0) | (vs["ci95_high_rho"] < 0))]
    return [f"{_cap(PREDICTORS[r['weight_measure']])} vs add share: rho "
            f"{_signed(r['spearman_rho'], 2)} "
            f"({_interval(r['ci95_low_rho'], r['ci95_high_rho'], True)}): groups "
            f"with {'more' if r['spearman_rho'] > 0 else 'less'} of it carry more of "
            f"the behaviour (one of {len(vs)} correlations looked at)."
            for _, r in rows.iterrows()]
