"""The demo's fine-tune over training, as `make demo` runs it: the shipped series
models/demo-steps (checkpoints of models/demo's own SFT run, ending at models/demo/sft)
is what its train.json says, and on the demo warehouse with make demo's series line
run (tests/conftest.py reads it from the Makefile) the "Over training" page draws
it, its onsets are NumPy's on the checkpoints, and no other page's pair picker offers
the series' runs."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from compute.arch.naming import parse_name
from compute.run.trajectory import parse_series
from tests.conftest import query

ROOT = Path(__file__).resolve().parent.parent
STEPS_DIR = ROOT / "models" / "demo-steps"
SERIES = "demo-steps"


@pytest.fixture
def wh(demo_series_warehouse) -> Path:
    """The demo warehouse with make demo's series (tests/conftest.py)."""
    return demo_series_warehouse


def test_shipped_series_is_what_its_train_json_says():
    """Every shipped file byte for byte; started from models/demo/base; the series'
    last step is models/demo/sft (the re-run reproduced it, compute.train_seed), its
    tokens seen and loss the shipped training log's last SFT row."""
    summary = json.loads((STEPS_DIR / "train.json").read_text())
    for rel, digest in summary["sha256"].items():
        assert hashlib.sha256((STEPS_DIR / rel).read_bytes()).hexdigest() == digest, rel
    base = ROOT / "models" / "demo" / "base" / "model.safetensors"
    assert summary["base"]["sha256"] == hashlib.sha256(base.read_bytes()).hexdigest()
    demo = json.loads((ROOT / "models" / "demo" / "train.json").read_text())
    assert summary["config"]["seed"] == demo["config"]["seed"]
    steps = parse_series(str(STEPS_DIR / "steps.toml"))
    final = (ROOT / "models" / "demo" / "sft").resolve()
    assert Path(steps[-1].model).resolve() == final
    last = (ROOT / "models" / "demo" / "training_log.csv").read_text().splitlines()[-1]
    role, step, _, tokens, *_ = last.split(",")
    assert (role, steps[-1].step, steps[-1].tokens_seen) == ("sft", int(step),
                                                             int(tokens))
    assert len(steps) >= 3
    assert [s.tokens_seen for s in steps] == sorted({s.tokens_seen for s in steps})
    size = sum(p.stat().st_size for p in STEPS_DIR.rglob("*") if p.is_file())
    assert size < 12e6  # a few MB, shipped


def weights(folder: Path) -> dict[str, np.ndarray]:
    return {k: v.double().numpy()
            for k, v in load_file(str(Path(folder) / "model.safetensors")).items()}


def test_demo_series_onsets_against_numpy(wh):
    """fct_trajectory_onset of the demo series: per (module type, layer) the final
    relative change sqrt(sum ||dW||^2) / sqrt(sum ||W_base||^2) and the first steps
    reaching 50% / 90% of it, from the checkpoints' bf16 values with NumPy."""
    steps = parse_series(str(STEPS_DIR / "steps.toml"))
    base = weights(ROOT / "models" / "demo" / "base")
    ckpts = [weights(s.model) for s in steps]
    num: dict[tuple, list[float]] = {}
    den: dict[tuple, float] = {}
    for name, w in base.items():
        if w.ndim != 2:
            continue
        layer, module = parse_name(name)
        den[(module, layer)] = den.get((module, layer), 0.0) + float(np.sum(w ** 2))
        sq = [float(np.sum((c[name] - w) ** 2)) for c in ckpts]
        old = num.get((module, layer), [0.0] * len(steps))
        num[(module, layer)] = [a + b for a, b in zip(old, sq, strict=True)]
    rows = query(wh, "select module, layer, final_relative_change, "
                 "onset_50_step, onset_90_step from marts.fct_trajectory_onset "
                 "where trajectory = ?", [SERIES])
    assert len(rows) == len(num)
    for module, layer, final, o50, o90 in rows:
        change = [math.sqrt(n / den[(module, layer)]) for n in num[(module, layer)]]
        assert final == pytest.approx(change[-1], rel=1e-6), (module, layer)
        want = [next(s.step for s, v in zip(steps, change, strict=True)
                     if v >= q * change[-1]) for q in (0.5, 0.9)]
        assert [o50, o90] == want, (module, layer)


def test_over_training_page_on_the_demo_warehouse(wh, monkeypatch):
    """The page lists the demo series and draws relative change against step, one
    line per module type of the demo model, with the loss of the same steps."""
    import streamlit as st

    from tests.test_app import charts_of, open_page

    st.cache_data.clear()
    at = open_page("over_training", wh, monkeypatch)
    assert not at.exception, [e.value for e in at.exception]
    assert SERIES in at.sidebar.selectbox(key="trajectory_name").options
    at.sidebar.selectbox(key="trajectory_name").set_value(SERIES).run()
    at.selectbox(key="trajectory_measure").set_value("relative_change").run()
    assert not at.exception, [e.value for e in at.exception]
    spec = charts_of(at)[0]
    lines = spec["layer"][0]
    assert lines["encoding"]["y"]["field"] == "relative_change"
    modules = set(lines["encoding"]["color"]["sort"])
    want = {m for m, in query(wh, "select distinct module from "
                              "marts.fct_trajectory_weights where trajectory = ?",
                              [SERIES])}
    assert modules == want and len(modules) >= 7
    assert spec["layer"][1]["encoding"]["y"]["field"] == "train_loss"
    n_steps = len(parse_series(str(STEPS_DIR / "steps.toml")))
    assert len(at.dataframe[0].value) == len(query(
        wh, "select * from marts.fct_trajectory_onset where trajectory = ?",
        [SERIES]))
    assert query(wh, "select count(*) from marts.fct_trajectory_behaviour "
                 "where trajectory = ?", [SERIES])[0][0] == n_steps
    st.cache_data.clear()


@pytest.mark.parametrize("page", ["spectra", "heatmap", "directions"])
def test_pair_pickers_leave_the_series_runs_out(wh, monkeypatch, page):
    """The warehouse holds the series' step and difference pairs beside the demo's
    own pair; the weight pages' pair pickers offer only the pair of its own."""
    import streamlit as st

    from tests.test_app import open_page

    st.cache_data.clear()
    series_pairs = {p for p, in query(wh, "select pair from "
                                      "marts.dim_pairs where trajectory = ?", [SERIES])}
    assert len(series_pairs) == 2 * len(parse_series(str(STEPS_DIR / "steps.toml"))) - 1
    own = {p for p, in query(wh, "select pair from marts.dim_pairs "
                             "where trajectory is null")}
    at = open_page(page, wh, monkeypatch)
    offered = {o for box in at.sidebar.selectbox if box.label == "pair"
               for o in box.options}
    assert offered and offered <= own, offered
    assert not offered & series_pairs
    st.cache_data.clear()
