"""The Directions page: its chart builders and tables on hand-made frames (angles in
degrees, the intruder null in every cell, distinct marks for observed and random,
tokens written as on Token shift), then the page under AppTest on the demo
warehouse (`slow`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app_lib import directions as d

ROOT = Path(__file__).resolve().parent.parent


def test_angles_in_whole_degrees_smallest_first():
    """cos 1 -> 0 deg, cos 0.5 -> 60 deg, cos 0 -> 90 deg; a negative cosine counts
    by its size (cos -0.5 -> 60 deg)."""
    df = pd.DataFrame({"side": ["left"], "r": [4], "largest_angle_deg": [89.8227],
                       "cosines": [[0.0, 0.5, 1.0, -0.5]]})
    table = d.angles_table(df)
    assert table.to_dict("records") == [{
        "side": "left", "r": 4, "largest angle": "90°",
        "angles, smallest first": "0° 60° 60° 90°"}]


def test_intruder_cells_carry_the_null():
    grid = pd.DataFrame({"layer": [0, 1], "module": ["q_proj", "q_proj"],
                         "n_intruders": [1, 0], "null_expected": [10.0, 0.0]})
    cells = d.intruder_cells(grid)
    assert cells["label"].tolist() == ["1 / 10", "0 / 0"]
    assert cells["vs_null"].iloc[0] == pytest.approx(0.1)
    assert pd.isna(cells["vs_null"].iloc[1])  # no null to compare with


def test_epsilon_chart_tells_observed_from_random():
    """Observed: solid line, filled circles; the null: dashed, open squares; the
    legend carries both marks (shape and dash), not two black dots."""
    df = pd.DataFrame({"k": [10, 10], "epsilon": [0.1, 0.5], "n_intruders": [0, 1],
                       "null_expected": [0.0, 10.0]})
    spec = d.epsilon_chart(df).to_dict()
    dashed, solid = spec["layer"]
    assert solid["mark"]["point"]["filled"] is True
    assert dashed["mark"]["point"]["filled"] is False
    shape = solid["encoding"]["shape"]["scale"]
    assert shape["range"] == ["circle", "square"]
    assert solid["encoding"]["strokeDash"]["scale"]["range"] == [[1, 0], [6, 4]]
    assert solid["encoding"]["y"]["scale"]["zero"] is True


def test_token_table_decodes_the_byte_level_vocabulary():
    df = pd.DataFrame({
        "kind": "direction", "direction": 1, "singular_value": 0.99,
        "pole": ["+u", "+u", "-u"], "rank": [1, 2, 1],
        "token_id": [5, 6, 7], "token": ["Ġthe", None, "Ċ"]})
    (row,) = d.token_table(df).to_dict("records")
    assert row["+u"] == "'\u2423the' #6"
    assert row["-u"] == "'\\n'"
    assert row["dW promotes"] == "not measured"  # no activations: poles stay neutral
    df["effect"] = ["demoted", "demoted", "promoted"]  # the sign from the inputs
    (row,) = d.token_table(df).to_dict("records")
    assert row["dW promotes"] == "-u"


@pytest.mark.slow
def test_directions_page(demo_warehouse, monkeypatch):
    st.cache_data.clear()
    monkeypatch.setenv("SFTSCOPE_DB", str(demo_warehouse))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("app_pages/directions.py").run()
    assert not at.exception, [e.value for e in at.exception]
    said = [m.value for m in at.markdown if m.value.startswith(":material/lightbulb:")]
    assert any("vs chance" in s for s in said), said
    assert any("for random directions" in s for s in said), said
    assert at.selectbox(key="dir_measure").value == "enrichment"
    specs = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    overlap, intruders = specs[0], specs[1]
    color = overlap["layer"][0]["encoding"]["color"]
    assert color["scale"]["type"] == "log" and 1.0 in color["scale"]["domain"]
    assert intruders["layer"][1]["encoding"]["text"]["field"] == "label"
    angles = next(df.value for df in at.dataframe if "largest angle" in df.value)
    assert angles["largest angle"].str.fullmatch(r"\d+°").all()
    tables = [df.value for df in at.dataframe if "promoted" in df.value]
    for table in tables:
        assert not table["promoted"].str.contains("Ġ").any()
    at.selectbox(key="dir_measure").select("share").run()
    assert not at.exception
