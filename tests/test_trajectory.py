"""A fine-tune's checkpoints as a series (compute.run --trajectory): the planted
trajectory's ranks recovered per step, the consecutive differences, the subspace
overlaps, onsets against a NumPy reference, resuming, a hub-revision series offline,
and the series' parsing and loading."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
from safetensors.torch import load_file

from compute.fixtures.planted import place_in_hub_cache
from compute.fixtures.trajectory import (
    STEPS,
    TOKENS_PER_STEP,
    build_trajectory,
    read_truth,
)
from compute.run import trajectory as T
from tests import behaviour_helpers as H
from tests.conftest import query, run_dbt, run_py

MARTS = ("+fct_trajectory_weights+", "+fct_trajectory_behaviour", "+dim_pairs",
         "+fct_group_behaviour_intervals")


def weights(folder: Path) -> dict[str, np.ndarray]:
    """A checkpoint's tensors as float64 NumPy (safetensors' reader, not compute/)."""
    return {k: v.double().numpy()
            for k, v in load_file(str(folder / "model.safetensors")).items()}


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("trajectory") / "series"
    build_trajectory(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(planted, tmp_path_factory) -> dict:
    """The planted series run with behaviour on 4 posts, loaded, the marts built."""
    tmp = tmp_path_factory.mktemp("trajectory-run")
    prompts = tmp / "prompts.parquet"
    H.prompts(4).to_parquet(prompts)
    db, out = tmp / "w.duckdb", tmp / "runs"
    args = ("-m", "compute.run", "--base", str(planted / "base"), "--trajectory",
            str(planted), "--name", "tt", "--out", str(out), "--prompts", str(prompts),
            "--batch-size", "4", "--no-progress")
    first = run_py(*args, db=db)
    run_dbt(db, "build", "-s", *MARTS)
    return {"db": db, "out": out, "args": args, "stdout": first.stdout}


def test_signal_rank_of_every_step_and_difference_is_the_planted_schedule(planted,
                                                                          loaded):
    truth = read_truth(planted)
    rows = query(loaded["db"], "select step, tensor, signal_rank, step_diff_signal_rank"
                 " from marts.fct_trajectory_weights")
    assert len(rows) == len(STEPS) * len(truth.ranks)  # every (step, matrix) once
    for step, tensor, rank, diff_rank in rows:
        i = STEPS.index(step)
        assert rank == truth.ranks[tensor][i], (tensor, step)
        assert diff_rank == truth.diff_rank(tensor, i), (tensor, step)


def test_step_difference_norms_against_numpy(planted, loaded):
    """||W_t - W_{t-1}||_F (W_0 = W_base) and ||dW_t||_F / ||W_base||_F, from the
    checkpoints' bf16 values with NumPy."""
    ws = [weights(planted / "base")] + [weights(planted / f"checkpoint-{s}")
                                        for s in STEPS]
    rows = query(loaded["db"], "select step, tensor, step_diff_frobenius_norm, "
                 "relative_frobenius_change from marts.fct_trajectory_weights")
    for step, tensor, diff_norm, rel in rows:
        i = STEPS.index(step) + 1
        want = np.linalg.norm(ws[i][tensor] - ws[i - 1][tensor])
        assert diff_norm == pytest.approx(want, rel=1e-7, abs=1e-12), (tensor, step)
        base = np.linalg.norm(ws[0][tensor])
        assert rel == pytest.approx(np.linalg.norm(ws[i][tensor] - ws[0][tensor])
                                    / base, rel=1e-7, abs=1e-12)


def test_consecutive_subspaces_settle_where_only_directions_are_added(planted, loaded):
    """dW_t's top-r_{t-1} subspace is dW_{t-1}'s (the planted directions are nested,
    the added ones weaker): overlap 1 at k = r_{t-1}, far above the null k / dim."""
    truth = read_truth(planted)
    rows = query(loaded["db"], "select step, tensor, overlap_k, overlap_left, "
                 "overlap_right, overlap_left_random, n_rows "
                 "from marts.fct_trajectory_weights where position > 1")
    checked = 0
    for step, tensor, k, left, right, null, n_rows in rows:
        i = STEPS.index(step)
        prev = truth.ranks[tensor][i - 1]
        if prev == 0:
            assert k is None
            continue
        assert k == prev
        assert left == pytest.approx(1, abs=1e-3) and right == pytest.approx(1, abs=1e-3)
        assert null == pytest.approx(k / n_rows)
        checked += 1
    assert checked > 30


