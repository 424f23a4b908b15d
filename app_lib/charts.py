"""Pure chart builders: a DataFrame in, an Altair chart out (no Streamlit, no SQL).

    from app_lib import charts
    st.altair_chart(charts.heatmap(df, "relative_frobenius_change"), width="stretch")

Colours are defined once here: W_base / the base model, W_sft / the SFT model and
dW / SFT-minus-base have the same colour on every page (`ROLE_COLOR`), the two post
groups likewise (`GROUP_COLOR`).
"""

from __future__ import annotations

import html
import math

import altair as alt
import pandas as pd

# --- one palette for the whole app -------------------------------------------------

ROLE_COLOR = {"base": "#4C78A8", "sft": "#F58518", "delta": "#8E44AD"}
ROLE_LABEL = {"base": "W_base", "sft": "W_sft", "delta": "dW = W_sft - W_base"}
MODEL_LABEL = {"base": "base", "sft": "SFT"}
GROUP_COLOR = {"low": "#B5473F", "high": "#2E8B57", "all": "#7F7F7F"}
GROUP_LABEL = {"low": "low score", "high": "high score", "all": "all posts"}
SEQUENTIAL = "viridis"
MODULE_ORDER = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                "down_proj", "embed_tokens", "lm_head",
                # fused projections (their parts fill the columns above), the router
                "qkv_proj", "c_attn", "query_key_value", "Wqkv", "W_pack",
                "gate_up_proj", "w13", "router"]

# What each heatmap / layer metric means, with its axis title.
METRICS: dict[str, str] = {
    "relative_frobenius_change": "relative Frobenius change ||dW||_F / ||W_base||_F",
    "relative_spectral_change": "relative spectral change ||dW||_2 / ||W_base||_2",
    "delta_stable_rank": "stable rank of dW",
    "delta_effective_rank": "effective rank of dW",
    "delta_signal_rank": "signal rank of dW (above the Gavish-Donoho threshold)",
    "delta_energy_rank_90": "rank holding 90% of ||dW||_F^2",
    "relative_signal_rank": "relative rank: signal rank(dW) / rank(W_base)",
    "relative_stable_rank": "relative stable rank: stable rank(dW) / of W_base",
    "relative_effective_rank": "relative effective rank: eff. rank(dW) / of W_base",
    "relative_energy_rank_90": "relative 90%-energy rank: dW / W_base",
    "delta_s_max": "spectral norm ||dW||_2",
    "base_s_max": "spectral norm ||W_base||_2",
    "base_stable_rank": "stable rank of W_base",
    "zero_fraction": "share of dW's entries exactly 0",
}


def _role_scale(roles: list[str] | None = None, labels: dict[str, str] | None = None
                ) -> alt.Scale:
    roles = roles or list(ROLE_COLOR)
    return alt.Scale(domain=[(labels or ROLE_LABEL)[r] for r in roles],
                     range=[ROLE_COLOR[r] for r in roles])


def _group_scale(groups) -> alt.Scale:
    order = [g for g in GROUP_COLOR if g in set(groups)] or list(GROUP_COLOR)
    return alt.Scale(domain=[GROUP_LABEL[g] for g in order],
                     range=[GROUP_COLOR[g] for g in order])


def module_list(modules) -> list[str]:
    """The module types present, in the projection order of MODULE_ORDER, unknown
    ones after them in their own order."""
    present = list(dict.fromkeys(modules))
    return [m for m in MODULE_ORDER if m in present] + [
        m for m in present if m not in MODULE_ORDER]


def _modules(df: pd.DataFrame) -> list[str]:
    return module_list(df["module"])


