"""Results under an object-store URI (ingest.results), against a real S3 API: moto's
server in a process of its own on localhost, reached by pyarrow's S3FileSystem
(endpoint_override, scheme http, dummy credentials); no internet.

Shards run as on separate machines (each its own staging folder, so they share only
the bucket), in any order: the load from the bucket holds the rows of a single local
run; tensors split into pieces across machines and the singular vectors' token labels
(made from every shard's files) come out the same; a shard failing midway leaves only
whole objects, and an upload that fails leaves none; the behaviour half's prompts
split across two machines complete it.
"""

from __future__ import annotations

import json
import time

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from compute.fixtures.planted import PairSpec, build_pair
from compute.run.cli import main
from ingest import compute_load, results
from ingest.compute_load import load_or_explain
from tests.conftest import machine

# a vocabulary large next to the blocks: at 3 shards embed_tokens and lm_head are
# each split into 2 pieces of rows (compute.plan.shards.n_pieces)
WIDE = PairSpec(hidden=64, intermediate=160, layers=2, heads=2, kv_heads=1, vocab=4096)
TINY = PairSpec(hidden=32, intermediate=64, layers=2, heads=2, kv_heads=1, vocab=256)
VOLATILE = "run_id, seconds"


def run(pair, out, *extra, name: str = "p") -> int:
    return main(["--base", str(pair[0]), "--sft", str(pair[1]), "--name", name,
                 "--out", str(out), "--no-load", "--skip-behaviour", "--no-progress",
                 *extra])


def loaded(db, table: str, drop: str = VOLATILE) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return sorted(con.sql(f"select * exclude ({drop}) from raw.{table}")
                      .fetchall(), key=repr)


def single(pair, tmp_path, *extra) -> str:
    """A plain local run of the pair, loaded into a warehouse of its own."""
    db = tmp_path / "single.duckdb"
    assert run(pair, tmp_path / "single", *extra) == 0
    assert load_or_explain(tmp_path / "single" / "p", db) == 0
    return db


@pytest.mark.s3
def test_shards_on_three_machines_load_the_rows_of_a_single_run(s3, tmp_path,
                                                                monkeypatch):
    pair = build_pair(tmp_path / "pair", WIDE)
    root = s3.root("wide")
    for i in (2, 0, 1):  # any order, each on its own machine
        machine(monkeypatch, tmp_path, f"m{i}")
        assert run(pair, root, "--vectors", "0", "--shard", f"{i}/3") == 0
        keys = s3.keys("wide/p")
        assert ("bkt/wide/p/kinds/spectra.json" in keys) == (i == 1)  # the last
    assert not [k for k in keys if "/pieces/" in k]  # merged, and removed there
    assert not [k for k in keys if k.rsplit("/", 1)[1].startswith(".")]
    record = json.loads(s3.fs.open_input_stream("bkt/wide/p/run.json").read())
    assert record["run_id"] == results.run_identity(
        {k: record[k] for k in results.IDENTITY})  # derived, no lock taken
    db = tmp_path / "s3.duckdb"
    assert compute_load.main([root, "--db", str(db)]) == 0  # the root: its pairs
    want = single(pair, tmp_path, "--vectors", "0")
    assert loaded(db, "vector_changes", "run_id") == loaded(want, "vector_changes",
                                                            "run_id")
    # the pieces' spectra (summed partial Grams) equal the whole's to fp64 rounding,
    # every other row bit for bit
    floats = "singular_values, frobenius_sq, noise_sigma"
    got, ref = (loaded(d, "spectra", f"{VOLATILE}, {floats}") for d in (db, want))
    assert got == ref and len(got) == 3 * 16  # 7 per block, embed, lm_head
    sql = f"select tensor, role, {floats} from raw.spectra order by tensor, role"
    with duckdb.connect(str(db), read_only=True) as a, duckdb.connect(
            str(want), read_only=True) as b:
        assert a.sql("select count(distinct run_id) from raw.spectra").fetchall() == [
            (1,)]
        for x, y in zip(a.sql(sql).fetchall(), b.sql(sql).fetchall(), strict=True):
            assert x[:2] == y[:2]
            for u, v in zip(x[2:], y[2:], strict=True):
                if v is None:
                    assert u is None
                else:
                    np.testing.assert_allclose(u, v, rtol=1e-12,
                                               atol=1e-14 * max(y[2] or [0]))