def test_subspace_overlap_is_the_mean_squared_cosine_of_principal_angles():
    rng = np.random.default_rng(5)
    a = np.linalg.qr(rng.normal(size=(40, 6)))[0].T
    b = np.linalg.qr(rng.normal(size=(40, 5)))[0].T
    shares = T.subspace_overlap(a, b)
    assert len(shares) == 5
    for k, share in enumerate(shares, 1):
        cos = np.cos(scipy.linalg.subspace_angles(a[:k].T, b[:k].T))
        assert share == pytest.approx(np.mean(cos ** 2), rel=1e-12)
    assert T.subspace_overlap(a, a)[-1] == pytest.approx(1)


def onset_reference(planted: Path) -> dict[tuple[str, int | None], tuple]:
    """(module, layer) -> (onset 50, onset 90) from the checkpoints with NumPy."""
    from compute.arch.naming import parse_name

    ws = [weights(planted / "base")] + [weights(planted / f"checkpoint-{s}")
                                        for s in STEPS]
    change: dict[tuple, list[float]] = {}
    for name in read_truth(planted).ranks:
        layer, module = parse_name(name)
        dsq = [np.sum((w[name] - ws[0][name]) ** 2) for w in ws[1:]]
        change[(module, layer)] = [math.sqrt(d / np.sum(ws[0][name] ** 2)) for d in dsq]
    out = {}
    for cell, c in change.items():
        first = [next(s for s, v in zip(STEPS, c, strict=True) if v >= q * c[-1])
                 for q in (0.5, 0.9)]
        out[cell] = tuple(first)
    return out


def test_onsets_against_numpy(planted, loaded):
    want = onset_reference(planted)
    rows = query(loaded["db"], "select module, layer, onset_50_step, onset_90_step, "
                 "onset_50_tokens_seen from marts.fct_trajectory_onset")
    assert len(rows) == len(want)
    for module, layer, o50, o90, tokens in rows:
        assert (o50, o90) == want[(module, layer)], (module, layer)
        assert tokens == o50 * TOKENS_PER_STEP // 100
    # the schedule's shape: down_proj arrives late, up/gate at once
    assert want[("down_proj", 0)] == (300, 400)
    assert want[("up_proj", 1)] == (100, 100)


def test_behaviour_per_step_and_the_training_loss(loaded):
    """KL per token = the raw rows' sum / count; loss and tokens from
    trainer_state.json (step s: loss 4 / (1 + s / 100), logged every 10 steps)."""
    rows = query(loaded["db"], "select b.step, b.pair, b.mean_kl_sft_base, b.n_tokens,"
                 " b.train_loss, b.tokens_seen from marts.fct_trajectory_behaviour b "
                 "order by step")
    assert [r[0] for r in rows] == list(STEPS)
    for step, pair, kl, n, loss, tokens in rows:
        raw = query(loaded["db"], "select sum(kl_sft_base), count(*) from "
                    "raw.token_shift where pair = ?", [pair])[0]
        assert n == raw[1] > 0
        assert kl == pytest.approx(raw[0] / raw[1], rel=1e-9)
        assert loss == pytest.approx(4.0 / (1 + step / 100), rel=1e-6)
        assert tokens == step * TOKENS_PER_STEP // 100
    assert rows[-1][2] > rows[0][2] > 0  # the model moves further from the base


def test_rerun_skips_done_steps_and_replaces_rows(loaded):
    before = query(loaded["db"], "select count(*) from raw.trajectory_overlap")[0][0]
    again = run_py(*loaded["args"], db=loaded["db"])
    assert again.stdout.count("done earlier") == len(STEPS)
    assert "vs the base" not in again.stdout
    assert query(loaded["db"], "select count(*) from raw.trajectory_overlap"
                 )[0][0] == before > 0
    assert query(loaded["db"], "select count(*) from raw.trajectory_steps"
                 )[0][0] == len(STEPS)