def metric_title(metric: str) -> str:
    return METRICS.get(metric, metric.replace("_", " "))


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet (as in its bytes_to_unicode): each byte's
    stand-in character -> the byte. Printable Latin-1 bytes stand for themselves;
    the others (space, newline, ...) map to U+0100 onwards, so a space reads 'Ġ'."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
            *range(ord("\u00ae"), ord("\u00ff") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


BYTE_LEVEL = _byte_level_alphabet()


def vocab_text(token) -> str:
    """A vocabulary entry of a byte-level BPE tokenizer as the text it stands for
    ('Ġthe' -> ' the', 'Ċ' -> newline, 'Ã©' -> 'é'), or of a SentencePiece one
    ('▁the' -> ' the'); other strings unchanged."""
    s = "" if token is None or pd.isna(token) else str(token)
    if s and all(ch in BYTE_LEVEL for ch in s):
        return bytes(BYTE_LEVEL[ch] for ch in s).decode("utf-8", errors="replace")
    return s.replace("\u2581", " ")


def show_token(text, *, vocab: bool = False) -> str:
    """A token as a readable label, the same on every page: whitespace made visible
    (a space as '\u2423', a newline as '\\n'), quotes around it. `vocab`: the
    text is a raw byte-level vocabulary entry (marts.fct_direction_tokens), decoded
    first."""
    s = vocab_text(text) if vocab else (
        "" if text is None or pd.isna(text) else str(text))
    return repr(s.replace(" ", "\u2423"))[1:-1].join("''")


# --- weights -----------------------------------------------------------------------

# Ranks of dW whose full rank min(m, n) differs between module types: coloured as a
# share of it, so a k/v projection at its full 64 does not look "low" beside a
# 128-wide q_proj; the cell text keeps the rank itself.
RANK_METRICS = {"delta_stable_rank", "delta_effective_rank", "delta_signal_rank",
                "delta_energy_rank_90", "delta_numerical_rank"}


# Colour fields on a fixed 0..1 scale: a share of full rank, intruders / their null.
UNIT_FIELDS = {"share_of_full_rank", "vs_null"}


def heatmap(df: pd.DataFrame, metric: str, *, log: bool = False,
            columns: str = "module", text: str | None = None,
            diverging_at: float | None = None, legend_title: str | None = None,
            text_format: str = ".3~g") -> alt.Chart:
    """Layer (rows, 0 on top) x module type (columns), coloured by `metric`.

    df: fct_layer_module_metrics rows of one pair (layer, module, metric, ...); or,
    with columns="expert", fct_expert_metrics rows of one pair and module: layer x
    expert. A linear scale starts at 0 (the cells compare magnitudes); a rank of dW
    (RANK_METRICS, with n_rows and n_cols) is coloured as its share of full rank
    min(m, n), the rank itself printed. `text`: a column printed in the cells instead
    of the value; `diverging_at`: a diverging colour scale centred there (log scale
    when `log`), e.g. 1 for a ratio to chance."""
    data = df.copy()
    n_layers = int(data["layer"].max()) + 1 if len(data) else 1
    step = max(12, min(30, 640 // n_layers))  # pixels per layer row
    color_field, title = metric, legend_title
    if metric in RANK_METRICS and {"n_rows", "n_cols"} <= set(data.columns):
        full = data[["n_rows", "n_cols"]].min(axis=1).astype(float)
        data["share_of_full_rank"] = data[metric] / full.where(full > 0)
        color_field, title = "share_of_full_rank", title or "share of full rank"
    if log:
        data = data[data[color_field] > 0]
    tooltip = [alt.Tooltip("layer:O", title="layer"),
               alt.Tooltip("module:N", title="module"),
               alt.Tooltip(f"{metric}:Q", title=metric, format=".4g")]
    if color_field != metric:
        tooltip.append(alt.Tooltip(f"{color_field}:Q", format=".1%"))
    if columns == "expert":
        tooltip.insert(2, alt.Tooltip("expert:O", title="expert"))
        x = alt.X("expert:O", title="expert", axis=alt.Axis(labelAngle=0, orient="top"))
    else:
        x = alt.X("module:N", sort=_modules(data) if len(data) else None,
                  title="module type", axis=alt.Axis(labelAngle=0, orient="top"))
    for col, fmt in (("relative_frobenius_change", ".4f"),
                     ("relative_spectral_change", ".4f"),
                     ("delta_signal_rank", "d"), ("n_rows", "d"), ("n_cols", "d")):
        if col in data and col not in (metric, color_field):
            tooltip.append(alt.Tooltip(f"{col}:Q", title=col, format=fmt))
    values = data[color_field].dropna()
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    scale, fmt = _heat_scale(color_field, lo, hi, log, diverging_at)
    # shorter than the grid, so its end labels stay inside the chart
    legend = alt.Legend(orient="right", format=fmt, title=title or _short(metric),
                        titleLimit=0, gradientLength=max(60, min(320, step * n_layers
                                                                 - 30)),
                        values=_legend_values(lo, hi, log, diverging_at) or alt.Undefined)
    base = alt.Chart(data).encode(x=x, y=alt.Y("layer:O", title="layer (block index)"))
    rect = base.mark_rect(stroke="white", strokeWidth=0.5).encode(
        color=alt.Color(f"{color_field}:Q", scale=scale, legend=legend),
        tooltip=tooltip,
    )
    layers = [rect]
    if n_layers <= 40 and len(data):
        dark = _dark_cells(color_field, lo, hi, log, diverging_at)
        label = (alt.Text(f"{text}:N") if text
                 else alt.Text(f"{metric}:Q", format=text_format))
        layers.append(base.mark_text(fontSize=10).encode(
            text=label, color=alt.condition(dark, alt.value("white"),
                                            alt.value("black")),
            tooltip=tooltip))
    return alt.layer(*layers).properties(
        title=alt.Title(metric_title(metric), anchor="start"),
        height=alt.Step(step))


def _short(metric: str) -> str:
    """A legend title: the measure's name without its formula."""
    return metric_title(metric).split(" ||")[0].split(": ")[0].split(" (")[0]


def _heat_scale(field: str, lo: float, hi: float, log: bool,
                diverging_at: float | None) -> tuple[alt.Scale, str]:
    if diverging_at is not None:
        # symmetric around the centre (in ratio when log), so equal colours mean
        # equal distance from it on either side
        if log and lo > 0:
            r = max(hi / diverging_at, diverging_at / lo, 1.5)
            dom = [diverging_at / r, diverging_at, diverging_at * r]
        else:
            r = max(hi - diverging_at, diverging_at - lo, 1e-12)
            dom = [diverging_at - r, diverging_at, diverging_at + r]
        return alt.Scale(scheme="purplegreen", type="log" if log else "linear",
                         domain=dom, reverse=False), ".3~g"
    if log:
        return alt.Scale(scheme=SEQUENTIAL, type="log"), ".2~g"
    top = 1.0 if field in UNIT_FIELDS else hi
    return (alt.Scale(scheme=SEQUENTIAL, domain=[0, top if top > 0 else 1]),
            ".0%" if field == "share_of_full_rank" else ".3~g")


def _legend_values(lo: float, hi: float, log: bool, diverging_at: float | None
                   ) -> list[float] | None:
    """Ticks for a log colour bar (Vega draws one or two between close powers of
    ten): both ends and their geometric middle."""
    if not log or lo <= 0 or hi <= lo:
        return None
    if diverging_at is not None:
        r = max(hi / diverging_at, diverging_at / lo, 1.5)
        return [round(diverging_at / r, 3), diverging_at, round(diverging_at * r, 3)]
    return [float(f"{v:.2g}") for v in (lo, math.sqrt(lo * hi), hi)]


def _dark_cells(field: str, lo: float, hi: float, log: bool,
                diverging_at: float | None):
    """The cells whose colour is dark enough for white text."""
    if diverging_at is not None:
        if log and lo > 0:
            r = max(hi / diverging_at, diverging_at / lo, 1.5)
            return ((alt.datum[field] > diverging_at * r ** 0.5)
                    | (alt.datum[field] < diverging_at / r ** 0.5))
        r = max(hi - diverging_at, diverging_at - lo, 1e-12)
        return ((alt.datum[field] > diverging_at + r / 2)
                | (alt.datum[field] < diverging_at - r / 2))
    if log and lo > 0:
        return alt.datum[field] < math.sqrt(lo * hi)
    top = 1.0 if field in UNIT_FIELDS else hi
    return alt.datum[field] < top / 2


def layers_chart(df: pd.DataFrame, metric: str, *, log: bool = False) -> alt.Chart:
    """`metric` against depth = layer / n_layers, one line per pair, coloured by
    size (legend smallest first; click a pair in it to pick it out).

    df: pair, size_billions, layer, depth, metric (fct_layer_module_metrics rows of
    one module type, or the medians over module types)."""
    data = df.dropna(subset=[metric]).copy()
    if log:
        data = data[data[metric] > 0]
    order = (data.drop_duplicates("pair").sort_values("size_billions")["pair"]
             .tolist())
    pick = alt.selection_point(fields=["pair"], bind="legend")
    return alt.Chart(data).mark_line(point=alt.OverlayMarkDef(size=30),
                                     strokeWidth=2).encode(
        x=alt.X("depth:Q", title="depth (layer / n_layers)",
                scale=alt.Scale(domain=[0, 1])),
        # from 0 (magnitudes), ticks in short form: a constant line (a signal rank
        # at full rank in every layer) gets an axis, not one "128.000000" tick
        y=alt.Y(f"{metric}:Q", title=metric_title(metric),
                axis=alt.Axis(format=".3~g", titleLimit=0),
                scale=alt.Scale(type="log", nice=False) if log
                else alt.Scale(zero=True)),
        color=alt.Color("pair:N", sort=order, title="pair (by size)",
                        scale=alt.Scale(scheme="plasma"),
                        legend=alt.Legend(orient="right", symbolStrokeWidth=3)),
        opacity=alt.condition(pick, alt.value(0.95), alt.value(0.12)),
        tooltip=[alt.Tooltip("pair:N"),
                 alt.Tooltip("size_billions:Q", title="size (B)", format=".3~g"),
                 alt.Tooltip("layer:Q", format="d"),
                 alt.Tooltip("depth:Q", format=".2f"),
                 alt.Tooltip(f"{metric}:Q", format=".4g")],
    ).add_params(pick).properties(height=420)


def spectra_chart(df: pd.DataFrame, noise: dict[str, float] | None = None,
                  ) -> alt.Chart:
    """Singular values s_i against i on log-log axes, one line per role, with the
    noise edge of dW (Marchenko-Pastur) and the Gavish-Donoho threshold drawn.

    df: role ('base'|'sft'|'delta'), idx (1-based), value. noise: optional
    {'mp_edge': ..., 'gd_threshold': ...} (absent or None: not drawn)."""
    data = df[df["value"] > 0].copy()
    data["matrix"] = data["role"].map(ROLE_LABEL)
    roles = [r for r in ROLE_COLOR if r in set(data["role"])] or list(ROLE_COLOR)
    zoom = alt.selection_interval(bind="scales")
    n_max = int(data["idx"].max()) if len(data) else 1
    dash = {"base": [1, 0], "sft": [6, 3], "delta": [1, 0]}
    lines = alt.Chart(data).mark_line(strokeWidth=2, interpolate="step-after").encode(
        x=alt.X("idx:Q", title="index i (largest first)",
                scale=alt.Scale(type="log", domain=[1, max(n_max, 2)], nice=False)),
        strokeDash=alt.StrokeDash("matrix:N", title=None, scale=alt.Scale(
            domain=[ROLE_LABEL[r] for r in roles], range=[dash[r] for r in roles])),
        y=alt.Y("value:Q", title="singular value s_i", scale=alt.Scale(type="log")),
        color=alt.Color("matrix:N", title=None, scale=_role_scale(roles),
                        legend=alt.Legend(orient="top")),
        tooltip=[alt.Tooltip("matrix:N"), alt.Tooltip("idx:Q", title="i"),
                 alt.Tooltip("value:Q", title="s_i", format=".4g")],
    ).add_params(zoom)
    layers = [lines]
    rules = [(name, float(v)) for name, v in (noise or {}).items()
             if v is not None and not pd.isna(v) and v > 0]
    if rules:
        names = {"mp_edge": "noise edge (Marchenko-Pastur)",
                 "gd_threshold": "signal threshold (Gavish-Donoho)"}
        rd = pd.DataFrame({"what": [names.get(n, n) for n, _ in rules],
                           "value": [v for _, v in rules]}).sort_values("value")
        rule = alt.Chart(rd).encode(y="value:Q")
        layers.append(rule.mark_rule(color=ROLE_COLOR["delta"], strokeDash=[6, 4],
                                     strokeWidth=1.2).encode(
            tooltip=[alt.Tooltip("what:N"),
                     alt.Tooltip("value:Q", format=".4g")]))
        # the lower line's label below it, the upper one's above (they are close)
        for i, (what, value) in enumerate(zip(rd["what"], rd["value"], strict=True)):
            one = alt.Chart(pd.DataFrame({"what": [what], "value": [value]}))
            layers.append(one.mark_text(
                align="left", baseline="top" if i == 0 and len(rd) > 1 else "bottom",
                dx=4, dy=3 if i == 0 and len(rd) > 1 else -3,
                color=ROLE_COLOR["delta"], fontSize=11).encode(
                x=alt.value(0), y="value:Q", text="what:N"))
    return alt.layer(*layers).properties(height=420)


ESD_ROLES = ("base", "sft", "delta")


def esd_alpha_chart(df: pd.DataFrame, roles: tuple[str, ...] = ESD_ROLES
                    ) -> alt.Chart:
    """WeightWatcher's power-law alpha of the ESD against depth, one line per role
    (W_base, W_sft, dW), over a band at WeightWatcher's well-trained range 2-6.

    df: layer, depth, and `<role>_alpha` for each role (fct_layer_module_esd rows
    of one pair and module type, or their medians over module types)."""
    long = df.melt(id_vars=["layer", "depth"],
                   value_vars=[f"{r}_alpha" for r in roles if f"{r}_alpha" in df],
                   var_name="role", value_name="alpha").dropna(subset=["alpha"])
    long["role"] = long["role"].str.removesuffix("_alpha")
    long["matrix"] = long["role"].map(ROLE_LABEL)
    shown = [r for r in roles if r in set(long["role"])] or list(roles)
    band = alt.Chart(pd.DataFrame({"lo": [2.0], "hi": [6.0],
                                   "what": ["WeightWatcher's 2-6 range"]})
                     ).mark_rect(color="#2E8B57", opacity=0.08).encode(
        y="lo:Q", y2="hi:Q", tooltip=[alt.Tooltip("what:N")])
    lines = alt.Chart(long).mark_line(point=alt.OverlayMarkDef(size=30),
                                      strokeWidth=2).encode(
        x=alt.X("depth:Q", title="depth (layer / n_layers)",
                scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("alpha:Q", title="power-law alpha of the ESD (WeightWatcher)",
                scale=alt.Scale(zero=False)),
        color=alt.Color("matrix:N", title=None, scale=_role_scale(shown),
                        legend=alt.Legend(orient="top")),
        tooltip=[alt.Tooltip("matrix:N"), alt.Tooltip("layer:Q", format="d"),
                 alt.Tooltip("alpha:Q", format=".3f")])
    return alt.layer(band, lines).properties(height=360)


def traps_chart(df: pd.DataFrame) -> alt.Chart:
    """WeightWatcher's correlation traps against depth: W_base's and W_sft's counts
    side by side per layer (bars offset by role). 0 everywhere is the expected
    value: the shuffled W of a matrix without large entries is a pure MP bulk.

    df: layer, depth, base_n_traps, sft_n_traps, n_matrices (traps_layers)."""
    long = df.melt(id_vars=["layer", "depth", "n_matrices"],
                   value_vars=["base_n_traps", "sft_n_traps"], var_name="role",
                   value_name="traps")
    long["role"] = long["role"].str.removesuffix("_n_traps")
    long["matrix"] = long["role"].map(ROLE_LABEL)
    return alt.Chart(long).mark_bar().encode(
        x=alt.X("layer:O", title="layer"),
        xOffset=alt.XOffset("matrix:N"),
        y=alt.Y("traps:Q", title="correlation traps", scale=alt.Scale(domainMin=0),
                axis=alt.Axis(tickMinStep=1, format="d")),
        color=alt.Color("matrix:N", title=None, scale=_role_scale(["base", "sft"]),
                        legend=alt.Legend(orient="top")),
        tooltip=[alt.Tooltip("matrix:N"), alt.Tooltip("layer:Q", format="d"),
                 alt.Tooltip("traps:Q", format="d"),
                 alt.Tooltip("n_matrices:Q", title="matrices", format="d")],
    ).properties(height=280)


def esd_tail_chart(values: pd.DataFrame, fits: pd.DataFrame) -> alt.Chart:
    """The ESD's tail on log-log axes: the share of eigenvalues lambda = s^2 at or
    above each one (i / n for the i-th largest), per role, with the fitted power
    law (n_tail / n) (lambda / xmin)^(1 - alpha) from xmin on, dashed, and the
    Marchenko-Pastur bulk edge of each role as a rule.

    values: role, idx (1-based, largest first), value (singular values; the
    largest idx of a role is its n). fits: role, alpha, xmin, n_tail, n_evals,
    mp_bulk_max (fct_matrix_esd rows)."""
    data = values[values["value"] > 0].copy()
    n = data.groupby("role")["idx"].transform("max")
    data["lam"] = data["value"] ** 2
    data["share"] = data["idx"] / n
    data["matrix"] = data["role"].map(ROLE_LABEL)
    roles = [r for r in ROLE_COLOR if r in set(data["role"])] or list(ROLE_COLOR)
    fit_rows = []
    for f in fits.dropna(subset=["alpha"]).itertuples():
        top = data.loc[data["role"] == f.role, "lam"].max()
        if pd.isna(top):
            continue
        for lam in (f.xmin, top):
            fit_rows.append({"matrix": ROLE_LABEL[f.role], "lam": lam,
                             "share": f.n_tail / f.n_evals
                             * (lam / f.xmin) ** (1 - f.alpha),
                             "alpha": f.alpha})
    x = alt.X("lam:Q", title="eigenvalue lambda = s^2", scale=alt.Scale(type="log"))
    y = alt.Y("share:Q", title="share of eigenvalues >= lambda",
              scale=alt.Scale(type="log"))
    color = alt.Color("matrix:N", title=None, scale=_role_scale(roles),
                      legend=alt.Legend(orient="top"))
    layers = [alt.Chart(data).mark_line(strokeWidth=2, interpolate="step-after"
                                        ).encode(
        x=x, y=y, color=color,
        tooltip=[alt.Tooltip("matrix:N"), alt.Tooltip("idx:Q", title="i"),
                 alt.Tooltip("lam:Q", title="lambda", format=".4g")])]
    if fit_rows:
        layers.append(alt.Chart(pd.DataFrame(fit_rows)).mark_line(
            strokeDash=[6, 3], strokeWidth=1.5).encode(
            x=x, y=y, color=color, detail="matrix:N",
            tooltip=[alt.Tooltip("matrix:N"),
                     alt.Tooltip("alpha:Q", title="power law alpha", format=".3f")]))
    edges = fits.dropna(subset=["mp_bulk_max"])
    if len(edges):
        rd = pd.DataFrame({"matrix": edges["role"].map(ROLE_LABEL),
                           "lam": edges["mp_bulk_max"]})
        layers.append(alt.Chart(rd).mark_rule(strokeDash=[2, 2]).encode(
            x="lam:Q", color=color,
            tooltip=[alt.Tooltip("matrix:N"),
                     alt.Tooltip("lam:Q", title="MP bulk edge", format=".4g")]))
    return alt.layer(*layers).properties(height=360)


def energy_chart(df: pd.DataFrame, lora: pd.DataFrame | None = None,
                 signal_rank: float | None = None) -> alt.Chart:
    """The energy curve of dW: share of ||dW||_F^2 held by its top-k singular
    values, against k (log axis); LoRA ranks as points, the signal rank as a rule.

    df: rank, share. lora: lora_rank, energy_share (optional)."""
    data = df.dropna(subset=["share"])
    n_max = int(data["rank"].max()) if len(data) else 1
    zoom = alt.selection_interval(bind="scales", encodings=["x"])
    color = ROLE_COLOR["delta"]
    x = alt.X("rank:Q", title="rank k (top-k singular values of dW)",
              scale=alt.Scale(type="log", domain=[1, max(n_max, 2)], nice=False))
    y = alt.Y("share:Q", title="share of ||dW||_F^2 captured",
              scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"))
    layers = [alt.Chart(data).mark_line(color=color, strokeWidth=2).encode(
        x=x, y=y, tooltip=[alt.Tooltip("rank:Q", title="k"),
                           alt.Tooltip("share:Q", format=".2%")]).add_params(zoom)]
    if lora is not None and len(lora):
        ld = lora.rename(columns={"lora_rank": "rank", "energy_share": "share"})
        layers.append(alt.Chart(ld).mark_point(filled=True, size=60, color=color,
                                               stroke="white").encode(
            x=x, y=y, tooltip=[alt.Tooltip("rank:Q", title="LoRA rank r"),
                               alt.Tooltip("share:Q", title="energy share",
                                           format=".2%")]))
    if signal_rank is not None and not pd.isna(signal_rank) and signal_rank >= 1:
        sd = pd.DataFrame({"rank": [float(signal_rank)],
                           "what": [f"signal rank {int(signal_rank)}"]})
        rule = alt.Chart(sd).encode(x="rank:Q")
        layers.append(rule.mark_rule(color="#555", strokeDash=[4, 3]).encode(
            tooltip=["what:N"]))
        # left of its rule: near the right end a label after it was cut
        layers.append(rule.mark_text(align="right", dx=-4, y=12, color="#555",
                                     fontSize=11).encode(text="what:N"))
    return alt.layer(*layers).properties(height=300)


# --- behaviour ---------------------------------------------------------------------

def perplexity_chart(df: pd.DataFrame, measure: str = "perplexity",
                     *, log: bool = True) -> alt.Chart:
    """Per group, box plots of `measure` per post for the base and SFT models, the
    posts drawn over them.

    df: role ('base'|'sft'), grp, post_id, measure (post_perplexity rows)."""
    data = df.dropna(subset=[measure]).copy()
    data["model"] = data["role"].map(MODEL_LABEL)
    data["group"] = data["grp"].map(lambda g: GROUP_LABEL.get(g, g))
    titles = {"perplexity": "perplexity exp(-mean log p)",
              "bits_per_byte": "bits per byte", "bits_per_token": "bits per token"}
    roles = [r for r in ("base", "sft") if r in set(data["role"])] or ["base", "sft"]
    color = alt.Color("model:N", title="model",
                      scale=_role_scale(roles, MODEL_LABEL),
                      legend=alt.Legend(orient="top"))
    # a log axis only spans the data (bits per byte 1.3-2 drew an axis to 10)
    y = alt.Y(f"{measure}:Q", title=titles.get(measure, measure),
              scale=alt.Scale(type="log", nice=False) if log
              else alt.Scale(zero=False))
    x = alt.X("group:N", title=None, sort=[GROUP_LABEL[g] for g in GROUP_COLOR],
              axis=alt.Axis(labelAngle=0, labelFontSize=12))
    box = alt.Chart(data).mark_boxplot(size=38, opacity=0.55, extent="min-max",
                                       median=alt.MarkConfig(color="black")).encode(
        x=x, xOffset=alt.XOffset("model:N", sort=[MODEL_LABEL[r] for r in roles]),
        y=y, color=color)
    dots = alt.Chart(data).mark_circle(size=26, opacity=0.8).encode(
        x=x, xOffset=alt.XOffset("model:N", sort=[MODEL_LABEL[r] for r in roles]),
        y=y, color=color,
        tooltip=[alt.Tooltip("post_id:Q", format="d"), "model:N", "group:N",
                 alt.Tooltip(f"{measure}:Q", format=".4g"),
                 alt.Tooltip("n_tokens:Q", format="d")]
        + ([alt.Tooltip("title:N")] if "title" in data else []))
    return alt.layer(box, dots).properties(height=380)


# What each training-curve series is, in legend order, with its colour and dash.
TRAINING_SERIES = {
    ("base", "train_loss"): ("pretraining, batch", ROLE_COLOR["base"], [1, 0]),
    ("base", "heldout_post_loss"): ("pretraining, held-out posts", ROLE_COLOR["base"],
                                    [6, 3]),
    ("base", "heldout_answer_loss"): ("pretraining, held-out answers (chat)",
                                      ROLE_COLOR["base"], [2, 2]),
    ("sft", "train_loss"): ("SFT, batch", ROLE_COLOR["sft"], [1, 0]),
    ("sft", "heldout_post_loss"): ("SFT, held-out posts", ROLE_COLOR["sft"], [6, 3]),
    ("sft", "heldout_answer_loss"): ("SFT, held-out answers (chat)", ROLE_COLOR["sft"],
                                     [2, 2]),
}


def training_chart(df: pd.DataFrame, *, perplexity: bool = False) -> alt.Chart:
    """Loss curves of a trained pair on one step axis: pretraining (base colour) then
    SFT (SFT colour); the batch loss solid, held-out posts dashed, held-out chat
    answers dotted. `perplexity`: exp(loss) on a log axis instead of the loss.

    df: role, global_step, tokens_seen, and train_loss, heldout_post_loss,
    heldout_answer_loss (fct_training_curve rows; NULL where not evaluated)."""
    long = df.melt(id_vars=["role", "global_step", "tokens_seen"],
                   value_vars=[c for _, c in TRAINING_SERIES if c in df],
                   var_name="measure", value_name="loss").dropna(subset=["loss"])
    long = long.drop_duplicates(["role", "global_step", "measure"])
    keys = [k for k in TRAINING_SERIES if k in set(zip(long["role"], long["measure"],
                                                       strict=True))]
    long["series"] = [TRAINING_SERIES[(r, m)][0]
                      for r, m in zip(long["role"], long["measure"], strict=True)]
    long["value"] = long["loss"].map(math.exp) if perplexity else long["loss"]
    domain = [TRAINING_SERIES[k][0] for k in keys]
    y_title = ("perplexity exp(mean NLL per token)" if perplexity
               else "loss: mean NLL per token (nats)")
    # the noisy batch loss light and thin, the held-out curves (fewer points) over it
    long["held_out"] = long["measure"] != "train_loss"
    return alt.Chart(long).mark_line(point=False).encode(
        x=alt.X("global_step:Q", title="optimizer step (pretraining, then SFT)"),
        strokeWidth=alt.condition("datum.held_out", alt.value(2.4), alt.value(1.0)),
        opacity=alt.condition("datum.held_out", alt.value(1.0), alt.value(0.45)),
        order=alt.Order("held_out:N"),
        y=alt.Y("value:Q", title=y_title,
                scale=alt.Scale(type="log" if perplexity else "linear", zero=False)),
        color=alt.Color("series:N", title=None, sort=domain,
                        scale=alt.Scale(domain=domain,
                                        range=[TRAINING_SERIES[k][1] for k in keys]),
                        legend=alt.Legend(orient="bottom", columns=2, labelLimit=0,
                                          symbolStrokeWidth=2.4)),
        strokeDash=alt.StrokeDash("series:N", sort=domain, title=None,
                                  scale=alt.Scale(domain=domain, range=[
                                      TRAINING_SERIES[k][2] for k in keys])),
        tooltip=["series:N", alt.Tooltip("global_step:Q", title="step"),
                 alt.Tooltip("tokens_seen:Q", format=",d", title="tokens seen"),
                 alt.Tooltip("value:Q", format=".4g",
                             title="perplexity" if perplexity else "loss")],
    ).properties(height=320).interactive()


def cumulative_chart(df: pd.DataFrame, highlight: int | None = None) -> alt.Chart:
    """Cumulative SFT-minus-base log-prob along each post (the seed's plot): one
    line per post, coloured by group; `highlight` drawn on top in dW's colour.
    Hover shows the token.

    df: post_id, grp, position, cum_delta, token_text."""
    data = df.copy()
    data["group"] = data["grp"].map(lambda g: GROUP_LABEL.get(g, g))
    x = alt.X("position:Q", title="token position in the post")
    y = alt.Y("cum_delta:Q",
              title="cumulative log p_SFT - log p_base (nats)")
    tip = [alt.Tooltip("post_id:Q", format="d"), alt.Tooltip("position:Q"),
           alt.Tooltip("token_text:N", title="token"),
           alt.Tooltip("cum_delta:Q", format=".3f", title="cumulative delta")]
    lines = alt.Chart(data).mark_line(strokeWidth=1.2, opacity=0.45).encode(
        x=x, y=y, detail="post_id:N",
        color=alt.Color("group:N", title=None, scale=_group_scale(data["grp"]),
                        legend=alt.Legend(orient="top")),
        tooltip=tip)
    zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(
        color="#888", strokeDash=[2, 2]).encode(y="y:Q")
    layers = [zero, lines]
    if highlight is not None:
        one = data[data["post_id"] == highlight]
        layers.append(alt.Chart(one).mark_line(
            color=ROLE_COLOR["delta"], strokeWidth=2.5).encode(x=x, y=y,
                                                               tooltip=tip))
    return alt.layer(*layers).properties(height=360).interactive()


def token_delta_chart(df: pd.DataFrame) -> alt.Chart:
    """One post: cumulative delta (line) along the tokens, the token under the
    pointer in the tooltip with both log-probs.

    df: position, token_text, base_logprob, sft_logprob, delta, cum_delta."""
    hover = alt.selection_point(on="pointerover", nearest=True, fields=["position"],
                                empty=False)
    x = alt.X("position:Q", title="token position")
    tip = [alt.Tooltip("position:Q"), alt.Tooltip("token_text:N", title="token"),
           alt.Tooltip("base_logprob:Q", title="log p base", format=".3f"),
           alt.Tooltip("sft_logprob:Q", title="log p SFT", format=".3f"),
           alt.Tooltip("delta:Q", title="SFT - base", format="+.3f"),
           alt.Tooltip("cum_delta:Q", title="cumulative", format="+.3f")]
    base = alt.Chart(df).encode(x=x)
    line = base.mark_line(color=ROLE_COLOR["delta"], strokeWidth=2).encode(
        y=alt.Y("cum_delta:Q", title="cumulative log p_SFT - log p_base (nats)"))
    points = base.mark_circle(size=70, color=ROLE_COLOR["delta"]).encode(
        y="cum_delta:Q", opacity=alt.condition(hover, alt.value(1), alt.value(0)),
        tooltip=tip).add_params(hover)
    zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(
        color="#888", strokeDash=[2, 2]).encode(y="y:Q")
    return alt.layer(zero, line, points).properties(height=300)


def drift_chart(df: pd.DataFrame, measure: str = "mean_rel_l2") -> alt.Chart:
    """Residual-stream drift between the two models by hidden-state index, one line
    per group. df: layer, grp, measure, n_posts."""
    titles = {"mean_rel_l2": "mean ||h_SFT - h_base|| / ||h_base||",
              "mean_cos": "mean cosine(h_SFT, h_base)",
              "pooled_rel_l2": "sqrt(sum ||dh||^2 / sum ||h_base||^2)"}
    data = df.copy()
    data["group"] = data["grp"].map(lambda g: GROUP_LABEL.get(g, g))
    return alt.Chart(data).mark_line(point=True, strokeWidth=2).encode(
        x=alt.X("layer:Q", title="hidden state (0 = embeddings, L = final)",
                axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y(f"{measure}:Q", title=titles.get(measure, measure),
                scale=alt.Scale(zero=measure != "mean_cos")),
        color=alt.Color("group:N", title=None, scale=_group_scale(data["grp"]),
                        legend=alt.Legend(orient="top")),
        tooltip=[alt.Tooltip("group:N"), alt.Tooltip("layer:Q", format="d"),
                 alt.Tooltip(f"{measure}:Q", format=".4g"),
                 alt.Tooltip("n_posts:Q", format="d", title="posts")],
    ).properties(height=380).interactive()


def drift_difference_chart(df: pd.DataFrame) -> alt.LayerChart:
    """Group a - group b of the posts' mean relative L2 distance by hidden-state
    index, each with its 95% Welch interval, against a rule at 0 (no difference).
    df: marts.fct_residual_drift_group_difference rows of one pair."""
    data = df.dropna(subset=["difference"]).copy()
    label = (f"{data['group_a'].iloc[0]} - {data['group_b'].iloc[0]}" if len(data)
             else "difference")
    x = alt.X("layer:Q", title="hidden state (0 = embeddings, L = final)",
              axis=alt.Axis(tickMinStep=1, format="d"))
    tip = [alt.Tooltip("layer:Q", format="d"),
           alt.Tooltip("difference:Q", format="+.4g", title=label),
           alt.Tooltip("ci95_low:Q", format="+.4g", title="95% low"),
           alt.Tooltip("ci95_high:Q", format="+.4g", title="95% high")]
    base = alt.Chart(data).encode(x=x)
    bars = base.mark_errorbar(ticks=True, color=ROLE_COLOR["delta"]).encode(
        y=alt.Y("ci95_low:Q", title=f"{label} (95% interval)"), y2="ci95_high:Q")
    points = base.mark_point(filled=True, size=60, color=ROLE_COLOR["delta"]).encode(
        y="difference:Q", tooltip=tip)
    zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(
        color="#888", strokeDash=[4, 4]).encode(y="y:Q")
    return alt.layer(zero, bars, points).properties(height=220)


def token_html(df: pd.DataFrame, clip: float = 2.0) -> str:
    """One post's tokens as HTML spans, each shaded towards the colour of the model
    that found it likelier (base or SFT), the stronger the larger |delta| (clipped
    at `clip` nats); the hover title gives both log-probs. Token text is escaped.

    df: position, token_text, base_logprob, sft_logprob, delta."""
    def rgba(hex_color: str, alpha: float) -> str:
        r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
        return f"rgba({r},{g},{b},{alpha:.2f})"

    spans = []
    for row in df.itertuples(index=False):
        delta = float(row.delta)
        alpha = min(abs(delta) / clip, 1.0) * 0.85
        color = ROLE_COLOR["sft"] if delta > 0 else ROLE_COLOR["base"]
        title = (f"#{row.position}: log p base {row.base_logprob:.3f}, "
                 f"SFT {row.sft_logprob:.3f}, delta {delta:+.3f}")
        text = html.escape(str(row.token_text if row.token_text is not None else ""))
        spans.append(f'<span title="{html.escape(title)}" style="background:'
                     f'{rgba(color, alpha)};border-radius:2px">{text}</span>')
    legend = (f'<div style="font-size:0.8em;margin-bottom:0.4em">'
              f'<span style="background:{rgba(ROLE_COLOR["sft"], 0.6)};padding:0 4px">'
              f'SFT likelier</span> &nbsp; <span style="background:'
              f'{rgba(ROLE_COLOR["base"], 0.6)};padding:0 4px">base likelier</span>'
              f' &nbsp; (full colour at |delta| &ge; {clip:g} nats; hover a token)'
              f'</div>')
    return (f'{legend}<div style="white-space:pre-wrap;line-height:1.7;'
            f'font-family:ui-monospace,monospace;font-size:0.85em">'
            f'{"".join(spans)}</div>')
