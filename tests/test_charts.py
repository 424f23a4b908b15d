"""The app's chart builders on small hand-made DataFrames (no Streamlit, no SQL)."""

from __future__ import annotations

import json
import math

import altair as alt
import pandas as pd
import pytest

from app_lib import charts


def spec(chart: alt.TopLevelMixin) -> dict:
    """The Vega-Lite dict (validated against the schema by to_dict)."""
    return chart.to_dict()


def text(chart) -> str:
    return json.dumps(spec(chart))


@pytest.fixture
def cells() -> pd.DataFrame:
    rows = []
    for layer in range(3):
        for i, module in enumerate(["down_proj", "q_proj", "k_proj"]):
            rows.append({"pair": "demo", "size_billions": 0.005, "layer": layer,
                         "depth": layer / 3, "module": module, "n_rows": 8,
                         "n_cols": 16, "relative_frobenius_change": 0.01 * (i + 1),
                         "relative_spectral_change": 0.1 * (layer + 1),
                         "delta_signal_rank": layer + i})
    return pd.DataFrame(rows)


def test_one_palette():
    assert set(charts.ROLE_COLOR) == {"base", "sft", "delta"}
    assert len(set(charts.ROLE_COLOR.values())) == 3
    assert not set(charts.ROLE_COLOR.values()) & set(charts.GROUP_COLOR.values())


def test_heatmap_grid_modules_in_model_order(cells):
    chart = charts.heatmap(cells, "relative_frobenius_change")
    d = spec(chart)
    rect = d["layer"][0]
    assert rect["mark"]["type"] == "rect"
    assert rect["encoding"]["x"]["sort"] == ["q_proj", "k_proj", "down_proj"]
    assert rect["encoding"]["y"]["field"] == "layer"
    assert rect["encoding"]["color"]["field"] == "relative_frobenius_change"
    assert d["height"] == {"step": 30}
    # few layers: values printed in the cells
    assert d["layer"][1]["mark"]["type"] == "text"


def test_expert_heatmap_has_a_column_per_expert():
    rows = [{"pair": "moe", "layer": layer, "module": "gate_proj", "expert": e,
             "relative_frobenius_change": 0.01 * (e + 1), "delta_signal_rank": e}
            for layer in range(2) for e in range(4)]
    d = spec(charts.heatmap(pd.DataFrame(rows), "delta_signal_rank", columns="expert"))
    rect = d["layer"][0]
    assert rect["encoding"]["x"]["field"] == "expert"
    assert rect["encoding"]["y"]["field"] == "layer"
    assert "expert" in [t["field"] for t in rect["encoding"]["tooltip"]]
    assert len(d["datasets"][next(iter(d["datasets"]))]) == 8


def test_heatmap_log_drops_non_positive(cells):
    cells.loc[0, "delta_signal_rank"] = 0
    chart = charts.heatmap(cells, "delta_signal_rank", log=True)
    assert spec(chart)["layer"][0]["encoding"]["color"]["scale"]["type"] == "log"
    values = next(iter(spec(chart)["datasets"].values()))
    assert all(v["delta_signal_rank"] > 0 for v in values)


def test_heatmap_many_layers_no_text():
    df = pd.DataFrame({"layer": range(80), "module": "q_proj",
                       "relative_frobenius_change": 0.1})
    d = spec(charts.heatmap(df, "relative_frobenius_change"))
    assert len(d["layer"]) == 1
    assert d["height"] == {"step": 12}


def test_layers_chart_pairs_sorted_by_size(cells):
    big = cells.assign(pair="72B", size_billions=72.0)
    small = cells.assign(pair="0.5B", size_billions=0.5)
    d = spec(charts.layers_chart(pd.concat([big, small]),
                                 "relative_spectral_change"))
    assert d["encoding"]["x"]["field"] == "depth"
    assert d["encoding"]["x"]["scale"]["domain"] == [0, 1]
    assert d["encoding"]["color"]["sort"] == ["0.5B", "72B"]
    assert "depth (layer / n_layers)" in d["encoding"]["x"]["title"]


def test_layers_chart_log(cells):
    d = spec(charts.layers_chart(cells, "delta_signal_rank", log=True))
    assert d["encoding"]["y"]["scale"]["type"] == "log"


