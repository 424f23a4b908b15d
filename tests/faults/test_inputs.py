"""Inputs that parse but must not be trusted: a dump file with a row Id twice, and
JSON too deeply nested for Python's parser (config.json, run.json). One line naming
the file, exit 2, the user's files and the warehouse's rows as they were."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from compute.run.cli import main as run_main
from ingest.compute_load import main as load_main
from ingest.stackexchange import main as se_main
from tests.conftest import ROOT, env_for
from tests.faults.helpers import SITE, SITE_DIR, dump, no_traceback, query

DEEP = b"[" * 100_000 + b"]" * 100_000  # valid JSON, past Python's recursion limit


def test_duplicate_row_id_in_a_dump_is_refused(wh, tmp_path, capsys):
    """Posts.xml with one row repeated (a concatenated or hand-edited dump): it was
    loaded and published, and `dbt build` failed afterwards."""
    site = tmp_path / "site"
    shutil.copytree(SITE_DIR, site)
    posts = (site / "Posts.xml").read_bytes()
    first = posts.index(b"<row ")
    row = posts[first:posts.index(b"\n", first) + 1]
    row_id = row.split(b'Id="')[1].split(b'"')[0].decode()
    n_posts = posts.count(b"<row ")
    dup = posts[:first] + row + posts[first:]
    (site / "Posts.xml").write_bytes(dup)
    before = dump(wh)
    assert query(wh, "select count(*) from raw.se_posts where site = ?", [SITE]) == [
        (n_posts,)]
    rc = se_main([str(site), "--site", SITE, "--db", str(wh), "--workers", "1",
                  "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    no_traceback(err)
    assert f"{site / 'Posts.xml'}: row Id {row_id} appears 2 times" in err, err
    assert dump(wh) == before  # the site's earlier rows, every table
    assert (site / "Posts.xml").read_bytes() == dup
    # the documented way to load such a file as it is (a test file of copies)
    assert se_main([str(site), "--site", SITE, "--db", str(wh), "--workers", "1",
                    "--no-progress", "--allow-repeated-ids"]) == 0
    capsys.readouterr()
    assert query(wh, "select count(*), count(distinct id) from raw.se_posts "
                 "where site = ?", [SITE]) == [(n_posts + 1, n_posts)]


def _deep_config(pair_dir):
    (pair_dir / "sft" / "config.json").write_bytes(DEEP)


def test_deeply_nested_config_is_one_line(pair_copy, wh, tmp_path):
    """A RecursionError traceback (exit 1) before; as its own process, since the
    interpreter's recursion limit is what is hit."""
    _deep_config(pair_copy)
    before = dump(wh)
    proc = subprocess.run(
        [sys.executable, "-m", "compute.run", "--base", str(pair_copy / "base"),
         "--sft", str(pair_copy / "sft"), "--name", "deep", "--out",
         str(tmp_path / "runs"), "--db", str(wh), "--no-progress"],
        cwd=ROOT, env=env_for(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    no_traceback(proc.stderr)
    first = proc.stderr.splitlines()[0]
    assert first.startswith(f"error: {pair_copy / 'sft' / 'config.json'}: not valid "
                            "JSON (maximum recursion depth"), proc.stderr
    assert not (tmp_path / "runs").exists() and dump(wh) == before


def test_deeply_nested_config_in_doctor(pair_copy, capsys):
    from compute.pairs.doctor import main as doctor_main

    _deep_config(pair_copy)
    rc = doctor_main(["--base", str(pair_copy / "base"), "--sft",
                      str(pair_copy / "sft"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 2
    assert f"{pair_copy / 'sft' / 'config.json'}: not valid JSON" in out, out


@pytest.mark.parametrize("where", ["run.json", "kinds/spectra.json"])
def test_deeply_nested_manifest_is_one_line(where, base_warehouse, wh, tmp_path,
                                            capsys):
    run_dir = tmp_path / "runs" / "small"
    shutil.copytree(base_warehouse[1] / "small", run_dir)
    (run_dir / where).parent.mkdir(exist_ok=True)
    (run_dir / where).write_bytes(DEEP)
    before = dump(wh)
    assert load_main([str(run_dir), "--db", str(wh)]) == 2
    err = capsys.readouterr().err
    no_traceback(err)
    assert err.splitlines()[0].startswith(f"error: {run_dir / where}: not valid JSON"), err
    assert dump(wh) == before


def test_deeply_nested_run_json_does_not_stop_a_run(small_pair, wh, tmp_path, capsys):
    """compute.run reads an earlier run.json of the folder to resume; one it cannot
    parse is a folder it does not know: refused, kept as it is."""
    run_dir = tmp_path / "runs" / "deep"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_bytes(DEEP)
    before = dump(wh)
    assert run_main(["--base", str(small_pair / "base"), "--sft",
                     str(small_pair / "sft"), "--name", "deep", "--out",
                     str(tmp_path / "runs"), "--db", str(wh), "--skip-behaviour",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{run_dir / 'run.json'}: not a compute.run manifest" in err, err
    assert (run_dir / "run.json").read_bytes() == DEEP and dump(wh) == before
