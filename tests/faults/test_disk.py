"""Failed writes (disk full, I/O error): results and manifests are written to a
temporary name and renamed, so a failure leaves the previous file and no half file
under the final name; the loader ignores stray temporaries and refuses damaged
Parquet, leaving the warehouse as it was."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compute.behaviour import scoring as behaviour
from compute.io import files
from ingest.compute_load import main as load_main
from tests.faults.helpers import N_MATRICES, dump, query

TABLE = pa.table({"x": [1, 2, 3]})


def _disk_full(table, where, *args, **kwargs):
    """Write half a file, then fail as a full disk does."""
    Path(where).write_bytes(b"PAR1" + b"\0" * 100)
    raise OSError(errno.ENOSPC, "No space left on device", str(where))


def test_one_parquet_writer_for_spectra_and_behaviour():
    assert behaviour.write_parquet is files.write_parquet


def test_failed_parquet_write_keeps_the_previous_file(tmp_path, monkeypatch):
    writer = files.write_parquet
    target = tmp_path / "out" / "00003.parquet"
    writer(TABLE, target)
    before = target.read_bytes()
    fresh = tmp_path / "out" / "00004.parquet"
    monkeypatch.setattr(pq, "write_table", _disk_full)
    for path in (target, fresh):
        with pytest.raises(OSError, match="No space left"):
            writer(pa.table({"x": [9]}), path)
    assert target.read_bytes() == before  # the previous file, whole
    assert not fresh.exists()  # no half file under a final name
    assert pq.read_table(target).equals(TABLE)
    finals = sorted(p.name for p in target.parent.glob("[0-9]*.parquet"))
    assert finals == ["00003.parquet"]
    assert not list(target.parent.glob(".*"))  # no temporary left behind


def test_failed_manifest_write_keeps_the_previous_manifest(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    files.atomic_write_bytes(path, b'{"run_id": "old"}')

    def fail(self, data):
        Path.open(self, "wb").write(data[:5])
        raise OSError(errno.EIO, "Input/output error", str(self))

    monkeypatch.setattr(Path, "write_bytes", fail)
    with pytest.raises(OSError):
        files.atomic_write_bytes(path, b'{"run_id": "new", "kinds": {}}')
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"run_id": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_failed_folder_write_keeps_the_previous_folder(tmp_path):
    out = tmp_path / "pair"
    with files.atomic_folder(out) as tmp:
        (tmp / "a.json").write_text("old")
    with pytest.raises(RuntimeError), files.atomic_folder(out) as tmp:
        (tmp / "a.json").write_text("new")
        raise RuntimeError("killed half way")
    assert [p.name for p in tmp_path.iterdir()] == ["pair"]
    assert (out / "a.json").read_text() == "old"
    with files.atomic_folder(out) as tmp:
        (tmp / "b.json").write_text("b")
    assert [p.name for p in out.iterdir()] == ["b.json"]  # replaced, not merged


@pytest.fixture
def run_copy(base_warehouse, tmp_path) -> Path:
    """A copy of the loaded run folder of pair 'small'."""
    out = tmp_path / "runs" / "small"
    shutil.copytree(base_warehouse[1] / "small", out)
    return out


def test_loader_ignores_stray_temporaries(run_copy, wh, capsys):
    spectra = run_copy / "spectra"
    (spectra / ".00003.parquet.tmp4242").write_bytes(b"PAR1 half a file")
    (spectra / ".vectors.parquet.tmp4242").write_bytes(b"")
    before = dump(wh)
    assert load_main([str(run_copy), "--db", str(wh)]) == 0
    assert f"raw.spectra {3 * N_MATRICES} rows" in capsys.readouterr().out
    assert dump(wh) == before  # the same rows again: replaced, not duplicated


def test_damaged_parquet_is_refused_naming_the_file(run_copy, wh, capsys):
    bad = run_copy / "spectra" / "00005.parquet"
    bad.write_bytes(bad.read_bytes()[:200])  # cut short (copied from a full disk)
    before = dump(wh)
    assert load_main([str(run_copy), "--db", str(wh)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Nothing was changed in the warehouse" in err, err
    assert dump(wh) == before


def test_missing_result_file_is_refused(run_copy, wh, capsys):
    (run_copy / "spectra" / "00007.parquet").unlink()
    before = dump(wh)
    assert load_main([str(run_copy), "--db", str(wh)]) == 2
    err = capsys.readouterr().err
    assert (f"{run_copy / 'spectra' / '00007.parquet'}: missing (1 file(s) of "
            "spectra that run.json lists are absent)") in err, err
    assert dump(wh) == before
    # a run.json of an earlier release lists no files: its counts still catch it
    manifest = json.loads((run_copy / "run.json").read_text())
    del manifest["kinds"]["spectra"]["inventory"]
    (run_copy / "run.json").write_text(json.dumps(manifest))
    assert load_main([str(run_copy), "--db", str(wh)]) == 2
    err = capsys.readouterr().err
    assert f"{N_MATRICES - 1} tensor files, {run_copy / 'run.json'} records " \
        f"{N_MATRICES} tensors" in err, err
    assert dump(wh) == before


@pytest.mark.parametrize("content", [b"", b'{"pair": "small"', b'{"pair": "small"}'],
                         ids=["empty", "cut-short", "incomplete"])
def test_bad_manifest_is_refused(content, run_copy, wh, capsys):
    (run_copy / "run.json").write_bytes(content)
    before = dump(wh)
    assert load_main([str(run_copy), "--db", str(wh)]) == 2
    err = capsys.readouterr().err
    assert "run.json" in err and "Traceback" not in err, err
    assert dump(wh) == before


def test_failed_load_into_a_new_warehouse_creates_no_tables(run_copy, tmp_path,
                                                            capsys, monkeypatch):
    """The files are checked before the warehouse is opened, so a damaged file
    leaves no warehouse at all; and the raw schema is created inside the load's
    transaction: a failure past the checks (here with them skipped) leaves an empty
    file, not half a schema."""
    (run_copy / "spectra" / "00001.parquet").write_bytes(b"garbage")
    db = tmp_path / "new.duckdb"
    assert load_main([str(run_copy), "--db", str(db)]) == 2
    assert "00001.parquet" in capsys.readouterr().err
    assert not db.exists()
    monkeypatch.setattr("ingest.compute_load.verify", lambda *a: None)
    assert load_main([str(run_copy), "--db", str(db)]) == 2
    capsys.readouterr()
    assert query(db, "select count(*) from duckdb_tables()") == [(0,)]