def test_a_failed_step_resumes_there(planted, tmp_path):
    """A step that fails stops the series with its exit status; the same command
    runs only the steps not done, in order."""
    from compute.run.cli import main

    calls: list[str] = []

    def failing(argv):
        name = argv[argv.index("--name") + 1]
        calls.append(name)
        return 2 if name.endswith("diff0000300") else main(argv)

    argv = ["--base", str(planted / "base"), "--trajectory", str(planted), "--name",
            "r", "--out", str(tmp_path), "--skip-behaviour", "--no-load",
            "--no-progress", "--vectors", "0"]
    assert T.run_trajectory(argv, failing) == 2
    manifest = json.loads((tmp_path / "r" / "trajectory.json").read_text())
    assert [s["done"] for s in manifest["series"]] == [True, True, False, False]
    calls.clear()
    assert T.run_trajectory(argv, lambda a: calls.append(a[a.index("--name") + 1])
                            or main(a)) == 0
    assert calls == ["r-step0000300", "r-diff0000300", "r-step0000400",
                     "r-diff0000400"]
    assert not (tmp_path / "r" / "steps" / "r-diff0000100").exists()
    manifest = json.loads((tmp_path / "r" / "trajectory.json").read_text())
    assert all(s["done"] for s in manifest["series"])


def test_hub_revision_series_offline(planted, tmp_path):
    """org/sft@step-100 ... resolved from the hub cache (one repository, a branch
    per checkpoint), offline; the ranks are the planted ones."""
    from compute.lora.extract import signal_rank

    cache = tmp_path / "hub"
    place_in_hub_cache(planted / "base", cache, "org/base", "a" * 40)
    for k, s in enumerate(STEPS):
        place_in_hub_cache(planted / f"checkpoint-{s}", cache, "org/sft",
                           f"{k + 1:x}" * 40, branch=f"step-{s}")
    series = ",".join(f"org/sft@step-{s}" for s in reversed(STEPS))  # any order
    out = tmp_path / "runs"
    run_py("-m", "compute.run", "--base", "org/base", "--trajectory", series,
           "--name", "hub", "--out", str(out), "--skip-behaviour", "--no-load",
           "--no-progress", "--vectors", "0", HF_HUB_OFFLINE="1",
           HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf"))
    manifest = json.loads((out / "hub" / "trajectory.json").read_text())
    assert [(s["step"], s["revision"]) for s in manifest["series"]] == [
        (s, f"step-{s}") for s in STEPS]
    truth = read_truth(planted)
    import pyarrow.parquet as pq

    for k, s in enumerate(STEPS):
        run = out / "hub" / "steps" / T.step_pair("hub", s)
        assert json.loads((run / "run.json").read_text())["sft_revision"] == (
            f"{k + 1:x}" * 40)
        for r in pq.read_table(run / "spectra").to_pylist():
            if r["role"] == "delta":
                got = signal_rank(np.asarray(r["singular_values"]), r["n_rows"],
                                  r["n_cols"], r["noise_sigma"])
                assert got == truth.ranks[r["tensor"]][k], (s, r["tensor"])


def test_dry_run_prints_the_cost_of_steps_and_differences(planted):
    from compute.io.checkpoints import resolve
    from compute.plan.pair import pair_plan
    from compute.plan.shards import dry_run

    proc = run_py("-m", "compute.run", "--base", str(planted / "base"),
                  "--trajectory", str(planted / "checkpoint-*"), "--name", "d",
                  "--dry-run")
    one = dry_run(pair_plan(resolve(str(planted / "base")),
                            resolve(str(planted / "checkpoint-100"))), 1)["total_cost"]
    assert f"total spectra cost {(2 * len(STEPS) - 1) * one:.3e}" in proc.stdout
    assert f"step      100 ({TOKENS_PER_STEP} tokens)" in proc.stdout
    assert not (Path("data/runs") / "d").exists()


def test_parse_series_orders_by_step_number(tmp_path):
    for s in (1000, 200, 30):
        (tmp_path / f"checkpoint-{s}").mkdir()
    (tmp_path / "logs").mkdir()
    steps = T.parse_series(str(tmp_path))
    assert [s.step for s in steps] == [30, 200, 1000]  # not 1000, 200, 30
    assert [Path(s.model).name for s in steps] == [
        "checkpoint-30", "checkpoint-200", "checkpoint-1000"]
    listed = T.parse_series("org/sft@step-20,org/sft@step-3")
    assert [(s.step, s.revision) for s in listed] == [(3, "step-3"), (20, "step-20")]
    toml = tmp_path / "steps.toml"
    toml.write_text('[[step]]\nstep = 7\nmodel = "checkpoint-200"\ntokens_seen = 70\n'
                    '[[step]]\nstep = 5\nmodel = "org/x"\nrevision = "abc"\n')
    steps = T.parse_series(str(toml))
    assert [(s.step, s.model, s.revision, s.tokens_seen) for s in steps] == [
        (5, "org/x", "abc", None), (7, str(tmp_path / "checkpoint-200"), None, 70)]


@pytest.mark.parametrize("spec, message", [
    ("org/sft@" + "a" * 40 + ",org/sft@step-2", "cannot tell its step"),
    ("org/sft@step-2,org/sft@v-2", "step 2 appears twice"),
    ("org/sft@step-2", "at least two steps"),
    ("{tmp}/none-*", "matches no folder"),
    ("{tmp}/missing.toml", "no such file"),
])
def test_parse_series_refuses_naming_the_item(tmp_path, spec, message):
    with pytest.raises(T.TrajectoryError, match=message):
        T.parse_series(spec.format(tmp=tmp_path))


def test_trainer_state_by_hand(tmp_path):
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": [
        {"step": 5, "loss": 3.0, "num_input_tokens_seen": 50},
        {"step": 10, "loss": 2.5},  # no token count at this entry
        {"step": 10, "eval_loss": 2.9},
        {"step": 15, "loss": 2.0, "num_input_tokens_seen": 150}]}))
    assert T.read_trainer_state(tmp_path, 12) == (50, 2.5)
    assert T.read_trainer_state(tmp_path, 15) == (150, 2.0)
    assert T.read_trainer_state(tmp_path / "nothing", 15) == (None, None)