@pytest.mark.s3
@pytest.mark.slow  # singular vectors and token labels on two machines
def test_directions_of_shards_on_two_machines(s3, tmp_path, monkeypatch):
    pair = build_pair(tmp_path / "pair", TINY)
    root = s3.root("dirs")
    for i in (1, 0):
        machine(monkeypatch, tmp_path, f"m{i}")
        assert run(pair, root, "--vectors", "3", "--shard", f"{i}/2") == 0
    db = tmp_path / "s3.duckdb"
    assert load_or_explain(results.child(root, "p"), db) == 0
    want = single(pair, tmp_path, "--vectors", "3")
    for table in ("direction_overlap", "intruders", "direction_tokens"):
        assert loaded(db, table, "run_id") == loaded(want, table, "run_id")
        assert loaded(db, table, "run_id")
    keys = s3.keys("dirs/p")
    assert "bkt/dirs/p/kinds/directions.json" in keys
    assert len([k for k in keys if "/directions/vectors/" in k]) == 16


@pytest.mark.s3
def test_a_shard_failing_midway_leaves_whole_objects_and_resumes(s3, tmp_path,
                                                                 monkeypatch):
    import compute.linalg.spectra

    pair = build_pair(tmp_path / "pair", TINY)
    root = s3.root("fail")
    real, calls = compute.linalg.spectra.array_spectra, []

    def dies_on_the_sixth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # once a finished tensor is on the store (the tensors
            # run in threads: the one finished may not be pushed yet)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any(
                    "/spectra/0" in k for k in s3.keys("fail/p")):
                time.sleep(0.05)
            raise RuntimeError("the machine died")
        return real(*args, **kwargs)

    machine(monkeypatch, tmp_path, "first")
    monkeypatch.setattr(compute.linalg.spectra, "array_spectra", dies_on_the_sixth)
    with pytest.raises(RuntimeError, match="died"):
        run(pair, root, "--vectors", "0")
    monkeypatch.setattr(compute.linalg.spectra, "array_spectra", real)
    keys = s3.keys("fail/p")
    parts = [k for k in keys if "/spectra/0" in k]
    assert 0 < len(parts) < 16 and "bkt/fail/p/kinds/spectra.json" not in keys
    for key in keys:  # each object whole: a readable Parquet file (or the JSON)
        with s3.fs.open_input_file(key) as fh:
            if key.endswith(".parquet"):
                assert pq.read_metadata(fh).num_rows >= 0
            else:
                json.loads(fh.read())
    machine(monkeypatch, tmp_path, "second")  # resumes from the bucket's keys
    put, uploaded = results.Store.put_bytes, []

    def recorded(self, rel, data):
        uploaded.append(f"bkt/fail/p/{rel}")
        return put(self, rel, data)

    monkeypatch.setattr(results.Store, "put_bytes", recorded)
    assert run(pair, root, "--vectors", "0") == 0
    assert not set(parts) & set(uploaded)  # the finished parts were not redone
    assert len([k for k in uploaded if "/spectra/0" in k]) == 16 - len(parts)
    db = tmp_path / "s3.duckdb"
    assert load_or_explain(results.child(root, "p"), db) == 0
    assert loaded(db, "spectra") == loaded(single(pair, tmp_path, "--vectors", "0"),
                                           "spectra")


