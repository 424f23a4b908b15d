"""compute.patch with --out an object-store URI, against moto's S3 server on
localhost (the `s3` fixture of tests/conftest.py): the behaviour run is read from the
bucket, shards on two machines (each its own staging folder, sharing only the
bucket) load the raw.patch_* rows of one local run, a shard killed midway leaves
only whole objects and its re-run scores only the models missing from the bucket,
and another setting clears the grouping's prefix and the kind's record.

A planted pair whose dW lives in two groups (tests/test_patch.py's), six posts,
--by layer on its two layers: 4 groups (layer 0, layer 1, embeddings, 1-D), so
1 + 4 x 2 = 9 models per run.
"""

from __future__ import annotations

import json

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from compute.attribution import patch
from compute.behaviour.merge_score import DeltaScorer
from compute.fixtures.planted import build_pair
from compute.run.cli import main as compute_run
from ingest import results
from ingest.compute_load import load_or_explain
from tests.conftest import machine
from tests.test_patch import SPEC, TEXTS, TWO, planted_sft

pytestmark = pytest.mark.s3
MODELS = 9  # the base, add and revert of 4 groups
VOLATILE = {"patch_models": "run_id, seconds, merge_seconds",
            "patch_posts": "run_id"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory, s3) -> dict:
    """The planted pair, its prompts, and its behaviour run twice: under a local
    folder and under s3://bkt/behaviour (compute.run, the same options)."""
    root = tmp_path_factory.mktemp("patch_store")
    base, _ = build_pair(root / "planted", SPEC)
    sft = planted_sft(base, root / "sft", TWO, 2)
    prompts = root / "prompts.parquet"
    pd.DataFrame({"post_id": range(21, 21 + len(TEXTS)), "site": "physics.demo",
                  "grp": ["low", "high"] * 3,
                  "post_type": ["answer"] * 3 + ["question"] * 3,
                  "text": TEXTS}).to_parquet(prompts)
    info = {"base": base, "sft": sft, "prompts": prompts, "root": root,
            "behaviour": s3.root("behaviour")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SFTSCOPE_STAGING", str(root / "machines" / "scorer"))
        for out in (root / "local", info["behaviour"]):
            assert compute_run([
                "--base", str(base), "--sft", str(sft), "--name", "p", "--prompts",
                str(prompts), "--window", "128", "--batch-size", "2", "--no-load",
                "--no-progress", "--device", "cpu", "--skip-spectra", "--out",
                str(out)]) == 0
    return info


def argv(pair, out, *extra: str) -> list[str]:
    return ["--base", str(pair["base"]), "--sft", str(pair["sft"]), "--name", "p",
            "--prompts", str(pair["prompts"]), "--out", str(out), "--by", "layer",
            "--no-progress", *extra]


def fresh_root(s3, pair, name: str) -> str:
    """s3://bkt/<name>: a copy of the bucket's behaviour run (no patch results)."""
    for key in s3.keys("behaviour/p"):
        s3.fs.copy_file(key, key.replace("bkt/behaviour/", f"bkt/{name}/", 1))
    return s3.root(name)


def loaded(db, table: str) -> pd.DataFrame:
    """raw.<table> without the columns that differ between runs, sorted."""
    with duckdb.connect(str(db), read_only=True) as con:
        df = con.sql(f"select * exclude ({VOLATILE[table]}) from raw.{table}").df()
    return df.sort_values(list(df.columns)).reset_index(drop=True)


@pytest.fixture(scope="module")
def local_db(pair) -> str:
    """compute.patch --by layer on the local behaviour run, loaded."""
    db = pair["root"] / "local.duckdb"
    assert patch.main(argv(pair, pair["root"] / "local", "--db", str(db))) == 0
    return db


def same_rows(uri: str | None, tmp_path, local_db) -> None:
    """The bucket's pair loads (ingest.compute_load; `uri` None: loaded already)
    the local run's rows."""
    db = tmp_path / "s3.duckdb"
    if uri is not None:
        assert load_or_explain(results.child(uri, "p"), db) == 0
    for table in VOLATILE:
        got, want = loaded(db, table), loaded(local_db, table)
        assert len(got) == len(want) > 0
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-9)
    assert len(loaded(db, "patch_models")) == MODELS