@pytest.fixture
def spectrum() -> pd.DataFrame:
    rows = []
    for role, scale in (("base", 1.0), ("sft", 1.01), ("delta", 0.01)):
        for i in range(1, 9):
            rows.append({"role": role, "idx": i, "value": scale / i})
    rows.append({"role": "delta", "idx": 9, "value": 0.0})  # not on a log axis
    return pd.DataFrame(rows)


def test_spectra_chart_roles_colours_and_noise_rules(spectrum):
    chart = charts.spectra_chart(spectrum, {"mp_edge": 0.002, "gd_threshold": 0.0023})
    d = spec(chart)
    lines = d["layer"][0]
    assert lines["encoding"]["x"]["scale"]["type"] == "log"
    assert lines["encoding"]["y"]["scale"]["type"] == "log"
    scale = lines["encoding"]["color"]["scale"]
    assert scale["range"] == [charts.ROLE_COLOR[r] for r in ("base", "sft", "delta")]
    assert scale["domain"] == [charts.ROLE_LABEL[r] for r in ("base", "sft", "delta")]
    assert len(d["layer"]) == 4  # lines, rules, two labels
    s = text(chart)
    assert "noise edge (Marchenko-Pastur)" in s and "Gavish-Donoho" in s
    data = d["datasets"][lines["data"]["name"]]
    assert min(v["value"] for v in data) > 0


def test_spectra_chart_without_noise(spectrum):
    d = spec(charts.spectra_chart(spectrum[spectrum.role == "base"], None))
    assert len(d["layer"]) == 1
    assert d["layer"][0]["encoding"]["color"]["scale"]["range"] == [
        charts.ROLE_COLOR["base"]]


def test_energy_chart():
    energy = pd.DataFrame({"rank": [1, 2, 3, 4], "share": [0.5, 0.8, 0.95, 1.0]})
    lora = pd.DataFrame({"lora_rank": [1, 4], "energy_share": [0.5, 1.0]})
    d = spec(charts.energy_chart(energy, lora, signal_rank=2))
    assert len(d["layer"]) == 4
    assert d["layer"][0]["mark"]["color"] == charts.ROLE_COLOR["delta"]
    assert d["layer"][0]["encoding"]["y"]["scale"]["domain"] == [0, 1]
    assert "signal rank 2" in text(charts.energy_chart(energy, lora, 2))
    assert len(spec(charts.energy_chart(energy, None, None))["layer"]) == 1


@pytest.fixture
def ppl() -> pd.DataFrame:
    return pd.DataFrame({
        "role": ["base", "sft"] * 4, "post_id": [1, 1, 2, 2, 3, 3, 4, 4],
        "grp": ["low"] * 4 + ["high"] * 4, "n_tokens": 10,
        "perplexity": [10.0, 9.0, 12.0, 11.0, 8.0, 7.5, 9.0, 8.0],
        "bits_per_byte": [1.0, 0.9, 1.1, 1.0, 0.8, 0.7, 0.9, 0.8],
        "title": "t"})


def test_perplexity_chart_models_in_role_colours(ppl):
    d = spec(charts.perplexity_chart(ppl, "perplexity"))
    box = d["layer"][0]
    assert box["mark"]["type"] == "boxplot"
    assert box["encoding"]["color"]["scale"]["range"] == [
        charts.ROLE_COLOR["base"], charts.ROLE_COLOR["sft"]]
    assert box["encoding"]["y"]["scale"]["type"] == "log"
    d = spec(charts.perplexity_chart(ppl, "bits_per_byte", log=False))
    assert d["layer"][0]["encoding"]["y"]["title"] == "bits per byte"


def test_cumulative_and_token_charts():
    tokens = pd.DataFrame({"post_id": [1, 1, 2, 2], "grp": ["low", "low", "high",
                                                            "high"],
                           "position": [0, 1, 0, 1], "token_text": ["a", "b", "c",
                                                                    "d"],
                           "cum_delta": [0.1, -0.2, 0.3, 0.5]})
    d = spec(charts.cumulative_chart(tokens, highlight=2))
    assert len(d["layer"]) == 3
    assert d["layer"][2]["mark"]["color"] == charts.ROLE_COLOR["delta"]
    assert "token" in text(charts.cumulative_chart(tokens))
    one = tokens[tokens.post_id == 1].assign(base_logprob=[-1.0, -2.0],
                                             sft_logprob=[-0.9, -2.3],
                                             delta=[0.1, -0.3])
    assert '"on": "pointerover"' in text(charts.token_delta_chart(one))