def test_sft_with_trajectory_is_refused(planted):
    proc = run_py("-m", "compute.run", "--base", str(planted / "base"),
                  "--trajectory", str(planted), "--name", "x", "--sft", "y",
                  check=False)
    assert proc.returncode == 2 and "--sft does not go with --trajectory" in proc.stderr


def test_load_refuses_an_unfinished_series_and_writes_nothing(planted, tmp_path):
    from ingest.trajectory import main as load_main

    folder = tmp_path / "s"
    folder.mkdir()
    rows = [{"step": s, "position": i + 1, "model": "m", "revision": None,
             "tokens_seen": None, "train_loss": None, "pair": f"s-step{s}",
             "diff_pair": None, "done": s != 200} for i, s in enumerate(STEPS)]
    (folder / "trajectory.json").write_text(json.dumps(
        {"name": "s", "base_model": "b", "series": rows}))
    db = tmp_path / "w.duckdb"
    assert load_main([str(folder), "--db", str(db)]) == 2
    assert not db.exists() or query(db, "select count(*) from raw.trajectory_steps"
                                    )[0][0] == 0
    shutil.rmtree(folder)


def test_over_training_page_on_the_series(loaded, monkeypatch):
    """The page draws every measure from the loaded series: one line per module type
    (nine here) and the loss; the onset table has a row per (module, layer)."""
    import streamlit as st

    from tests.test_app import charts_of, open_page

    st.cache_data.clear()
    at = open_page("over_training", loaded["db"], monkeypatch)
    for measure in T_MEASURES:
        at.selectbox(key="trajectory_measure").set_value(measure).run()
        assert not at.exception, [e.value for e in at.exception]
        spec, kl = charts_of(at)  # the measure; KL per group with its interval
        assert kl["layer"][0]["encoding"]["y2"]["field"] == "ci95_high"
        lines = spec["layer"][0]
        assert lines["encoding"]["y"]["field"] == measure
        modules = lines["encoding"]["color"]["sort"]  # the modules in the data
        assert len(modules) == (1 if measure == "mean_kl_sft_base" else 9), measure
        assert spec["layer"][1]["encoding"]["y"]["field"] == "train_loss"
    onset = at.dataframe[0].value
    assert len(onset) == len(query(loaded["db"], "select * from "
                                   "marts.fct_trajectory_onset"))
    # the takeaway on top, from the same onsets
    assert any("final change arrives by step" in m.value for m in at.markdown)
    st.cache_data.clear()


