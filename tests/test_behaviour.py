"""compute/behaviour/scoring.py on tiny Qwen2 pairs: log-probs, batching, windows, drift,
resume."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from compute.behaviour import scoring as behaviour
from compute.behaviour.scoring import load_prompts, plan_windows, run_behaviour

try:
    from tests import behaviour_helpers as H
except ImportError:  # tests/ itself is on sys.path (no package)
    import behaviour_helpers as H

one_thread = H.one_thread  # autouse: tiny models run on one thread
TOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return H.pair(tmp_path_factory.mktemp("pair") / "tiny")


@pytest.fixture(scope="module")
def batched(tiny, tmp_path_factory):
    """12 posts of varied length, 5 per batch, one window each."""
    out = tmp_path_factory.mktemp("batched")
    opts = run_behaviour(*tiny, H.prompts(12), out, run_id="r1", pair="tiny",
                         batch_size=5, window=512, progress=False)
    return out, opts


def score(tiny, out, prompts, **kw):
    kw = {"run_id": "r1", "pair": "tiny", "progress": False} | kw
    opts = run_behaviour(*tiny, prompts, out, **kw)
    return opts, H.read(out, "token_logprobs"), H.read(out, "residual_drift")


# ---------------------------------------------------------------- log-probs


def test_logprobs_equal_unbatched_reference(tiny, batched):
    out, opts = batched
    lp = H.read(out, "token_logprobs")
    texts = H.read(out, "post_texts").set_index("post_id")
    prompts = H.prompts(12).set_index("post_id")
    lengths = set()
    for role, folder in (("base", tiny[0]), ("sft", tiny[1])):
        ref = H.Reference(folder)
        for post_id, text in prompts["text"].items():
            rows = lp[(lp.role == role) & (lp.post_id == post_id)].sort_values("position")
            ids = ref.ids(text)
            lengths.add(len(ids))
            assert rows["position"].tolist() == list(range(len(ids)))
            assert rows["token_id"].tolist() == ids
            assert rows["token_text"].tolist() == [ref.tok.decode([i]) for i in ids]
            want = ref.post(text).double().numpy()
            np.testing.assert_allclose(rows["logprob"].to_numpy(), want, atol=TOL, rtol=0)
            assert texts.loc[post_id, "n_tokens"] == len(ids)
            assert texts.loc[post_id, "n_bytes"] == len(text.encode())
            assert texts.loc[post_id, "n_words"] == len(text.split())
    assert len(lengths) > 5, "the posts should differ in length (padding is exercised)"
    assert opts["n_posts"] == 12 and opts["n_posts_scored"] == 12
    assert opts["dtype"] == "float32" and opts["device"] == "cpu"
    assert {"batch_size", "window", "attn_implementation", "seconds"} <= set(opts)
    json.dumps(opts)  # compute.run stores it as JSON


def test_columns_are_the_raw_tables(batched):
    from ingest.warehouse import COMPUTE_TABLES

    out, _ = batched
    for table in ("token_logprobs", "post_texts", "residual_drift"):
        cols = [line.split()[0] for line in COMPUTE_TABLES[table].strip().splitlines()]
        df = H.read(out, table)
        assert list(df.columns) == cols
        assert set(df["run_id"]) == {"r1"} and set(df["pair"]) == {"tiny"}


def test_batching_and_padding_change_nothing(tiny, batched, tmp_path):
    out, _ = batched
    _, lp1, dr1 = score(tiny, tmp_path, H.prompts(12), batch_size=1, window=512)
    key = ["role", "post_id", "position"]
    lp5 = H.read(out, "token_logprobs").sort_values(key).reset_index(drop=True)
    lp1 = lp1.sort_values(key).reset_index(drop=True)
    assert lp1[key].equals(lp5[key])
    assert (lp1["logprob"] - lp5["logprob"]).abs().max() <= TOL
    key = ["post_id", "layer"]
    dr5 = H.read(out, "residual_drift").sort_values(key).reset_index(drop=True)
    dr1 = dr1.sort_values(key).reset_index(drop=True)
    for col in ("sum_rel_l2", "sum_cos", "sum_sq_diff", "sum_sq_base"):
        np.testing.assert_allclose(dr1[col], dr5[col], rtol=TOL, atol=TOL)


# ---------------------------------------------------------------- windows


def windows_by_hand(n: int, window: int, context: int) -> list[tuple[int, int, int]]:
    """The windows as docs/behaviour.md describes them, planned here on their own:
    the first reads s[0:window] and scores targets 1..; each next one starts
    `context` tokens before its first unscored target and reads `window` tokens (fewer
    at the end of the post)."""
    out, first = [], 1
    while first <= n:
        start = 0 if first == 1 else first - context
        end = min(start + window, n + 1)
        out.append((start, end, first))
        first = end
    return out


@pytest.mark.parametrize("window,context", [(3, 1), (4, 2), (8, 3), (16, 14), (32, 8)])
def test_plan_windows_cover_every_token_once(window, context):
    for n in range(80):
        scored = []
        wins = plan_windows(n, window, context)
        for start, end, first in wins:
            assert 0 <= start < first <= end <= n + 1 and end - start <= window
            assert first - start >= 1  # the target's predecessor is in the window
            if start > 0:
                assert first - start == context
            if end < n + 1:  # only the last window may be short
                assert end - start == window
            scored += range(first, end)
        assert scored == list(range(1, n + 1))
        if n > 0:
            assert wins == windows_by_hand(n, window, context), n


def test_plan_windows_of_a_long_post():
    """Past the small integers Python caches: ends compared by value."""
    assert plan_windows(5000, 1024, 64) == windows_by_hand(5000, 1024, 64)


@pytest.mark.parametrize("window,context", [(2, 1), (3, 0), (3, 2), (8, 7), (2, 0)])
def test_plan_windows_refuses_a_window_without_room(window, context):
    """A window must hold `context` tokens, one scored target and its predecessor:
    1 <= context <= window - 2."""
    with pytest.raises(ValueError, match="need window >= 3"):
        plan_windows(5, window, context)


def test_windowed_scoring(tiny, tmp_path):
    prompts = H.prompts(3, first=40, id0=7)
    prompts.loc[0, "text"] = " ".join(H.texts(6, first=50))  # several windows long
    window, context = 32, 8
    _, lp, dr = score(tiny, tmp_path, prompts, batch_size=2, window=window,
                      context=context)
    ref = H.Reference(tiny[0])
    for post_id, text in zip(prompts.post_id, prompts.text, strict=True):
        ids = ref.ids(text)
        s = [ref.eos, *ids]
        rows = lp[(lp.role == "base") & (lp.post_id == post_id)].sort_values("position")
        assert rows["position"].tolist() == list(range(len(ids)))  # once each
        got = rows["logprob"].to_numpy()
        wins = windows_by_hand(len(ids), window, context)
        if post_id == 7:
            assert len(wins) >= 4
        for start, end, first in wins:
            want = ref.logprobs(s[start:end])[first - start - 1:].double().numpy()
            np.testing.assert_allclose(got[first - 1:end - 1], want, atol=TOL, rtol=0)
        # the first window sees the whole prefix: equal to the unwindowed score
        full = ref.post(text).double().numpy()
        np.testing.assert_allclose(got[:window - 1], full[:window - 1], atol=TOL, rtol=0)
        assert set(dr.loc[dr.post_id == post_id, "n_tokens"]) == {len(ids)}


# ---------------------------------------------------------------- drift


def test_sft_equal_to_base_gives_zero_delta_and_drift(tmp_path):
    pair = H.equal_pair(tmp_path / "eq")
    _, lp, dr = score(pair, tmp_path / "out", H.prompts(5), batch_size=3, window=64)
    wide = lp.pivot_table(index=["post_id", "position"], columns="role",
                          values="logprob")
    assert len(wide) == len(lp) / 2
    assert (wide["sft"] - wide["base"]).abs().max() == 0.0
    assert (dr["sum_sq_diff"] == 0).all() and (dr["sum_rel_l2"] == 0).all()
    np.testing.assert_allclose(dr["sum_cos"], dr["n_tokens"], rtol=1e-6)
    assert (dr["sum_sq_base"] > 0).all()
    assert sorted(dr["layer"].unique()) == [0, 1, 2]


def test_planted_change_in_one_layer_drifts_from_there_on(tmp_path):
    layer = 2  # block 2 of 4: hidden-state index 3 is its output
    pair = H.planted_pair(tmp_path / "planted", layer)
    _, lp, dr = score(pair, tmp_path / "out", H.prompts(4), batch_size=4, window=64)
    by_layer = dr.groupby("layer")[["sum_sq_diff", "sum_rel_l2"]].sum()
    assert list(by_layer.index) == [0, 1, 2, 3, 4]
    assert (by_layer.loc[: layer, "sum_sq_diff"] == 0).all()
    assert (by_layer.loc[: layer, "sum_rel_l2"] == 0).all()
    assert (by_layer.loc[layer + 1:, "sum_rel_l2"] > 1e-3 * dr["n_tokens"].iloc[0]).all()
    wide = lp.pivot_table(index=["post_id", "position"], columns="role",
                          values="logprob")
    assert (wide["sft"] - wide["base"]).abs().max() > 1e-4


# ---------------------------------------------------------------- resume


def test_resume_after_a_kill_scores_each_post_once(tiny, batched, tmp_path,
                                                   monkeypatch):
    real = behaviour.write_parquet
    calls = []

    def dying(table, path):
        calls.append(path)
        if len(calls) == 5:  # batch 2: token_logprobs, residual_drift written, then...
            raise KeyboardInterrupt("killed")
        real(table, path)

    monkeypatch.setattr(behaviour, "write_parquet", dying)
    with pytest.raises(KeyboardInterrupt):
        score(tiny, tmp_path, H.prompts(12), batch_size=5, window=512)
    monkeypatch.setattr(behaviour, "write_parquet", real)
    assert len(list((tmp_path / "behaviour" / "post_texts").glob("*.parquet"))) == 1
    opts, lp, dr = score(tiny, tmp_path, H.prompts(12), batch_size=5, window=512)
    assert opts["n_posts_resumed"] == 5 and opts["n_posts_scored"] == 7
    texts = H.read(tmp_path, "post_texts")
    assert sorted(texts["post_id"]) == list(range(1000, 1012))
    assert not lp.duplicated(["role", "post_id", "position"]).any()
    assert not dr.duplicated(["post_id", "layer"]).any()
    assert set(lp["post_id"]) == set(dr["post_id"]) == set(texts["post_id"])
    clean = H.read(batched[0], "token_logprobs")
    key = ["role", "post_id", "position"]
    merged = lp.merge(clean, on=key, suffixes=("", "_clean"))
    assert len(merged) == len(clean) == len(lp)
    assert (merged["logprob"] - merged["logprob_clean"]).abs().max() <= TOL
    # a third run has nothing left to do
    opts, lp2, _ = score(tiny, tmp_path, H.prompts(12), batch_size=5, window=512)
    assert opts["n_posts_scored"] == 0 and len(lp2) == len(lp)


def test_files_of_another_run_are_refused(tiny, batched, tmp_path):
    shutil.copytree(batched[0] / "behaviour", tmp_path / "behaviour")
    with pytest.raises(ValueError, match="another run"):
        score(tiny, tmp_path, H.prompts(12), run_id="r2", window=512)


# ---------------------------------------------------------------- checks


def test_tokenizer_mismatch_names_the_post(tiny, tmp_path):
    base, sft = tmp_path / "base", tmp_path / "sft"
    shutil.copytree(tiny[0], base)
    shutil.copytree(tiny[1], sft)
    other = H.pair(tmp_path / "other", H.PairSpec(layers=1, hidden=32, intermediate=64,
                                                  vocab=300))[1]
    shutil.copy(other / "tokenizer.json", sft / "tokenizer.json")
    with pytest.raises(ValueError, match=r"post 1000 \(physics.test\).*tokenizers"):
        run_behaviour(base, sft, H.prompts(3), tmp_path / "out", run_id="r", pair="p",
                      progress=False)


def test_bad_prompts_and_options_are_refused(tiny, tmp_path):
    dup = pd.concat([H.prompts(2), H.prompts(1)])
    with pytest.raises(ValueError, match="more than once"):
        run_behaviour(*tiny, dup, tmp_path, run_id="r", pair="p", progress=False)
    with pytest.raises(ValueError, match="fp16"):
        run_behaviour(*tiny, H.prompts(1), tmp_path, run_id="r", pair="p",
                      dtype="float16", progress=False)
    with pytest.raises(ValueError, match="lack"):
        run_behaviour(*tiny, H.prompts(1).drop(columns="grp"), tmp_path, run_id="r",
                      pair="p", progress=False)


def test_load_prompts_from_parquet_and_warehouse(tmp_path):
    from ingest.warehouse import connect

    df = H.prompts(4)
    df.to_parquet(tmp_path / "p.parquet")
    got = load_prompts(tmp_path / "p.parquet")
    assert sorted(got["post_id"]) == list(range(1000, 1004))
    with connect(tmp_path / "w.duckdb") as con:
        con.execute("create schema marts")
        con.execute("create table marts.prompts as select * from df")
    got = load_prompts(tmp_path / "w.duckdb")
    assert sorted(got["post_id"]) == list(range(1000, 1004))
    assert set(got.columns) >= {"post_id", "site", "grp", "text"}