def test_drift_chart_groups():
    df = pd.DataFrame({"layer": [0, 1, 0, 1], "grp": ["low", "low", "high", "high"],
                       "mean_rel_l2": [0.0, 0.1, 0.0, 0.2], "mean_cos": 1.0,
                       "n_posts": 3})
    d = spec(charts.drift_chart(df))
    assert d["encoding"]["color"]["scale"]["range"] == [charts.GROUP_COLOR["low"],
                                                        charts.GROUP_COLOR["high"]]
    assert spec(charts.drift_chart(df, "mean_cos"))["encoding"]["y"]["field"] == \
        "mean_cos"


def test_token_html_escapes_and_shades():
    df = pd.DataFrame({"position": [0, 1, 2], "token_text": ["<b>x", " &y", None],
                       "base_logprob": [-1.0, -1.0, -1.0],
                       "sft_logprob": [0.0, -3.0, -1.0], "delta": [1.0, -2.0, 0.0]})
    out = charts.token_html(df, clip=2.0)
    assert "<b>x" not in out and "&lt;b&gt;x" in out and "&amp;y" in out
    assert out.count("<span title=") == 3
    assert "rgba(245,133,24,0.42)" in out  # SFT orange at half strength
    assert "rgba(76,120,168,0.85)" in out  # base blue, clipped at full strength


def test_training_chart_series_colours_and_perplexity():
    """Pretraining then SFT on one axis: each (phase, measure) is a series in its
    phase's colour; NULL (not evaluated) points are dropped, exp(loss) on a log axis."""
    rows = []
    for role, offset in (("base", 0), ("sft", 3)):
        for step in range(4):
            held = step in (0, 3)
            rows.append({"role": role, "global_step": step + offset,
                         "tokens_seen": 100 * step,
                         "train_loss": None if step == 0 else 5.0 - step,
                         "heldout_post_loss": 6.0 - step if held else None,
                         "heldout_answer_loss": 5.5 - step if held else None})
    df = pd.DataFrame(rows)
    s = spec(charts.training_chart(df))
    data = next(iter(s["datasets"].values()))
    assert len(data) == 2 * 3 + 2 * 2 + 2 * 2  # batch losses, then 2 evals x 2 measures
    assert {d["series"] for d in data} == {label for label, _, _ in
                                           charts.TRAINING_SERIES.values()}
    color = s["encoding"]["color"]["scale"]
    base = [c for label, c in zip(color["domain"], color["range"], strict=True)
            if label.startswith("pretraining")]
    assert set(base) == {charts.ROLE_COLOR["base"]}
    assert s["encoding"]["y"]["scale"]["type"] == "linear"
    ppl = spec(charts.training_chart(df, perplexity=True))
    assert ppl["encoding"]["y"]["scale"]["type"] == "log"
    values = sorted(d["value"] for d in next(iter(ppl["datasets"].values())))
    assert values[0] == pytest.approx(math.exp(2.0))  # the batch loss at step 3


def test_esd_alpha_chart_roles_band_and_missing_fits():
    """One line per role in the role colours over the 2-6 band; a layer whose fit
    failed (alpha NULL) leaves a gap, not a zero."""
    df = pd.DataFrame({"layer": [0, 1, 2], "depth": [0, 1 / 3, 2 / 3],
                       "base_alpha": [2.5, 3.0, 3.5], "sft_alpha": [2.4, None, 3.1],
                       "delta_alpha": [1.5, 1.6, 1.7]})
    d = spec(charts.esd_alpha_chart(df))
    band, lines = d["layer"]
    band_rows = d["datasets"][band["data"]["name"]]
    assert (band_rows[0]["lo"], band_rows[0]["hi"]) == (2.0, 6.0)
    assert lines["encoding"]["color"]["scale"]["range"] == [
        charts.ROLE_COLOR[r] for r in ("base", "sft", "delta")]
    rows = d["datasets"][lines["data"]["name"]]
    assert len(rows) == 8
    sft = {r["layer"]: r["alpha"] for r in rows if r["role"] == "sft"}
    assert sft == {0: 2.4, 2: 3.1}


