"""Broken checkpoints: compute.run stops before any work with exit 2 and a message
naming the file or tensor, the doctor reports it, and the warehouse is untouched.
A tensor with NaN/Inf is the exception: the run goes on and marks it. A shard from
the hub cache damaged inside (right length) is caught by the doctor's --verify."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from compute.fixtures.planted import place_in_hub_cache
from compute.io import checkpoints
from compute.pairs import doctor
from compute.run.cli import main as run_main
from tests.conftest import run_dbt, run_py
from tests.faults.helpers import N_MATRICES, dump, file_digest, no_traceback, query

ST = "model.safetensors"
Q0 = "model.layers.0.self_attn.q_proj.weight"
UP1 = "model.layers.1.mlp.up_proj.weight"


def _resave(folder: Path, change) -> None:
    tensors = load_file(str(folder / ST))
    change(tensors)
    save_file(tensors, str(folder / ST), metadata={"format": "pt"})


def _shard(folder: Path) -> None:
    """Rewrite a single-file checkpoint as two shards and an index."""
    tensors = load_file(str(folder / ST))
    names = list(tensors)
    weight_map = {}
    for k, part in enumerate((names[:len(names) // 2], names[len(names) // 2:])):
        fname = f"model-{k + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(folder / fname))
        weight_map |= dict.fromkeys(part, fname)
    (folder / ST).unlink()
    (folder / f"{ST}.index.json").write_text(json.dumps({"weight_map": weight_map}))


def truncated(p: Path) -> list[str]:
    f = p / "sft" / ST
    f.write_bytes(f.read_bytes()[:-4096])
    return [str(f), "truncated", "4096 missing"]


def truncated_in_header(p: Path) -> list[str]:
    f = p / "base" / ST
    f.write_bytes(f.read_bytes()[:300])
    return [str(f), "corrupt or truncated header"]


def corrupt_header(p: Path) -> list[str]:
    f = p / "sft" / ST
    data = bytearray(f.read_bytes())
    data[8:40] = b"#" * 32  # the JSON header's start
    f.write_bytes(bytes(data))
    return [str(f), "corrupt header"]


def garbage_file(p: Path) -> list[str]:
    f = p / "base" / ST
    f.write_bytes(b"<html>502 Bad Gateway</html>" * 10)  # a failed download
    return [str(f), "corrupt or truncated header"]


def missing_shard(p: Path) -> list[str]:
    _shard(p / "sft")
    f = p / "sft" / "model-00002-of-00002.safetensors"
    f.unlink()
    return [str(f), "missing", "index"]


def shard_lacks_tensor(p: Path) -> list[str]:
    _shard(p / "base")
    f = p / "base" / "model-00001-of-00002.safetensors"
    tensors = load_file(str(f))
    dropped = min(tensors)
    del tensors[dropped]
    save_file(tensors, str(f))
    return [str(f), dropped]


def different_architecture(p: Path) -> list[str]:
    cfg = p / "sft" / "config.json"
    c = json.loads(cfg.read_text())
    c["num_hidden_layers"] = 3
    cfg.write_text(json.dumps(c))
    return ["different architectures", "num_hidden_layers", "2", "3"]


def different_shape(p: Path) -> list[str]:
    _resave(p / "sft", lambda t: t.__setitem__(UP1, t[UP1][:, :32].contiguous()))
    return [UP1, "shape", "[160, 64]", "[160, 32]"]


def unreadable_dtype(p: Path) -> list[str]:
    """(Another float dtype on one side is fine: tests/test_variants.py.)"""
    _resave(p / "sft", lambda t: t.__setitem__(UP1, (t[UP1] * 100).to(torch.int32)))
    return [UP1, "I32", "sftscope reads BF16, F16, F32, F64"]


def missing_tensor(p: Path) -> list[str]:
    _resave(p / "base", lambda t: t.pop(Q0))
    return [Q0, "only in"]


def bad_config(p: Path) -> list[str]:
    cfg = p / "base" / "config.json"
    cfg.write_text(cfg.read_text()[:-40])  # cut short, as by a failed download
    return [str(cfg), "not valid JSON"]


def binary_config(p: Path) -> list[str]:
    cfg = p / "sft" / "config.json"
    cfg.write_bytes(b"\xff\xfe\x00garbage")
    return [str(cfg), "not valid JSON"]


def bad_index(p: Path) -> list[str]:
    _shard(p / "sft")
    idx = p / "sft" / f"{ST}.index.json"
    idx.write_text('{"weight_map": ["not", "a", "map"]}')
    return [str(idx), "not a safetensors index"]


FAULTS = [truncated, truncated_in_header, corrupt_header, garbage_file, missing_shard,
          shard_lacks_tensor, different_architecture, different_shape, unreadable_dtype,
          missing_tensor, bad_config, binary_config, bad_index]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.__name__ for f in FAULTS])
def test_bad_checkpoint_stops_before_any_work(fault, pair_copy, wh, tmp_path, capsys):
    expected = fault(pair_copy)
    before = file_digest(wh)
    runs = tmp_path / "runs"
    rc = run_main(["--base", str(pair_copy / "base"), "--sft", str(pair_copy / "sft"),
                   "--name", "broken", "--out", str(runs), "--db", str(wh),
                   "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    for part in expected:
        assert part in err, (part, err)
    assert "compute.doctor" in err  # points at the full report
    assert not runs.exists()  # nothing computed, nothing written
    assert file_digest(wh) == before  # the warehouse was not even opened

    rc = doctor.main(["--base", str(pair_copy / "base"), "--sft",
                      str(pair_copy / "sft"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 2, out
    assert "FAIL" in out and out.rstrip().splitlines()[-1].startswith("FAIL")
    for part in expected:
        assert part in out, (part, out)


def test_doctor_lists_every_problem_at_once(pair_copy, capsys):
    expected = truncated(pair_copy) + bad_config(pair_copy)
    rc = doctor.main(["--base", str(pair_copy / "base"), "--sft",
                      str(pair_copy / "sft"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 2
    for part in expected:
        assert part in out, (part, out)


def test_doctor_passes_a_sound_pair(small_pair, capsys):
    rc = doctor.main(["--base", str(small_pair / "base"), "--sft",
                      str(small_pair / "sft"), "--scan", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "FAIL" not in out and out.rstrip().splitlines()[-1].startswith("PASS")
    assert "all 27 tensors finite" in out


def test_check_flag_from_the_command_line(pair_copy, tmp_path):
    """`python -m compute.run --check` as a user runs it: exit 2, a report, no
    traceback, nothing written."""
    expected = truncated(pair_copy)
    proc = run_py("-m", "compute.run", "--check", "--base", str(pair_copy / "base"),
                  "--sft", str(pair_copy / "sft"), "--out", str(tmp_path / "runs"),
                  db=tmp_path / "w.duckdb", check=False)
    assert proc.returncode == 2, proc.stderr
    no_traceback(proc.stderr)
    for part in expected:
        assert part in proc.stdout
    assert not (tmp_path / "runs").exists() and not (tmp_path / "w.duckdb").exists()


@pytest.mark.slow
def test_nonfinite_tensor_is_marked_and_the_run_goes_on(pair_copy, wh, tmp_path,
                                                        capsys):
    def poison(t):
        t[Q0][0, 0] = float("nan")
        t[Q0][3, 5] = float("inf")

    _resave(pair_copy / "sft", poison)
    rc = doctor.main(["--base", str(pair_copy / "base"), "--sft",
                      str(pair_copy / "sft"), "--scan", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 2 and f"sft tensor {Q0}" in out and "1 NaN, 1 Inf" in out, out

    before = dump(wh)
    rc = run_main(["--base", str(pair_copy / "base"), "--sft", str(pair_copy / "sft"),
                   "--name", "poisoned", "--out", str(tmp_path / "runs"), "--db",
                   str(wh), "--skip-behaviour", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"warning: non-finite entries in {Q0} (sft: 2 NaN/Inf)" in err
    assert f"{Q0} (delta: 2 NaN/Inf)" in err
    rows = query(wh, "select tensor, role, n_nonfinite, len(singular_values) from "
                 "raw.spectra where pair = 'poisoned' order by all")
    assert len(rows) == 3 * N_MATRICES
    marked = {(t, r): (n, k) for t, r, n, k in rows if n}
    assert marked == {(Q0, "sft"): (2, 0), (Q0, "delta"): (2, 0)}
    assert all(k > 0 for t, r, n, k in rows if not n)
    # the other pair's rows are untouched
    after = dump(wh)
    assert after != before
    assert query(wh, "select count(*) from raw.spectra where pair = 'small'") == [
        (3 * N_MATRICES,)]

    # the models build on it: the marked spectra give NULL ranks, not an error
    proc = run_dbt(wh, "build", "--select", "+path:models/marts/weights", check=False)
    assert "ERROR creating" not in proc.stdout, proc.stdout[-4000:]
    m = query(wh, "select role, n_nonfinite, s_max, stable_rank, signal_rank from "
              "marts.fct_matrix_metrics where pair = 'poisoned' and tensor = ?", [Q0])
    by_role = {r[0]: r[1:] for r in m}
    assert by_role["sft"] == (2, None, None, None)
    assert by_role["delta"][:3] == (2, None, None)
    assert by_role["base"][0] == 0 and by_role["base"][1] > 0
    # and the data tests pass on them (their where_clause excludes marked spectra),
    # so `dbt build` succeeds and builds the marts downstream
    failing = re.findall(r"Failure in test (\S+)", proc.stdout)
    assert proc.returncode == 0 and not failing, proc.stdout[-3000:]
    assert query(wh, "select count(*) from marts.fct_pair_summary where pair = "
                 "'poisoned'")[0][0] > 0


# Checksums: the hub cache names each LFS blob (the shards) by its sha256.

SHARD2 = "model-00002-of-00002.safetensors"


@pytest.fixture
def hub_pair(pair_copy, tmp_path) -> tuple[Path, Path, Path]:
    """(hub cache, base snapshot, sft snapshot): the tiny pair, the SFT sharded, laid
    out as huggingface_hub's cache as org/base and org/sft."""
    _shard(pair_copy / "sft")
    cache = tmp_path / "hub"
    snap_b = place_in_hub_cache(pair_copy / "base", cache, "org/base", "a" * 40)
    snap_s = place_in_hub_cache(pair_copy / "sft", cache, "org/sft", "b" * 40)
    return cache, snap_b, snap_s


