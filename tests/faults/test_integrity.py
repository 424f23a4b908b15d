"""Names, folders and result files the pipeline must check, not trust: a pair name
that is not one path component, an --out folder that is not a run of the pair, shard
counts beyond the work, and results folders whose files do not match their run.json.
Each test asserts the user's files (byte for byte) and the warehouse's rows."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from compute.run.cli import main as run_main
from ingest.compute_load import main as load_main
from tests.behaviour_helpers import prompts
from tests.faults.helpers import N_MATRICES, dump, no_traceback, query


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root`: relative path -> content."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def user_files(root: Path) -> dict[str, bytes]:
    """A person's files in the folders compute.run writes (and beside them)."""
    files = {"notes.txt": b"my notes", "spectra/keep.csv": b"a,b\n1,2\n",
             "behaviour/draft.md": b"# draft", "directions/plot.png": b"\x89PNG"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def args(pair: Path, out, wh: Path, *extra: str) -> list[str]:
    return ["--base", str(pair / "base"), "--sft", str(pair / "sft"), "--out",
            str(out), "--db", str(wh), "--skip-behaviour", "--no-progress", *extra]


# ------------------------------------------------------------- names and folders

@pytest.mark.parametrize("name", ["..", ".", "/ABS", "a/b", "x" * 101, "a b"],
                         ids=["dotdot", "dot", "absolute", "slash", "long", "space"])
@pytest.mark.parametrize("uri", [False, True], ids=["path", "file-uri"])
def test_unsafe_name_is_refused_before_anything_is_written(name, uri, small_pair, wh,
                                                           tmp_path, capsys):
    home = tmp_path / "home"
    mine = user_files(home)
    out = home / "runs"
    name = name.replace("/ABS", str(home))  # an absolute path: the user's folder
    before = dump(wh)
    with pytest.raises(SystemExit) as exc:
        run_main(args(small_pair, f"file://{out}" if uri else out, wh, "--name", name))
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "is not usable" in err and repr(name)[:40] in err, err
    assert tree(home) == mine  # nothing written, nothing deleted, no runs/ made
    assert dump(wh) == before


@pytest.mark.parametrize("name", ["..", ".", "../up"])
def test_unsafe_name_in_a_pairs_file_is_refused(name, tmp_path, wh, small_pair,
                                                capsys):
    toml = tmp_path / "pairs.toml"
    toml.write_text(f'[[pair]]\nname = "{name}"\nbase = "{small_pair / "base"}"\n'
                    f'sft = "{small_pair / "sft"}"\n')
    mine = user_files(tmp_path / "home")
    before = dump(wh)
    with pytest.raises(SystemExit) as exc:
        run_main(["--pairs", str(toml), "--out", str(tmp_path / "home" / "runs"),
                  "--db", str(wh), "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert f"{toml}: [[pair]] #1 ({name!r}): name {name!r} is not usable" in err, err
    assert tree(tmp_path / "home") == mine
    assert dump(wh) == before


def test_folder_that_is_not_a_run_is_refused_then_used_with_force(small_pair, wh,
                                                                  tmp_path, capsys):
    out = tmp_path / "out"
    mine = user_files(out / "mine")
    before = dump(wh)
    assert run_main(args(small_pair, out, wh, "--name", "mine")) == 2
    err = capsys.readouterr().err
    assert f"{out / 'mine'}: not a compute.run folder (4 file(s), e.g. " in err, err
    assert "pass --force to use it" in err
    assert tree(out / "mine") == mine and dump(wh) == before

    # --force: the run uses the folder; the person's files stay as they were
    assert run_main(args(small_pair, out, wh, "--name", "mine", "--force")) == 0
    capsys.readouterr()
    files = tree(out / "mine")
    assert {k: files[k] for k in mine} == mine
    assert query(wh, "select count(*) from raw.spectra where pair = 'mine'") == [
        (3 * N_MATRICES,)]
    assert query(wh, "select count(*) from raw.spectra where pair = 'small'") == [
        (3 * N_MATRICES,)]


def test_run_of_another_pair_is_refused(base_warehouse, small_pair, wh, tmp_path,
                                        capsys):
    out = tmp_path / "runs"
    shutil.copytree(base_warehouse[1] / "small", out / "other")  # renamed by hand
    kept = tree(out / "other")
    before = dump(wh)
    assert run_main(args(small_pair, out, wh, "--name", "other")) == 2
    err = capsys.readouterr().err
    assert f"{out / 'other'}: a run of pair 'small'" in err, err
    assert tree(out / "other") == kept and dump(wh) == before


def test_starting_over_removes_only_the_earlier_runs_files(base_warehouse, small_pair,
                                                           wh, tmp_path, capsys):
    """Other models under the same name: the earlier run's result files go, a
    person's files in the same folders stay, and the rows are the new run's."""
    out = tmp_path / "runs"
    shutil.copytree(base_warehouse[1] / "small", out / "small")
    mine = user_files(out / "small")
    earlier = json.loads((out / "small" / "run.json").read_text())
    swapped = ["--base", str(small_pair / "sft"), "--sft", str(small_pair / "base")]
    assert run_main([*swapped, *args(small_pair, out, wh, "--name", "small")[4:]]) == 0
    assert "starting over" in capsys.readouterr().err
    files = tree(out / "small")
    assert {k: files[k] for k in mine} == mine
    now = json.loads((out / "small" / "run.json").read_text())
    assert now["run_id"] != earlier["run_id"]
    runs = query(wh, "select distinct run_id, base_model from raw.spectra "
                 "where pair = 'small'")
    assert runs == [(now["run_id"], str(small_pair / "sft"))]
    assert query(wh, "select count(*) from raw.spectra where pair = 'small'") == [
        (3 * N_MATRICES,)]


# ------------------------------------------------------------------------ bounds

@pytest.mark.parametrize("flags", [["--shard", "0/1000000000"],
                                   ["--dry-run", "--shards", "1000000000"],
                                   ["--dry-run", "--shards", "35"]],
                         ids=["shard", "dry-run", "one-too-many"])
def test_shard_count_above_the_work_is_refused_at_once(flags, small_pair, wh,
                                                       tmp_path, capsys):
    """The tiny pair can be cut into at most 34 units: per block q_proj and
    o_proj (64 x 64) whole, k_proj, v_proj (32 x 64) and down_proj (64 x 160) not
    tall, gate_proj and up_proj (160 x 64) 2 pieces each: 9; two blocks, and
    embed_tokens and lm_head (512 x 64) 8 pieces each: 18 + 16 = 34."""
    before = dump(wh)
    t0 = time.perf_counter()
    rc = run_main(args(small_pair, tmp_path / "runs", wh, "--name", "s", *flags))
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "work unit(s) at that count" in err and \
        f"use at most {N_MATRICES} shards" in err, err
    assert elapsed < 30  # it grew to 8 GB and never answered
    assert not (tmp_path / "runs").exists() and dump(wh) == before


def test_ray_shard_count_above_the_work_is_refused_before_any_task(
        small_pair, wh, tmp_path, capsys):
    """--ray --shards N built N task command lines before any task said no."""
    before = dump(wh)
    t0 = time.perf_counter()
    rc = run_main(args(small_pair, tmp_path / "runs", wh, "--name", "s", "--ray",
                       "--shards", "1000000000"))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"use at most {N_MATRICES} shards" in err, err
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "runs").exists() and dump(wh) == before


def test_as_many_shards_as_tensors_is_planned(small_pair, wh, tmp_path, capsys):
    assert run_main(args(small_pair, tmp_path / "runs", wh, "--name", "s",
                         "--dry-run", "--shards", str(N_MATRICES))) == 0
    assert f"in {N_MATRICES} shard(s)" in capsys.readouterr().out


# ----------------------------------------------------------------- verified loads

@pytest.fixture
def spectra_run(base_warehouse, tmp_path) -> Path:
    """A copy of pair 'small''s loaded results (spectra and directions)."""
    out = tmp_path / "runs" / "small"
    shutil.copytree(base_warehouse[1] / "small", out)
    return out


def _refused(run_dir: Path, wh: Path, capsys, *extra: str) -> str:
    before, kept = dump(wh), tree(run_dir)
    assert load_main([str(run_dir), "--db", str(wh), *extra]) == 2
    err = capsys.readouterr().err
    no_traceback(err)
    assert "Nothing was changed in the warehouse" in err
    assert dump(wh) == before and tree(run_dir) == kept
    return err


@pytest.mark.parametrize("copy", ["spectra/00003.parquet=spectra/00003 (1).parquet",
                                  "spectra/00003.parquet=spectra/00099.parquet",
                                  "directions/overlap/00003.parquet="
                                  "directions/overlap/00099.parquet",
                                  "directions/angles/00002.parquet="
                                  "directions/angles/00077.parquet"],
                         ids=["copy-name", "spectra", "overlap", "angles"])
def test_duplicated_result_file_is_refused(copy, spectra_run, wh, capsys):
    src, dst = copy.split("=")
    shutil.copyfile(spectra_run / src, spectra_run / dst)
    err = _refused(spectra_run, wh, capsys)
    assert f"{spectra_run / dst}: " in err, err
    # without run.json's list of files (an earlier release) the duplicate shows too
    manifest = json.loads((spectra_run / "run.json").read_text())
    for info in manifest["kinds"].values():
        info.pop("inventory", None)
    (spectra_run / "run.json").write_text(json.dumps(manifest))
    err = _refused(spectra_run, wh, capsys)
    assert spectra_run.name in err and ("is also in" in err or "a copy?" in err), err


def test_run_json_of_another_pair_is_refused(spectra_run, wh, capsys):
    manifest = json.loads((spectra_run / "run.json").read_text())
    manifest |= {"pair": "other", "run_id": "other-20260101T000000"}
    (spectra_run / "run.json").write_text(json.dumps(manifest))
    err = _refused(spectra_run, wh, capsys)
    assert "rows of run small-" in err and "is run other-20260101T000000 of pair " \
        "other" in err, err
    assert query(wh, "select count(*) from raw.spectra where pair = 'other'") == [(0,)]


def test_unsafe_pair_in_run_json_is_refused(spectra_run, wh, capsys):
    manifest = json.loads((spectra_run / "run.json").read_text())
    (spectra_run / "run.json").write_text(json.dumps(manifest | {"pair": "../x"}))
    err = _refused(spectra_run, wh, capsys)
    assert "pair '../x' is not usable" in err, err


# behaviour: a short run of the tiny pair, made once, copied by each test
N_POSTS, BATCH = 7, 2  # 4 batches, the last of one post


@pytest.fixture(scope="module")
def behaviour_run(small_pair, base_warehouse, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("beh")
    short = prompts(N_POSTS)
    short["text"] = short["text"].str.split().str[:12].str.join(" ")
    short.to_parquet(work / "prompts.parquet")
    rc = run_main(["--base", str(small_pair / "base"), "--sft", str(small_pair / "sft"),
                   "--name", "beh", "--out", str(work / "runs"), "--prompts",
                   str(work / "prompts.parquet"), "--batch-size", str(BATCH),
                   "--skip-spectra", "--no-load", "--no-progress"])
    assert rc == 0
    return work / "runs" / "beh"


@pytest.fixture
def beh(behaviour_run, tmp_path) -> Path:
    out = tmp_path / "runs" / "beh"
    shutil.copytree(behaviour_run, out)
    return out


def test_sound_behaviour_run_loads_every_post_once(beh, wh, capsys):
    assert load_main([str(beh), "--db", str(wh)]) == 0
    capsys.readouterr()
    assert query(wh, "select count(*), count(distinct post_id) from raw.post_texts "
                 "where pair = 'beh'") == [(N_POSTS, N_POSTS)]
    tokens = query(wh, "select sum(n_tokens) from raw.post_texts where pair = 'beh'")
    assert query(wh, "select count(*) from raw.token_logprobs where pair = 'beh'") == [
        (2 * tokens[0][0],)]


def test_missing_batch_marker_is_refused(beh, wh, capsys):
    marker = sorted((beh / "behaviour" / "post_texts").glob("*.parquet"))[0]
    marker.unlink()
    err = _refused(beh, wh, capsys)
    assert f"{marker}: missing" in err, err
    manifest = json.loads((beh / "run.json").read_text())
    del manifest["kinds"]["behaviour"]["inventory"]  # an earlier release's run.json
    (beh / "run.json").write_text(json.dumps(manifest))
    err = _refused(beh, wh, capsys)
    assert "a batch without its finished marker" in err and marker.name in err, err
    assert query(wh, "select count(*) from raw.post_texts where pair = 'beh'") == [(0,)]


def test_missing_batch_is_refused_by_the_post_count(beh, wh, capsys):
    """Every file of one batch gone, and no list of files: run.json's post count."""
    name = sorted((beh / "behaviour" / "post_texts").glob("*.parquet"))[0].name
    for table in ("token_logprobs", "token_shift", "residual_drift", "post_texts"):
        (beh / "behaviour" / table / name).unlink()
    manifest = json.loads((beh / "run.json").read_text())
    del manifest["kinds"]["behaviour"]["inventory"]
    (beh / "run.json").write_text(json.dumps(manifest))
    err = _refused(beh, wh, capsys)
    assert f"batch(es), {beh / 'run.json'} records {N_POSTS}" in err, err


@pytest.mark.parametrize("table", ["token_logprobs", "post_texts"])
def test_duplicated_behaviour_file_is_refused(table, beh, wh, capsys):
    src = sorted((beh / "behaviour" / table).glob("*.parquet"))[0]
    dst = src.with_name("0-" + "f" * 12 + ".parquet")  # a batch name, no marker
    shutil.copyfile(src, dst)
    err = _refused(beh, wh, capsys)
    assert str(dst) in err, err


def test_behaviour_under_another_pairs_run_json_is_refused(beh, spectra_run, wh,
                                                           capsys):
    """The behaviour files of 'beh' beside the run.json of 'small', loaded with
    --kind behaviour: it inserted 82,042 duplicate token rows before."""
    manifest = json.loads((spectra_run / "run.json").read_text())
    manifest["kinds"]["behaviour"] = json.loads((beh / "run.json").read_text())[
        "kinds"]["behaviour"]
    (spectra_run / "run.json").write_text(json.dumps(manifest))
    shutil.copytree(beh / "behaviour", spectra_run / "behaviour")
    err = _refused(spectra_run, wh, capsys, "--kind", "behaviour")
    assert "rows of run beh-" in err and "of pair small" in err, err
    assert query(wh, "select count(*) from raw.token_logprobs") == [(0,)]


def test_object_store_keys_outside_the_pair_folder_are_refused(tmp_path):
    """A listing with a key that would become a path outside the local copy ('..',
    an absolute key, an empty part) stops before anything is downloaded."""
    from types import SimpleNamespace

    from pyarrow.fs import FileType

    from ingest import results

    store = results.Store(f"file://{tmp_path / 'root' / 'p'}", tmp_path / "local")
    for key in ("../../outside.parquet", "spectra//00001.parquet", "./run.json"):
        info = SimpleNamespace(path=f"{store.base}/{key}", type=FileType.File)
        store.fs = SimpleNamespace(get_file_info=lambda selector, i=info: [i])
        with pytest.raises(results.ResultsError, match="outside the pair's folder"):
            store.pull()
    assert not (tmp_path / "outside.parquet").exists()
    assert not (tmp_path / "local").exists()


def test_default_name_is_a_safe_name():
    from compute.run.cli import default_name
    from ingest.runfolder import check_name

    assert default_name("Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B-Instruct") == \
        "Qwen2.5-7B-vs-Qwen2.5-7B-Instruct"
    name = default_name("/data/my model (v2)", "./sft run")
    assert name == "my-model-v2--vs-sft-run" and check_name(name) == name
    assert check_name(default_name("/", "..")) == "model-vs-model"
