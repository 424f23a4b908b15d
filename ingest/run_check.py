"""Check a compute.run results folder against its run.json before anything is loaded.

    from ingest.run_check import verify
    verify(run_dir, manifest, ["spectra", "behaviour"])   # RunMismatch, naming the file

ingest.compute_load calls it before it opens the warehouse, so a folder whose files
do not add up is refused (exit 2) with nothing changed. For each kind to load it
checks: every file has a name compute.run writes (a copy such as `00003 (1).parquet`
is not one); the files are the ones run.json lists for the kind (`inventory`, written
by compute.run when the kind finished; a run of an earlier release has no list, and
the checks below still hold), with the rows it records; the pair and run id inside
each file are run.json's; no tensor (spectra, directions) or post (behaviour) is in
two files; the counts the manifest records (spectra: tensors and 3 rows per matrix,
the 1-D tensors; behaviour: the posts) are there; every batch has its finished marker
(its post_texts file) and every table holds the same posts.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from ingest.runfolder import KIND_TABLES, RUN_FILES

UNIT = {"spectra": "tensor", "random_spectra": "tensor", "direction_overlap": "tensor",
        "direction_angles": "tensor", "intruders": "tensor"}  # one file per unit
UNIT |= {t: "post_id" for t in KIND_TABLES["behaviour"]}


class RunMismatch(ValueError):
    """A results folder whose files do not match its run.json (the message says
    which file and what differs)."""


def _files(run_dir: Path, pattern: str) -> list[Path]:
    files = sorted(p for p in run_dir.glob(pattern) if not p.name.startswith("."))
    for f in files:
        if not RUN_FILES.fullmatch(f.relative_to(run_dir).as_posix()):
            raise RunMismatch(f"{f}: not a file compute.run writes (a copy?); move it "
                              "out of the results folder")
    return files


def _per_file(files: list[Path], unit: str | None) -> list[tuple]:
    """(file, run ids, pairs, rows, units) of each file, in one read of the
    columns needed."""
    units = f", list(distinct {unit})" if unit else ", []"
    con = duckdb.connect()
    try:
        return con.execute(
            f"select filename, list(distinct run_id), list(distinct pair), count(*)"
            f"{units} from read_parquet(?, filename = true, union_by_name = true) "
            "group by filename", [[str(f) for f in files]]).fetchall()
    finally:
        con.close()


def _check_table(run_dir: Path, table: str, files: list[Path], manifest: dict,
                 listed: dict) -> dict:
    """Pair, run id, duplicates and listed rows of one table's files; returns
    {unit value: file} (empty without a unit)."""
    pair, run_id = manifest["pair"], manifest["run_id"]
    found = {Path(r[0]): r for r in _per_file(files, UNIT.get(table))} if files else {}
    owner: dict = {}
    rows = 0
    for f in files:
        _, runs, pairs, n, units = found.get(f, (f, [], [], 0, []))
        if n and (runs != [run_id] or pairs != [pair]):
            raise RunMismatch(f"{f}: rows of run {', '.join(map(str, runs))} (pair "
                              f"{', '.join(map(str, pairs))}), but {run_dir / 'run.json'}"
                              f" is run {run_id} of pair {pair}")
        rows += n
        for u in units:
            if u in owner:
                raise RunMismatch(f"{f}: {UNIT[table]} {u} is also in {owner[u]} "
                                  "(a file twice?); each is in one file")
            owner[u] = f
    want = (listed.get("rows") or {}).get(table)
    if want is not None and rows != want:
        raise RunMismatch(f"{run_dir}: {table} has {rows} rows, {run_dir / 'run.json'} "
                          f"records {want}")
    return owner


def _check_listed(run_dir: Path, table: str, files: list[Path], listed: dict) -> None:
    names = (listed.get("files") or {}).get(table)
    if names is None:
        return
    have = {f.relative_to(run_dir).as_posix() for f in files}
    missing, extra = sorted(set(names) - have), sorted(have - set(names))
    if missing:
        raise RunMismatch(f"{run_dir / missing[0]}: missing ({len(missing)} file(s) "
                          f"of {table} that run.json lists are absent)")
    if extra:
        raise RunMismatch(f"{run_dir / extra[0]}: not among the files run.json lists "
                          f"for {table} ({len(extra)} such file(s)); a file of "
                          "another run or a copy?")


def _check_counts(run_dir: Path, kind: str, info: dict, tables: dict) -> None:
    """The manifest's own counts of a kind against what the files hold."""
    where = run_dir / "run.json"
    if kind == "spectra":
        n_files = len(tables["spectra"][0])
        n_tensors = info.get("n_tensors")
        if n_tensors is not None and n_files != n_tensors:
            raise RunMismatch(f"{run_dir / 'spectra'}: {n_files} tensor files, {where}"
                              f" records {n_tensors} tensors")
        if info.get("n_vectors") and not tables["vector_changes"][0]:
            raise RunMismatch(f"{run_dir / 'spectra/vectors.parquet'}: missing "
                              f"({where} records {info['n_vectors']} 1-D tensors)")
    if kind != "behaviour":
        return
    markers = {f.name for f in tables["post_texts"][0]}
    posts = set(tables["post_texts"][1])
    for table, (files, owner) in tables.items():
        unmarked = [f for f in files if f.name not in markers]
        if unmarked:
            raise RunMismatch(f"{unmarked[0]}: a batch without its finished marker "
                              f"(behaviour/post_texts/{unmarked[0].name} is missing)")
        if set(owner) != posts:
            odd = sorted(set(owner) ^ posts)
            raise RunMismatch(f"{run_dir / 'behaviour' / table}: posts differ from "
                              f"post_texts' (e.g. post {odd[0]})")
    want = (info.get("options") or {}).get("n_posts")
    if want is not None and len(posts) != want:
        raise RunMismatch(f"{run_dir / 'behaviour/post_texts'}: {len(posts)} posts in "
                          f"{len(markers)} batch(es), {where} records {want}")


def verify(run_dir: Path, manifest: dict, kinds: list[str]) -> None:
    """Raise RunMismatch when a kind's files in `run_dir` do not match `manifest`
    (run.json as a dict); reads the files' key columns only."""
    for kind in kinds:
        info = manifest["kinds"][kind]
        listed = info.get("inventory") or {}
        tables = {}
        for table, pattern in KIND_TABLES[kind].items():
            files = _files(run_dir, pattern)
            _check_listed(run_dir, table, files, listed)
            tables[table] = (files, _check_table(run_dir, table, files, manifest,
                                                 listed))
        _check_counts(run_dir, kind, info, tables)