@pytest.mark.s3
def test_an_upload_that_fails_leaves_no_object(s3, tmp_path):
    """pyarrow completes the upload of a stream dropped unclosed: the store deletes
    what a failed write made."""
    store = results.Store(s3.root("broken"), tmp_path)

    class Cut:  # the connection drops after half of the bytes went out
        def __init__(self, stream):
            self.stream = stream

        def write(self, data):
            self.stream.write(data[:len(data) // 2])
            raise OSError("connection reset")

        def close(self):
            self.stream.close()

    class Flaky:
        def __init__(self, fs):
            self.fs = fs

        def open_output_stream(self, key):
            return Cut(self.fs.open_output_stream(key))

        def __getattr__(self, name):
            return getattr(self.fs, name)

    store.fs = Flaky(store.fs)
    with pytest.raises(OSError, match="reset"):
        store.put_bytes("spectra/00000.parquet", b"x" * 1000)
    assert s3.keys("broken") == {}
    store.fs = store.fs.fs
    store.put_bytes("spectra/00000.parquet", b"x" * 1000)
    assert s3.keys("broken") == {"bkt/broken/spectra/00000.parquet": 1000}


@pytest.mark.s3
def test_a_prefix_of_another_run_is_refused_and_force_starts_over(s3, tmp_path,
                                                                 monkeypatch, capsys):
    first = build_pair(tmp_path / "a", TINY)
    other = build_pair(tmp_path / "b", PairSpec(**{**TINY.__dict__, "seed": 5}))
    root = s3.root("taken")
    machine(monkeypatch, tmp_path, "m")
    assert run(first, root, "--vectors", "0") == 0
    n = len(s3.keys("taken/p"))
    assert run(other, root, "--vectors", "0") == 2
    err = capsys.readouterr().err
    assert "run.json?" in err and "is a run of other inputs" in err
    assert "--force" in err
    assert len(s3.keys("taken/p")) == n  # nothing changed there, nor here:
    staged = json.loads(next((tmp_path / "machines" / "m").glob("*/p/run.json"))
                        .read_text())
    assert staged["base_model"] == str(first[0])
    assert run(other, root, "--vectors", "0", "--force") == 0
    record = json.loads(s3.fs.open_input_stream("bkt/taken/p/run.json").read())
    assert record["base_model"] == str(other[0])


def test_file_uris_and_plain_paths_are_the_same_root(tmp_path, capsys):
    pair = build_pair(tmp_path / "pair", TINY)
    uri = (tmp_path / "runs").as_uri()  # file:///...
    assert not results.is_remote(uri) and results.is_remote("s3://b/p")
    for name in ("p", "q"):
        assert run(pair, uri, "--vectors", "0", name=name) == 0
    assert (tmp_path / "runs" / "p" / "run.json").exists()
    db = tmp_path / "w.duckdb"
    assert load_or_explain(results.child(uri, "p"), db) == 0
    assert len(loaded(db, "spectra")) == 3 * 16
    assert compute_load.main([str(tmp_path / "runs"), "--db", str(db)]) == 0
    with duckdb.connect(str(db), read_only=True) as con:  # every pair of the root
        assert con.sql("select pair, count(*) from raw.spectra group by pair "
                       "order by pair").fetchall() == [("p", 48), ("q", 48)]
    assert compute_load.main([str(tmp_path / "pair"), "--db", str(db)]) == 2
    assert "no run.json in it nor in its subfolders" in capsys.readouterr().err


@pytest.mark.s3
@pytest.mark.slow  # two tiny models score 6 posts three times (45 s on a busy box)
def test_behaviour_shards_on_two_machines(s3, tmp_path, monkeypatch):
    """The prompts split across two shards on two machines: the second to finish,
    having started before the first one's batches were in the bucket, uploads its
    own, fetches theirs, finds every post done and marks the behaviour finished."""
    from tests.behaviour_helpers import SPEC, prompts

    pair = build_pair(tmp_path / "pair", SPEC)
    prompts(6).to_parquet(tmp_path / "prompts.parquet")
    root = s3.root("behaviour")

    def score(out, *extra) -> int:
        return main(["--base", str(pair[0]), "--sft", str(pair[1]), "--name", "p",
                     "--out", str(out), "--no-load", "--skip-spectra", "--no-progress",
                     "--prompts", str(tmp_path / "prompts.parquet"), "--batch-size",
                     "1", *extra])

    pull, pulls = results.Store.pull, []

    def late(self, subs=("",), *, skip=()):
        """Machine 0 starts before machine 1's batches reach the bucket: its first
        look finds none of them (they come in while it scores)."""
        pulls.append(subs)
        return pull(self, subs, skip=(*skip, "behaviour/") if len(pulls) == 1
                    else skip)

    for i in (1, 0):
        machine(monkeypatch, tmp_path, f"m{i}")
        if i == 0:
            monkeypatch.setattr(results.Store, "pull", late)
        assert score(root, "--shard", f"{i}/2") == 0
        done = "bkt/behaviour/p/kinds/behaviour.json" in s3.keys("behaviour/p")
        assert done == (i == 0)
    assert pulls == [("",), ["behaviour"]]  # it fetched theirs after its own part
    monkeypatch.setattr(results.Store, "pull", pull)
    db, want = tmp_path / "s3.duckdb", tmp_path / "single.duckdb"
    assert load_or_explain(results.child(root, "p"), db) == 0
    assert score(tmp_path / "single") == 0
    assert load_or_explain(tmp_path / "single" / "p", want) == 0
    for table in ("token_logprobs", "residual_drift"):
        got = loaded(db, table, "run_id")
        assert got and got == loaded(want, table, "run_id")


@pytest.mark.s3
@pytest.mark.slow  # four shards and two loads (15 s on a busy box)
def test_the_ray_driver_loads_every_pair_from_the_bucket(s3, tmp_path, monkeypatch):
    """`--pairs FILE --ray --out s3://...`: every (pair, shard) task (run here in
    turn, each on a machine of its own, in place of Ray's workers), then one load
    per pair from the bucket by the driver."""
    import os

    from compute.run import cluster

    pairs = {n: build_pair(tmp_path / n, PairSpec(**{**TINY.__dict__, "seed": s}))
             for n, s in (("a", 1), ("b", 2))}
    toml = tmp_path / "pairs.toml"
    toml.write_text("".join(f'[[pair]]\nname = "{n}"\nbase = "{p[0]}"\n'
                            f'sft = "{p[1]}"\n' for n, p in pairs.items()))
    ran = []

    def in_turn(argvs, run, **_):
        for k, argv in enumerate(argvs):
            machine(monkeypatch, tmp_path, f"worker{k}")
            ran.append(cluster.shard_task(argv, os.getcwd(), run))

    monkeypatch.setattr(cluster, "run_tasks", in_turn)
    db = tmp_path / "w.duckdb"
    assert main(["--pairs", str(toml), "--ray", "--shards", "2", "--device", "cpu",
                 "--out", s3.root("ray"), "--db", str(db), "--skip-behaviour",
                 "--vectors", "0", "--no-progress"]) == 0
    assert ran == ["0/2", "1/2", "0/2", "1/2"]
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.sql("select pair, count(*), count(distinct run_id) from raw.spectra"
                       " group by pair order by pair").fetchall() == [
            ("a", 48, 1), ("b", 48, 1)]


@pytest.mark.s3
def test_load_from_a_bucket_checks_the_files_against_run_json(s3, tmp_path,
                                                               monkeypatch, capsys):
    """The loader's checks (ingest.run_check) on an object-store root: a spectra
    object copied under another tensor's name, or the rows of another pair, are
    refused naming the object's URI, and no warehouse is made."""
    pair = build_pair(tmp_path / "pair", TINY)
    root = s3.root("checked")
    machine(monkeypatch, tmp_path, "m")
    assert run(pair, root, "--vectors", "0") == 0
    db = tmp_path / "w.duckdb"
    s3.fs.copy_file("bkt/checked/p/spectra/00003.parquet",
                    "bkt/checked/p/spectra/00099.parquet")
    assert load_or_explain(results.child(root, "p"), db) == 2
    err = capsys.readouterr().err
    assert (f"{results.child(root, 'p/spectra/00099.parquet')}: not among the files "
            "run.json lists") in err, err
    assert "sftscope-load-" not in err, err
    assert not db.exists()
    s3.fs.delete_file("bkt/checked/p/spectra/00099.parquet")
    assert load_or_explain(results.child(root, "p"), db) == 0
    capsys.readouterr()
    assert len(loaded(db, "spectra")) == 3 * 16