def test_ray_shards_on_two_machines_load_the_rows_of_one_local_run(
        s3, pair, local_db, tmp_path, monkeypatch):
    """--ray --shards 2: the tasks (run here in turn, shard 1 first, each on a
    machine of its own that never saw the behaviour run, in place of Ray's
    workers) read the behaviour run from the bucket; the record kinds/patch.json
    appears only when the second finds every model there, and lists them; the
    driver then loads the bucket: the local run's rows."""
    import os

    from compute.run import cluster

    root = fresh_root(s3, pair, "shards")
    ran = []

    def in_turn(argvs, run, task, **_):
        for k in (1, 0):
            machine(monkeypatch, tmp_path, f"m{k}")
            ran.append(task(argvs[k], os.getcwd(), run))
            keys = s3.keys("shards/p")
            assert ("bkt/shards/p/kinds/patch.json" in keys) == (k == 0)

    monkeypatch.setattr(cluster, "run_tasks", in_turn)
    machine(monkeypatch, tmp_path, "driver")
    db = tmp_path / "s3.duckdb"
    assert patch.main(argv(pair, root, "--ray", "--shards", "2", "--db", str(db))
                      ) == 0
    assert ran == ["1/2", "0/2"]
    keys = s3.keys("shards/p")
    markers = [k for k in keys if "/patch/layer/models/" in k]
    posts = [k for k in keys if "/patch/layer/posts/" in k]
    assert len(markers) == len(posts) == MODELS
    with s3.fs.open_input_stream("bkt/shards/p/kinds/patch.json") as fh:
        record = json.loads(fh.read())
    assert record["finished_at"] and record["options"]["layer"]["complete"]
    assert sorted(f"bkt/shards/p/{f}" for f in
                  record["inventory"]["files"]["patch_models"]) == sorted(markers)
    assert record["inventory"]["rows"]["patch_posts"] == MODELS * len(TEXTS)
    same_rows(None, tmp_path, local_db)