T_MEASURES = ("relative_change", "signal_rank", "n_intruders", "step_change",
              "overlap", "mean_kl_sft_base")


def test_shards_of_every_step_then_one_run_finishes_the_series(planted, tmp_path):
    """--shard I/N deals the series' runs to the shards (2 shards, 7 runs: each run
    whole in one shard); no step counts as done until the run without --shard, which
    computes nothing again (every tensor's file is there) and writes the overlaps."""
    from compute.run.cli import main

    argv = ["--base", str(planted / "base"), "--trajectory", str(planted), "--name",
            "sh", "--out", str(tmp_path), "--skip-behaviour", "--no-load",
            "--no-progress"]
    for i in range(2):
        assert main([*argv, "--shard", f"{i}/2"]) == 0
        manifest = json.loads((tmp_path / "sh" / "trajectory.json").read_text())
        assert not any(s["done"] for s in manifest["series"])
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "sh").rglob("spectra/0*")}
    n_matrices = len(read_truth(planted).ranks)
    assert len(files) == (2 * len(STEPS) - 1) * n_matrices  # all there after 2 shards
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "sh" / "trajectory.json").read_text())
    assert all(s["done"] for s in manifest["series"]) and manifest["finished_at"]
    assert {p: p.stat().st_mtime_ns for p in files} == files  # none recomputed
    assert (tmp_path / "sh" / "trajectory" / "overlap.parquet").exists()


# columns that differ between two runs of the same work: ids, clocks, hosts
VOLATILE = ("run_id", "seconds", "started_at", "finished_at", "loaded_at", "host",
            "hostname", "created_at", "recorded_at", "spectra_run_id",
            "behaviour_run_id", "recovery_run_id", "source_file", "path", "options",
            "code_version", "wall_seconds", "cpu_seconds", "out", "run_dir")


def raw_rows(db: Path) -> dict[str, list]:
    """Every raw table's rows but its volatile columns, sorted (the load's result as
    a user would diff two warehouses)."""
    import duckdb

    out = {}
    with duckdb.connect(str(db), read_only=True) as con:
        tables = [t for (t,) in con.sql(
            "select table_name from information_schema.tables where table_schema = "
            "'raw' and table_name <> 'schema_version'").fetchall()]
        for t in tables:
            cols = [c for (c,) in con.execute(
                "select column_name from information_schema.columns where "
                "table_schema = 'raw' and table_name = ? order by ordinal_position",
                [t]).fetchall() if c not in VOLATILE and not c.endswith("_at")]
            out[t] = sorted(con.sql(f"select {', '.join(cols)} from raw.{t}")
                            .fetchall(), key=repr)
    return out


