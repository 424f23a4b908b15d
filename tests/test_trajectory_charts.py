"""The "Over training" page's chart builders on small hand-made DataFrames (no
Streamlit, no SQL)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from app_lib import trajectory as tr


@pytest.fixture
def per_module() -> pd.DataFrame:
    rows = []
    for step in (100, 200, 300):
        for module, change in (("q_proj", 0.1), ("down_proj", 0.02), ("lm_head", 0.0)):
            rows.append({"step": step, "tokens_seen": step * 10, "module": module,
                         "relative_change": change * step / 100,
                         "signal_rank": step // 100, "n_intruders": 1,
                         "n_intruders_null": 0.25, "step_change": change,
                         "overlap": None if step == 100 else 0.9,
                         "overlap_null": None if step == 100 else 0.05})
    return pd.DataFrame(rows)


@pytest.fixture
def steps() -> pd.DataFrame:
    return pd.DataFrame({"step": [100, 200, 300], "train_loss": [2.0, 1.5, 1.2],
                         "mean_kl_sft_base": [0.01, 0.03, 0.04]})


def layers_of(spec: dict) -> list[dict]:
    return spec["layer"]


def values(spec: dict, layer: dict) -> list[dict]:
    data = layer.get("data", {})
    return spec["datasets"][data["name"]] if "name" in data else data["values"]


@pytest.mark.parametrize("measure", [m for m in tr.MEASURES if m not in tr.BEHAVIOUR])
def test_one_line_per_module_type_and_the_loss_on_its_own_axis(per_module, steps,
                                                               measure):
    spec = tr.over_training_chart(per_module, steps, measure).to_dict()
    lines, loss = layers_of(spec)
    assert lines["encoding"]["color"]["field"] == "module"
    assert lines["encoding"]["y"]["field"] == measure
    assert lines["encoding"]["x"]["field"] == loss["encoding"]["x"]["field"] == "step"
    # the module types in the app's order (q before down, then the head)
    assert lines["encoding"]["color"]["sort"] == ["q_proj", "down_proj", "lm_head"]
    rows = values(spec, lines)
    assert len(rows) == (6 if measure == "overlap" else 9)  # no overlap at step 100
    assert loss["encoding"]["y"]["field"] == "train_loss"
    assert loss["encoding"]["y"]["axis"]["orient"] == "right"
    assert [r["train_loss"] for r in values(spec, loss)] == [2.0, 1.5, 1.2]
    assert spec["resolve"]["scale"]["y"] == "independent"


def test_kl_is_one_line_with_the_loss(per_module, steps):
    spec = tr.over_training_chart(per_module, steps, "mean_kl_sft_base").to_dict()
    lines, _ = layers_of(spec)
    rows = values(spec, lines)
    assert [r["mean_kl_sft_base"] for r in rows] == [0.01, 0.03, 0.04]
    assert {r["module"] for r in rows} == {"all (behaviour)"}


def test_without_a_loss_the_chart_has_the_measure_only(per_module, steps):
    spec = tr.over_training_chart(per_module, steps.assign(train_loss=None),
                                  "relative_change").to_dict()
    assert len(layers_of(spec)) == 1
    assert "train_loss" not in json.dumps(spec)


def test_unknown_measure_is_refused(per_module, steps):
    with pytest.raises(ValueError, match="unknown measure 'rank'"):
        tr.over_training_chart(per_module, steps, "rank")


def test_null_notes_state_the_chance_level(per_module):
    assert "0.25" in tr.null_note(per_module, "n_intruders")
    assert "0.050" in tr.null_note(per_module, "overlap")
    assert tr.null_note(per_module, "relative_change") == ""


def test_kl_interval_chart_draws_each_group_with_its_band():
    df = pd.DataFrame({"step": [100, 100, 200, 200], "grp": ["low", "high"] * 2,
                       "n_posts": 2, "estimate": [0.1, 0.2, 0.3, 0.4],
                       "ci95_low": [0.05, 0.15, 0.25, 0.35],
                       "ci95_high": [0.15, 0.25, 0.35, 0.45]})
    spec = tr.kl_interval_chart(df).to_dict()
    band, line = spec["layer"]
    assert band["mark"]["type"] == "area"
    assert (band["encoding"]["y"]["field"], band["encoding"]["y2"]["field"]) == (
        "ci95_low", "ci95_high")
    assert line["encoding"]["y"]["field"] == "estimate"
    scale = line["encoding"]["color"]["scale"]
    assert scale["domain"] == ["low score", "high score"]  # the app's group labels
    rows = values(spec, spec) if "data" in spec else values(spec, band)
    assert {r["group"] for r in rows} == {"low score", "high score"}
