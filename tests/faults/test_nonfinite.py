"""A NaN in one weight of the SFT model: the spectra warn and mark the tensor, and the
behaviour half (which stopped with `AssertionError: post 30: sft unscored token` on
every re-run) finishes: the tokens whose logits are not finite get a NaN log-prob and
the nonfinite flag, the run record counts them, the marts leave their posts out and
count them, and the perplexity page says how many."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file, save_file
from streamlit.testing.v1 import AppTest

from compute.run.cli import main as run_main
from tests.behaviour_helpers import prompts
from tests.conftest import ROOT, run_dbt
from tests.faults.helpers import N_MATRICES, query

EMBED = "model.embed_tokens.weight"
N_POSTS = 8


def _ids(run_dir) -> dict[int, list[int]]:
    """post_id -> its token ids in order, from a run's token_logprobs files."""
    rows = {}
    for f in (run_dir / "behaviour" / "token_logprobs").glob("*.parquet"):
        t = pq.read_table(f).to_pandas()
        for post, part in t[t.role == "base"].groupby("post_id"):
            rows[int(post)] = part.sort_values("position").token_id.tolist()
    return rows


@pytest.mark.slow
def test_nan_weight_behaviour_finishes_and_marts_leave_the_posts_out(
        small_pair, wh, tmp_path, capsys, monkeypatch):
    """The SFT's embedding row of one token id X is NaN. A post whose inputs hold X
    (the prefix and its tokens but the last, which is only a target) gets a NaN key
    and value at X's position; SDPA adds the causal mask to the attention scores
    (NaN + -inf is NaN), so every query of that post, before X too, reads NaN: all n
    of its tokens have SFT logits that are not finite, and no token of any other post
    (rows of a batch do not mix); the base is untouched. Expected counts come from
    the token ids of a clean run of the same posts, by that rule."""
    short = prompts(N_POSTS)
    short["text"] = short["text"].str.split().str[:16].str.join(" ")
    short.to_parquet(tmp_path / "prompts.parquet")

    def run(pair, name, *extra):
        return run_main(["--base", str(pair / "base"), "--sft", str(pair / "sft"),
                         "--name", name, "--out", str(tmp_path / "runs"), "--db",
                         str(wh), "--prompts", str(tmp_path / "prompts.parquet"),
                         "--batch-size", "3", "--vectors", "0", "--no-progress",
                         *extra])

    assert run(small_pair, "clean", "--skip-spectra", "--no-load") == 0
    ids = _ids(tmp_path / "runs" / "clean")
    # a token id in some posts (not as their last token) and not in others
    counts = {}
    for post_ids in ids.values():
        for x in set(post_ids[:-1]):
            counts[x] = counts.get(x, 0) + 1
    x = max((c, x) for x, c in counts.items() if c <= N_POSTS // 2)[1]
    want = {p: len(t) for p, t in ids.items() if x in t[:-1]}
    assert 0 < len(want) < N_POSTS

    pair = tmp_path / "poisoned"
    shutil.copytree(small_pair, pair)
    weights = load_file(str(pair / "sft" / "model.safetensors"))
    weights[EMBED][x, 3] = float("nan")
    save_file(weights, str(pair / "sft" / "model.safetensors"),
              metadata={"format": "pt"})
    capsys.readouterr()
    assert run(pair, "nan") == 0
    captured = capsys.readouterr()
    assert f"warning: non-finite entries in {EMBED} (sft: 1 NaN/Inf)" in captured.err
    total = sum(want.values())
    assert (f"warning: behaviour: the sft model's logits are not finite at {total} "
            "scored token(s)") in captured.err, captured.err
    assert "loaded into the warehouse" in captured.out

    # the run record and the raw rows
    record = json.loads((tmp_path / "runs" / "nan" / "run.json").read_text())
    assert record["kinds"]["behaviour"]["options"]["n_tokens_nonfinite"] == {
        "base": 0, "sft": total}
    flagged = dict(query(wh, "select post_id, count(*) from raw.token_logprobs "
                         "where pair = 'nan' and role = 'sft' and nonfinite "
                         "group by all"))
    assert flagged == want
    assert query(wh, "select count(*) from raw.token_logprobs where pair = 'nan' "
                 "and (nonfinite <> isnan(logprob))") == [(0,)]
    n_tokens = sum(len(t) for t in ids.values())
    assert query(wh, "select count(*) from raw.token_logprobs where pair = 'nan'"
                 ) == [(2 * n_tokens,)]
    assert query(wh, "select count(*) from raw.spectra where pair = 'nan'") == [
        (3 * N_MATRICES,)]

    # the marts: the posts left out, counted; dbt build green
    monkeypatch.setenv("SFTSCOPE_DB", str(wh))
    proc = run_dbt(wh, "build", "--select", "+fct_nonfinite_tokens",
                   "+fct_post_perplexity", "+fct_post_token_shift",
                   "+fct_residual_drift_by_layer", check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert query(wh, "select n_posts, n_posts_left_out, n_tokens_nonfinite_base, "
                 "n_tokens_nonfinite_sft from marts.fct_nonfinite_tokens "
                 "where pair = 'nan'") == [(N_POSTS, len(want), 0, total)]
    kept = query(wh, "select distinct post_id from marts.fct_post_perplexity "
                 "where pair = 'nan' order by 1")
    assert [p for (p,) in kept] == sorted(set(ids) - set(want))
    assert query(wh, "select count(*) from marts.fct_post_perplexity where pair = "
                 "'nan' and not isfinite(perplexity)") == [(0,)]
    assert query(wh, "select count(*) from marts.fct_residual_drift_by_layer where "
                 "pair = 'nan' and not isfinite(mean_rel_l2)") == [(0,)]

    # the perplexity page says so
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("app_pages/perplexity.py").run()
    warnings = " ".join(w.value for w in at.warning)
    assert (f"0 token(s) under the base model and {total} under the SFT model had "
            "logits that are not finite") in warnings, warnings
    assert f"the {len(want)} post(s) holding them (of {N_POSTS})" in warnings