def test_esd_tail_chart_shares_fit_line_and_bulk_edge():
    """Values s = 4, 2, 1, 0.5 (n = 4): lambda = 16, 4, 1, 0.25 with shares 1/4,
    2/4, 3/4, 1. A fit alpha = 2, xmin = 4, n_tail = 2 of 4 draws the line from
    (4, 2/4) to (16, 2/4 * (16/4)^-1 = 1/8); the bulk edge 1.5 is a rule at
    lambda = 1.5."""
    values = pd.DataFrame({"role": ["base"] * 4, "idx": [1, 2, 3, 4],
                           "value": [4.0, 2.0, 1.0, 0.5]})
    fits = pd.DataFrame({"role": ["base"], "alpha": [2.0], "xmin": [4.0],
                         "n_tail": [2], "n_evals": [4], "mp_bulk_max": [1.5]})
    d = spec(charts.esd_tail_chart(values, fits))
    tail, fit, edge = d["layer"]
    rows = d["datasets"][tail["data"]["name"]]
    assert sorted((r["lam"], r["share"]) for r in rows) == [
        (0.25, 1.0), (1.0, 0.75), (4.0, 0.5), (16.0, 0.25)]
    assert tail["encoding"]["x"]["scale"]["type"] == "log"
    line = d["datasets"][fit["data"]["name"]]
    assert [(r["lam"], r["share"]) for r in line] == [(4.0, 0.5), (16.0, 0.125)]
    assert d["datasets"][edge["data"]["name"]][0]["lam"] == 1.5


def test_esd_tail_chart_without_a_fit():
    """A failed fit (alpha NULL) draws the tail alone."""
    values = pd.DataFrame({"role": ["delta"] * 2, "idx": [1, 2], "value": [1.0, 0.5]})
    fits = pd.DataFrame({"role": ["delta"], "alpha": [None], "xmin": [None],
                         "n_tail": [None], "n_evals": [2], "mp_bulk_max": [None]})
    d = spec(charts.esd_tail_chart(values, fits))
    assert "layer" in d and len(d["layer"]) == 1


# --- charts that read: scales from 0, rank as a share, chance, labels --------------

def test_heatmap_linear_scale_starts_at_zero(cells):
    """A magnitude (relative change 0.01 ... 0.03) is coloured from 0, not stretched
    over its own range; the colour bar has a title."""
    rect = spec(charts.heatmap(cells, "relative_frobenius_change"))["layer"][0]
    color = rect["encoding"]["color"]
    assert color["scale"]["domain"] == [0, pytest.approx(0.03)]
    assert color["legend"]["title"] == "relative Frobenius change"


def test_heatmap_rank_as_share_of_full_rank(cells):
    """Signal rank 2 of an 8 x 16 matrix is 2 / min(8, 16) = 25% of full rank: the
    colour is that share on 0..1, the cell text the rank itself."""
    d = spec(charts.heatmap(cells, "delta_signal_rank"))
    rect, label = d["layer"]
    assert rect["encoding"]["color"]["field"] == "share_of_full_rank"
    assert rect["encoding"]["color"]["scale"]["domain"] == [0, 1]
    assert rect["encoding"]["color"]["legend"]["format"] == ".0%"
    assert label["encoding"]["text"]["field"] == "delta_signal_rank"
    rows = next(iter(d["datasets"].values()))
    row = next(r for r in rows if r["delta_signal_rank"] == 2)
    assert row["share_of_full_rank"] == pytest.approx(2 / 8)


def test_heatmap_log_colour_bar_has_three_ticks_and_a_title(cells):
    """Values 0.01 ... 0.03: ticks at both ends and their geometric mean 0.017."""
    legend = spec(charts.heatmap(cells, "relative_frobenius_change", log=True)
                  )["layer"][0]["encoding"]["color"]["legend"]
    assert legend["values"] == [0.01, pytest.approx(0.017), 0.03]
    assert legend["title"]