@pytest.mark.parametrize("n_shards", [8])
def test_shards_split_the_steps_and_load_the_rows_of_one_run(planted, loaded,
                                                            tmp_path, n_shards):
    """--shard I/N deals the series' runs (7 here: 4 steps, 3 differences) to the
    shards, each run cut into ceil(N / 7) parts of its tensors and posts (8 shards:
    2 parts a run, 14 parts on 8 shards, so some shards hold two runs' parts and
    some one; fewer shards than runs deal each run whole, parts = 1); the run
    without --shard then computes nothing again and loads exactly the raw rows of
    the unsharded run (the `loaded` fixture)."""
    db, out = tmp_path / "w.duckdb", tmp_path / "runs"
    args = [a if a != str(loaded["out"]) else str(out) for a in loaded["args"]]
    dealt = []
    for i in range(n_shards):
        proc = run_py(*args, "--shard", f"{i}/{n_shards}", db=db)
        assert "of the 7 runs' parts" in proc.stdout
        dealt.append(proc.stdout.count(", part "))
        manifest = json.loads((out / "tt" / "trajectory.json").read_text())
        assert not any(s["done"] for s in manifest["series"])
    parts = -(-n_shards // 7)
    assert sum(dealt) == 7 * parts  # every run's every part in exactly one shard
    assert max(dealt) - min(dealt) <= 1  # balanced: the runs cost the same
    assert not db.exists() or not query(db, "select count(*) from raw.spectra")[0][0]
    files = {p: p.stat().st_mtime_ns for p in out.rglob("spectra/0*")}
    finish = run_py(*args, db=db)
    assert "trajectory tt: 4 steps" in finish.stdout
    assert {p: p.stat().st_mtime_ns for p in files} == files  # none recomputed
    got, want = raw_rows(db), raw_rows(loaded["db"])
    assert got.keys() == want.keys()
    for table in want:
        assert_same_rows(got[table], want[table], table)
    assert len(want["spectra"]) > 0 and len(want["trajectory_overlap"]) > 0


# tables of fp32 forward passes: a post scored in another batch (a shard's share of
# the posts, other padding) differs in fp32's last bits (1.8e-8 relative seen)
FORWARD_PASS = {"token_logprobs", "residual_drift", "token_shift"}


def assert_same_rows(got: list, want: list, table: str) -> None:
    """The same rows: keys and counts exactly, floats to 1e-9 relative (fp64
    arithmetic), those of forward passes to 1e-5 relative or 1e-6 absolute (fp32,
    FORWARD_PASS: a shift of 6.8e-5 moved by 2.7e-9 in another batch)."""
    rel, tol = (1e-5, 1e-6) if table in FORWARD_PASS else (1e-9, 1e-12)
    assert len(got) == len(want), table
    for a, b in zip(got, want, strict=True):
        assert len(a) == len(b), table
        for x, y in zip(a, b, strict=True):
            if isinstance(y, float) and isinstance(x, float):
                assert x == pytest.approx(y, rel=rel, abs=tol, nan_ok=True), table
            else:
                assert x == y, (table, a, b)


def test_series_runs_are_kept_out_of_the_pair_lists(loaded, monkeypatch, tmp_path):
    """marts.dim_pairs marks the series' 4 step and 3 difference runs (series, role,
    step); the app's pair lists (dim_pairs, behaviour, directions, layers) leave them
    out, though they are scored and loaded, while the Over training page lists the
    series."""
    from app_lib import directions as d
    from app_lib import queries as q
    from app_lib import trajectory as tr

    db = tmp_path / "w.duckdb"  # the series with the marts the pair lists read
    shutil.copyfile(loaded["db"], db)
    run_dbt(db, "build", "--quiet", "-s", "+fct_direction_overlap",
            "+fct_layer_module_metrics", "+fct_pair_summary")
    rows = query(db, "select pair, trajectory, trajectory_role, trajectory_step "
                 "from marts.dim_pairs order by pair")
    want = sorted([(T.step_pair("tt", s), "tt", "step", s) for s in STEPS]
                  + [(T.diff_pair("tt", s), "tt", "difference", s) for s in STEPS[1:]])
    assert rows == want
    # the run record marks them too (before the series' own record is loaded)
    marked = query(db, "select distinct pair, options ->> '$.trajectory.role' from "
                   "raw.compute_runs where kind = 'spectra'")
    assert sorted(marked) == [(p, role) for p, _, role, _ in want]
    assert query(db, "select count(distinct pair) from raw.token_logprobs")[0][0] == 4
    src = (str(db), 0)
    assert q.pairs(src).empty and q.behaviour_pairs(src) == []
    assert d.pairs(src).empty
    assert q.layer_module(src).empty and q.layer_medians(src).empty
    assert len(query(db, "select * from marts.fct_layer_module_metrics")) > 0
    assert q.pair_summary(src).empty
    assert tr.series(src)["trajectory"].tolist() == ["tt"]
    # the overview counts pairs of their own: none here, and no scored pair to sum up
    import streamlit as st

    from tests.test_app import open_page

    st.cache_data.clear()
    at = open_page("overview", db, monkeypatch)
    assert at.metric[0].label == "pairs" and at.metric[0].value == "0"
    st.cache_data.clear()