def test_a_killed_run_leaves_whole_objects_and_its_rerun_scores_the_rest(
        s3, pair, local_db, tmp_path, monkeypatch):
    """Scoring dies at the fourth model: three models are in the bucket, each as
    two readable Parquet objects, and no record. The re-run, on another machine,
    scores and uploads only the six others."""
    root = fresh_root(s3, pair, "killed")
    real, calls = DeltaScorer.score, []

    def dies_at_the_fourth(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("the machine died")
        return real(self, *args, **kwargs)

    machine(monkeypatch, tmp_path, "first")
    monkeypatch.setattr(DeltaScorer, "score", dies_at_the_fourth)
    with pytest.raises(RuntimeError, match="died"):
        patch.main(argv(pair, root, "--no-load"))
    keys = s3.keys("killed/p/patch")
    done = sorted(k.rsplit("/", 1)[1] for k in keys if "/models/" in k)
    assert done == ["00000-add.parquet", "00000-revert.parquet", "base.parquet"]
    assert len([k for k in keys if "/posts/" in k]) == 3
    assert "bkt/killed/p/kinds/patch.json" not in s3.keys("killed/p")
    for key in keys:  # whole objects: Parquet files with their rows, the JSON
        with s3.fs.open_input_file(key) as fh:
            if key.endswith("patch.json"):
                assert json.loads(fh.read())["by"] == "layer"
            else:
                rows = pq.read_metadata(fh).num_rows
                assert rows == (len(TEXTS) if "/posts/" in key else 1), key
    machine(monkeypatch, tmp_path, "second")
    put, uploaded, calls[:] = results.Store.put_bytes, [], []

    def recorded(self, rel, data):
        uploaded.append(rel)
        return put(self, rel, data)

    monkeypatch.setattr(DeltaScorer, "score",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    monkeypatch.setattr(results.Store, "put_bytes", recorded)
    assert patch.main(argv(pair, root, "--no-load")) == 0
    assert len(calls) == MODELS - 3
    ours = [r for r in uploaded if "/models/" in r or "/posts/" in r]
    assert len(ours) == 2 * (MODELS - 3)
    assert not {r.rsplit("/", 1)[1] for r in ours} & set(done)
    for i in range(0, len(ours), 2):  # each model's posts object before its marker
        assert ours[i].replace("/posts/", "/models/") == ours[i + 1]
    assert "kinds/patch.json" in uploaded
    same_rows(root, tmp_path, local_db)


def test_an_upload_cut_off_is_made_up_by_the_rerun_on_that_machine(
        s3, pair, local_db, tmp_path, monkeypatch):
    """The connection dies before the second model's marker is uploaded (its posts
    object is in the bucket, both files in the staging folder): the re-run on the
    same machine uploads the marker from there and scores the other seven only."""
    root = fresh_root(s3, pair, "cut")
    put, calls = results.Store.put_bytes, []

    def cut_off(self, rel, data):
        if rel.endswith("models/00000-add.parquet"):
            raise OSError("connection reset")
        return put(self, rel, data)

    machine(monkeypatch, tmp_path, "only")
    monkeypatch.setattr(results.Store, "put_bytes", cut_off)
    assert patch.main(argv(pair, root, "--no-load")) == 2  # named, results kept
    keys = s3.keys("cut/p/patch/layer")
    assert sorted(k.split("/layer/")[1] for k in keys) == [
        "models/base.parquet", "patch.json", "posts/00000-add.parquet",
        "posts/base.parquet"]
    monkeypatch.setattr(results.Store, "put_bytes", put)
    real = DeltaScorer.score
    monkeypatch.setattr(DeltaScorer, "score",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    assert patch.main(argv(pair, root, "--no-load")) == 0
    assert len(calls) == MODELS - 2
    same_rows(root, tmp_path, local_db)


@pytest.mark.slow  # three runs, 21 models (17 s on a busy box)
def test_another_setting_clears_the_prefix_and_the_record(s3, pair, tmp_path,
                                                          monkeypatch):
    """A finished run, then --ranks 1 (another setting) as shard 1/2 on another
    machine: the old models and kinds/patch.json are gone from the bucket before
    it scores, patch.json is the new one; shard 0/2 back on the first machine (its
    staging folder still holding the old setting's files) completes the new run,
    whose load has the new models only."""
    root = fresh_root(s3, pair, "setting")
    machine(monkeypatch, tmp_path, "a")
    assert patch.main(argv(pair, root, "--no-load")) == 0
    assert "bkt/setting/p/kinds/patch.json" in s3.keys("setting/p")
    machine(monkeypatch, tmp_path, "b")
    assert patch.main(argv(pair, root, "--ranks", "1", "--shard", "1/2")) == 0
    keys = s3.keys("setting/p")
    assert "bkt/setting/p/kinds/patch.json" not in keys
    with s3.fs.open_input_stream("bkt/setting/p/patch/layer/patch.json") as fh:
        assert json.loads(fh.read())["ranks"] == [1]
    markers = {k.rsplit("/", 1)[1] for k in keys if "/models/" in k}
    assert "base.parquet" not in markers  # shard 0's, and the old run's: gone
    assert any("-r000001" in m for m in markers)
    machine(monkeypatch, tmp_path, "a")
    assert patch.main(argv(pair, root, "--ranks", "1", "--shard", "0/2")) == 0
    db = tmp_path / "s3.duckdb"
    assert load_or_explain(results.child(root, "p"), db) == 0
    models = loaded(db, "patch_models")
    # the 9 models and layer 0's, layer 1's and the embeddings' add at rank 1
    assert len(models) == MODELS + 3 and models["rank"].eq(1).sum() == 3
    assert not models.duplicated(["patch_group", "mode", "rank"]).any()
    assert len(loaded(db, "patch_posts")) == (MODELS + 3) * len(TEXTS)


def test_dry_run_and_refusals_name_the_bucket(s3, pair, tmp_path, monkeypatch,
                                              capsys):
    """--dry-run reads the behaviour run's seconds from the bucket's record. No
    run under the prefix, or a behaviour run that is not finished there: exit 2,
    the message names the URI (not the staging folder), and nothing is written
    under the prefix."""
    machine(monkeypatch, tmp_path, "m")
    assert patch.main(argv(pair, pair["behaviour"], "--dry-run")) == 0
    info = json.loads(capsys.readouterr().out)
    with s3.fs.open_input_stream("bkt/behaviour/p/kinds/behaviour.json") as fh:
        kind = json.loads(fh.read())
    seconds = (pd.Timestamp(kind["finished_at"])
               - pd.Timestamp(kind["started_at"])).total_seconds()
    assert info["models"] == MODELS and info["behaviour_run_seconds"] == seconds
    assert patch.main(argv(pair, s3.root("empty"))) == 2
    err = capsys.readouterr().err
    assert "s3://bkt/empty/p" in err and "no run.json" in err and "staging" not in err
    assert s3.keys("empty") == {}
    root = fresh_root(s3, pair, "unfinished")
    s3.fs.delete_file("bkt/unfinished/p/kinds/behaviour.json")
    assert patch.main(argv(pair, root)) == 2
    err = capsys.readouterr().err
    assert "s3://bkt/unfinished/p/run.json?" in err and "not finished" in err, err
    assert "--out s3://bkt/unfinished?" in err and "staging" not in err
    assert not [k for k in s3.keys("unfinished/p") if "/patch/" in k]


def test_a_prefix_is_emptied_with_its_patch_json_last(s3, tmp_path, monkeypatch):
    """Store.delete_under: every object under the prefix goes, the named one after
    all the others (a run stopped halfway through leaves it, so the next run still
    sees another setting and empties the rest); objects beside the prefix stay,
    a longer name that starts with it (layer_module beside layer) included."""
    store = results.Store(s3.root("empty-me"), tmp_path)
    keys = ["patch/layer/models/base.parquet", "patch/layer/patch.json",
            "patch/layer/posts/base.parquet", "patch/layer/x/y.parquet",
            "patch/layer_module/patch.json"]
    for key in keys:
        store.put_bytes(key, b"x")
    gone, delete = [], results.Store.delete

    def recorded(self, paths):
        paths = list(paths)
        gone.extend(self.rel(p) for p in paths)
        return delete(self, paths)

    monkeypatch.setattr(results.Store, "delete", recorded)
    store.delete_under("patch/layer", last="patch/layer/patch.json")
    assert sorted(gone) == sorted(keys[:4]) and gone[-1] == "patch/layer/patch.json"
    assert list(s3.keys("empty-me")) == ["bkt/empty-me/patch/layer_module/patch.json"]