def test_heatmap_diverging_around_chance():
    """Enrichment 0.5 ... 4 on a log scale centred at 1: the domain is symmetric in
    ratio (1/4, 1, 4), so twice and half chance get colours equally far from it."""
    df = pd.DataFrame({"layer": [0, 0, 1], "module": ["q_proj", "k_proj", "q_proj"],
                       "enrichment": [0.5, 1.0, 4.0]})
    color = spec(charts.heatmap(df, "enrichment", log=True, diverging_at=1.0)
                 )["layer"][0]["encoding"]["color"]
    assert color["scale"]["type"] == "log"
    assert color["scale"]["domain"] == [0.25, 1.0, 4.0]


def test_heatmap_text_column():
    df = pd.DataFrame({"layer": [0], "module": ["q_proj"], "vs_null": [0.1],
                       "label": ["1 / 10"]})
    d = spec(charts.heatmap(df, "vs_null", text="label"))
    assert d["layer"][1]["encoding"]["text"]["field"] == "label"
    assert d["layer"][0]["encoding"]["color"]["scale"]["domain"] == [0, 1]


def test_layers_chart_constant_line_reads(cells):
    """Every layer at full rank: the axis starts at 0 and ticks read '128', not
    '128.000000'."""
    d = spec(charts.layers_chart(cells.assign(delta_signal_rank=128),
                                 "delta_signal_rank"))
    assert d["encoding"]["y"]["scale"] == {"zero": True}
    assert d["encoding"]["y"]["axis"]["format"] == ".3~g"


def test_perplexity_log_axis_spans_the_data(ppl):
    y = spec(charts.perplexity_chart(ppl, "perplexity", log=True))["layer"][0][
        "encoding"]["y"]
    assert y["scale"] == {"type": "log", "nice": False}


def test_training_legend_is_not_cut():
    df = pd.DataFrame({"role": ["base", "base", "sft"], "global_step": [1, 2, 3],
                       "tokens_seen": [10, 20, 30], "train_loss": [3.0, 2.5, 2.0],
                       "heldout_post_loss": [None, 2.6, 2.2],
                       "heldout_answer_loss": [None, None, 2.4]})
    enc = spec(charts.training_chart(df))["encoding"]
    assert enc["color"]["legend"]["labelLimit"] == 0
    assert enc["strokeDash"]["title"] is None  # merged into the colour legend


@pytest.mark.parametrize("raw, vocab, want", [
    ("Ġthe", True, "'\u2423the'"), ("Ċ", True, "'\\n'"), ("Ã©", True, "'é'"),
    ("\u2581the", True, "'\u2423the'"), (" the", False, "'\u2423the'"),
    ("a\tb", False, "'a\\tb'"), (None, False, "''")])
def test_show_token_one_rendering(raw, vocab, want):
    """A byte-level vocabulary entry (GPT-2's alphabet: 'Ġ' is the space byte 0x20,
    'Ċ' the newline 0x0A, 'Ã©' the UTF-8 bytes C3 A9 of 'é') reads as the text
    Token shift shows for the same token."""
    assert charts.show_token(raw, vocab=vocab) == want


def test_byte_level_alphabet_is_a_bijection():
    assert len(charts.BYTE_LEVEL) == 256
    assert sorted(charts.BYTE_LEVEL.values()) == list(range(256))
    assert charts.BYTE_LEVEL["Ġ"] == 0x20 and charts.BYTE_LEVEL["!"] == 0x21


def test_drift_difference_chart_has_its_interval_and_zero():
    df = pd.DataFrame({"layer": [0, 1], "group_a": "high", "group_b": "low",
                       "difference": [0.01, -0.02], "ci95_low": [-0.01, -0.03],
                       "ci95_high": [0.03, -0.01]})
    d = spec(charts.drift_difference_chart(df))
    kinds = [layer["mark"]["type"] if isinstance(layer["mark"], dict) else
             layer["mark"] for layer in d["layer"]]
    assert kinds == ["rule", "errorbar", "point"]
    assert d["layer"][1]["encoding"]["y2"]["field"] == "ci95_high"
    assert d["layer"][1]["encoding"]["y"]["title"] == "high - low (95% interval)"
