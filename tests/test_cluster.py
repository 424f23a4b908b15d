"""compute.run --ray on a local Ray cluster (ray.init(num_cpus=2)): two pairs x 3
shards as tasks give exactly the rows of single runs; a task that fails midway once
is retried, resumes, and nothing is written twice. Ray is the optional extra
`.[cluster]` (`make test` installs it)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from compute.fixtures.planted import PairSpec, build_pair
from compute.run import cluster
from compute.run.cli import main

ray = pytest.importorskip("ray")  # the optional extra; make test installs it

TINY = PairSpec(hidden=64, intermediate=160, layers=2, heads=2, kv_heads=1, vocab=512)
SPECTRA = "spectra/[0-9]*.parquet"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def pair_argv(pair: Path, name: str, out: Path) -> list[str]:
    return ["--base", str(pair / "base"), "--sft", str(pair / "sft"), "--name", name,
            "--out", str(out), "--skip-behaviour", "--vectors", "0"]


def rows(run_dir: Path) -> list[tuple]:
    files = [str(p) for p in run_dir.glob(SPECTRA)] + [
        str(run_dir / "spectra" / "vectors.parquet")]
    return sorted(duckdb.sql(
        "select * exclude (run_id, seconds) from read_parquet(?, union_by_name=true)",
        params=[files]).fetchall(), key=repr)


@pytest.mark.slow  # a local Ray cluster starts in 10-20 s
def test_two_pairs_by_three_shards_with_a_retried_task(local_ray, tmp_path):
    pairs = {}
    for name, seed_layers in (("a", 2), ("b", 3)):
        folder = tmp_path / "models" / name
        build_pair(folder, PairSpec(**{**TINY.__dict__, "layers": seed_layers}))
        pairs[name] = folder
    failed = tmp_path / "failed-once"

    def flaky(argv, cwd, run):
        """Shard 1/3 of pair a dies after one tensor the first time."""
        from compute.run.cli import main
        from compute.run.cluster import shard_task

        if argv[argv.index("--name") + 1] == "a" and "1/3" in argv and not (
                Path(failed).exists()):
            Path(failed).touch()
            main([*argv, "--max-tensors", "1"])
            raise RuntimeError("killed midway")
        return shard_task(argv, cwd, run)

    out = tmp_path / "runs"
    argvs = cluster.jobs([(n, pair_argv(p, n, out)) for n, p in pairs.items()], 3)
    assert len(argvs) == 6
    cluster.run_tasks(argvs, run=main, progress=False, task=flaky)
    assert failed.exists()  # the failure happened, and the retry completed the pair
    for name, folder in pairs.items():
        single = tmp_path / "single"
        assert main([*pair_argv(folder, name, single), "--no-load",
                     "--no-progress"]) == 0
        got = rows(out / name)
        assert got == rows(single / name)
        assert len(got) == len({repr(r) for r in got})  # nothing duplicated
        n_files = len(list((single / name).glob(SPECTRA)))
        assert len(list((out / name).glob(SPECTRA))) == n_files
        assert not list((out / name).glob("spectra/.*tmp*"))  # no half-written file


def test_the_driver_drops_only_its_own_options():
    argv = ["--ray", "--pairs", "a,b", "--shards", "4", "--out", "x", "--vectors",
            "0", "--ray=ray://h:1", "--device", "cpu", "--no-load"]
    assert cluster.task_argv(argv) == ["--out", "x", "--vectors", "0", "--device",
                                       "cpu"]
    assert cluster.task_argv(["--ray", "ray://h:1", "--window", "8"]) == [
        "--window", "8"]


@pytest.mark.slow  # a local Ray cluster starts in 10-20 s
def test_the_command_runs_its_shards_on_ray_then_loads_once(local_ray, tmp_path):
    build_pair(tmp_path / "pair", TINY)
    db = tmp_path / "warehouse.duckdb"
    argv = [*pair_argv(tmp_path / "pair", "c", tmp_path / "runs"), "--db", str(db),
            "--no-progress", "--ray", "--shards", "2"]
    assert main(argv) == 0
    with duckdb.connect(str(db), read_only=True) as con:
        loaded = con.sql("select count(*), count(distinct run_id), "
                         "count(distinct tensor || role) from raw.spectra "
                         "where pair = 'c'").fetchall()[0]
    n_matrices = 2 * 7 + 2  # 7 per block, embed_tokens, lm_head
    assert loaded == (3 * n_matrices, 1, 3 * n_matrices)  # base, sft, delta each


@pytest.mark.slow  # a local Ray cluster starts in 10-20 s
def test_a_trajectory_on_ray_loads_the_rows_of_the_plain_run(local_ray, tmp_path,
                                                             monkeypatch):
    """compute.run --trajectory --ray --shards 2: every step's and difference's
    shards as tasks at once (4 steps, 3 differences: 14 tasks) compute every tensor;
    the plain pass after them computes nothing again, finishes and loads; the
    warehouse holds exactly the raw rows of the same series run without Ray."""
    import json

    from compute.fixtures.trajectory import STEPS, build_trajectory, read_truth
    from compute.run import trajectory as T
    from tests.test_trajectory import raw_rows

    series = tmp_path / "series"
    build_trajectory(series)
    before: dict = {}  # the spectra files as the Ray tasks left them
    plain_pass = T.run_steps

    def spy(s, manifest, pair_main):
        if s.ray is not None:
            before.update({p: p.stat().st_mtime_ns
                           for p in s.out.rglob("spectra/0*")})
        return plain_pass(s, manifest, pair_main)

    monkeypatch.setattr(T, "run_steps", spy)
    dbs = {}
    for how, extra in (("plain", []), ("ray", ["--ray", "--shards", "2"])):
        dbs[how] = tmp_path / f"{how}.duckdb"
        argv = ["--base", str(series / "base"), "--trajectory", str(series), "--name",
                "tr", "--out", str(tmp_path / how), "--skip-behaviour", "--db",
                str(dbs[how]), "--no-progress", *extra]
        assert main(argv) == 0, how
    assert len(before) == (2 * len(STEPS) - 1) * len(read_truth(series).ranks)
    assert {p: p.stat().st_mtime_ns for p in before} == before  # none recomputed
    manifest = json.loads((tmp_path / "ray" / "tr" / "trajectory.json").read_text())
    assert [s["step"] for s in manifest["series"] if s["done"]] == list(STEPS)
    got, want = raw_rows(dbs["ray"]), raw_rows(dbs["plain"])
    assert got == want
    assert len(want["spectra"]) > 0 and len(want["trajectory_steps"]) == len(STEPS)