def _flip_a_byte(path: Path) -> tuple[str, str]:
    """Flip the lowest bit of one byte halfway through the tensor data (a bf16
    mantissa bit: the value stays finite), in place, the length unchanged. Returns
    the sha256 before and after."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    before = hashlib.sha256(data).hexdigest()
    data[start + (len(data) - start) // 4 * 2] ^= 0x01
    path.write_bytes(bytes(data))
    return before, hashlib.sha256(data).hexdigest()


def _doctor(base: Path, sft: Path, *flags: str, capsys) -> tuple[int, str]:
    rc = doctor.main(["--base", str(base), "--sft", str(sft), "--no-progress", *flags])
    return rc, capsys.readouterr().out


def test_verify_passes_intact_hub_shards(hub_pair, capsys):
    _, snap_b, snap_s = hub_pair
    rc, out = _doctor(snap_b, snap_s, "--verify", capsys=capsys)
    assert rc == 0, out
    assert "base: 1 weight file(s) match their hub sha256" in out
    assert "sft: 2 weight file(s) match their hub sha256" in out
    assert "FAIL" not in out and out.rstrip().splitlines()[-1].startswith("PASS")


def test_verify_catches_a_flipped_byte_in_a_hub_shard(hub_pair, tmp_path, capsys):
    """Complete by size, header intact, every value finite: only the checksum
    tells. The report names the file, the expected and the actual sha256."""
    _, snap_b, snap_s = hub_pair
    blob = (snap_s / SHARD2).resolve()
    expected, actual = _flip_a_byte(blob)
    assert blob.name == expected
    rc, out = _doctor(snap_b, snap_s, capsys=capsys)  # headers and sizes only
    assert rc == 0, out
    assert "add --verify" in out

    rc, out = _doctor(snap_b, snap_s, "--verify", capsys=capsys)
    assert rc == 2, out
    line = next(x for x in out.splitlines() if "sha256 mismatch" in x)
    assert line.startswith("  FAIL  sft: ")
    assert str(snap_s / SHARD2) in line and expected in line and actual in line
    assert str(blob) in line  # what to delete
    assert "base: 1 weight file(s) match" in out  # the intact one still passes
    assert out.rstrip().splitlines()[-1].startswith("FAIL")

    # compute.run --check --scan: the values are finite, the checksum is not
    rc = run_main(["--check", "--scan", "--base", str(snap_b), "--sft", str(snap_s),
                   "--out", str(tmp_path / "runs"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 2, out
    assert "sft: all 27 tensors finite" in out and f"got {actual}" in out
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_verify_from_the_command_line_with_hub_ids(hub_pair, tmp_path):
    """`python -m compute.doctor --base org/base --sft org/sft --verify`, resolved
    from the hub cache offline, as a user runs it: exit 2, no traceback."""
    cache, _, snap_s = hub_pair
    _, actual = _flip_a_byte((snap_s / SHARD2).resolve())
    proc = run_py("-m", "compute.doctor", "--base", "org/base", "--sft", "org/sft",
                  "--verify", check=False, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache),
                  HF_HOME=str(tmp_path / "hf"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    no_traceback(proc.stderr)
    assert "hub commit " + "b" * 40 in proc.stdout
    assert f"{SHARD2}: sha256 mismatch" in proc.stdout and actual in proc.stdout
    assert "base: 1 weight file(s) match their hub sha256" in proc.stdout


def test_verify_says_what_it_cannot_check(hub_pair, pair_copy, capsys):
    """A local folder has no reference checksum; a blob named by a git object id
    (40 hex digits: a small file stored in git) has no sha256 either. Neither fails."""
    _, _, snap_s = hub_pair
    link = snap_s / SHARD2
    blob = link.resolve()
    git_blob = blob.with_name("c" * 40)
    blob.rename(git_blob)
    link.unlink()
    link.symlink_to(git_blob)
    rc, out = _doctor(pair_copy / "base", snap_s, "--verify", capsys=capsys)
    assert rc == 0, out
    assert (f"SKIP  base: {pair_copy / 'base'}: no reference checksum (a local folder"
            in out)
    assert (f"SKIP  sft: 1 weight file(s) with no sha256 to compare (stored in git): "
            f"{SHARD2}" in out)
    assert "sft: 1 weight file(s) match their hub sha256" in out


def test_sha256_is_streamed_in_blocks(pair_copy, monkeypatch):
    f = pair_copy / "base" / ST
    monkeypatch.setattr(checkpoints, "HASH_BLOCK", 4097)  # many short reads
    assert checkpoints.sha256_file(f) == hashlib.sha256(f.read_bytes()).hexdigest()
