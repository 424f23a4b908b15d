"""Pair names and the files a compute.run owns in its folder OUT/<pair>.

    from ingest.runfolder import check_name, check_folder, remove_run_files
    name = check_name(args.name)                  # PairNameError: not one safe name
    check_folder(out / name, name, force=False)   # FolderError: a folder not ours

A pair name becomes a folder under --out and an object-store key, so it is one safe
path component: letters, digits and `._-`, at most NAME_MAX characters, not `.` or
`..`. compute.run writes into OUT/<pair> only when that folder is missing, empty, or
holds a run.json of the same pair; any other folder is refused, naming it, unless
--force. Starting over (other models, --force) removes only files compute.run writes:
their names are RUN_FILES' and a Parquet file's run_id column is the earlier run's,
so a file a person put there stays.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

NAME_MAX = 100
NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
# what compute.run writes under OUT/<pair>, relative paths (compute.run.cli,
# compute.run.direction_files, compute.behaviour.scoring; compute.patch: patch/)
RUN_FILES = re.compile(
    r"(spectra/(\d{5}|vectors|added_tokens|traps/\d{5})\.parquet"
    r"|spectra/pieces/\d{5}-\d+-of-\d+\.npz"
    r"|directions/(vectors|overlap|angles|intruders|rows)/\d{5}\.parquet"
    r"|directions/(tokens|signs)\.parquet"
    r"|behaviour/(token_logprobs|token_shift|residual_drift|post_texts)/"
    r"(s\d+-\d+-)?-?\d+-[0-9a-f]{12}\.parquet"
    r"|patch/(layer|module|layer_module|tensor)/(models|posts)/"
    r"(base|\d{5}-(add|revert)(-r\d{6})?)\.parquet)")
OWN = re.compile(r"\.lock(\.shard-\d+-of-\d+)?|\.manifest\.lock|run\.json"
                 r"|(.*/)?\.[^/]+\.tmp\d+(\.npz)?|kinds/[a-z]+\.json")


# the raw table each kind's files go to, and their glob under OUT/<pair>
KIND_TABLES = {
    "spectra": {"spectra": "spectra/[0-9]*.parquet",
                "vector_changes": "spectra/vectors.parquet",
                "added_tokens": "spectra/added_tokens.parquet",
                "random_spectra": "spectra/traps/*.parquet"},
    "directions": {"direction_overlap": "directions/overlap/*.parquet",
                   "direction_angles": "directions/angles/*.parquet",
                   "intruders": "directions/intruders/*.parquet",
                   "direction_tokens": "directions/tokens.parquet",
                   "direction_signs": "directions/signs.parquet"},
    "behaviour": {t: f"behaviour/{t}/*.parquet"
                  for t in ("token_logprobs", "token_shift", "post_texts",
                            "residual_drift")},
    "patch": {"patch_models": "patch/*/models/*.parquet",
              "patch_posts": "patch/*/posts/*.parquet"},
}


class PairNameError(ValueError):
    """A pair name that is not one safe path component (the message says why)."""


class FolderError(ValueError):
    """OUT/<pair> is a folder compute.run did not make for this pair (named)."""


def check_name(name: str, what: str = "pair name") -> str:
    """`name` when it is one safe path component; else PairNameError."""
    why = None
    if not isinstance(name, str) or not name:
        why = "it is empty"
    elif name in (".", ".."):
        why = "'.' and '..' name folders, not pairs"
    elif len(name) > NAME_MAX:
        why = f"longer than {NAME_MAX} characters"
    elif not NAME_RE.fullmatch(name):
        bad = sorted({c for c in name if not NAME_RE.fullmatch(c)})
        why = f"it holds {''.join(bad)!r}; use letters, digits, '.', '_' and '-'"
    if why:
        raise PairNameError(f"{what} {name!r} is not usable: {why} (it names the "
                            "pair's folder under --out and its rows in the warehouse)")
    return name


def check_key(rel: str, where: str) -> str:
    """`rel`, a relative key under a results root (an object store's listing), when
    it stays under that root as a local path: no empty, '.' or '..' part, no
    leading '/', no NUL; else PairNameError."""
    if "\0" in rel or any(part in ("", ".", "..") for part in rel.split("/")):
        raise PairNameError(f"{where}: key {rel!r} is not usable: it would name a "
                            "file outside the pair's folder")
    return rel


def run_of(run_dir: Path) -> dict | None:
    """The run.json of `run_dir` as a dict, None when absent or unreadable."""
    try:
        doc = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def check_folder(run_dir: Path, pair: str, *, force: bool = False) -> None:
    """Refuse (FolderError) a folder that is neither missing, nor empty but for
    compute.run's own locks, nor a run of `pair` (its run.json); --force lets it be
    used (its other files are kept)."""
    if force or not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise FolderError(f"{run_dir}: exists and is not a folder; choose another "
                          "--out or --name")
    old = run_of(run_dir)
    if old is not None and old.get("pair") == pair:
        return
    if old is None and (run_dir / "run.json").exists():
        raise FolderError(f"{run_dir / 'run.json'}: not a compute.run manifest (it "
                          "does not parse as a JSON object); delete it or pass --force"
                          " to start the run over there")
    files = [p.relative_to(run_dir).as_posix() for p in sorted(run_dir.rglob("*"))
             if not p.is_dir() and not OWN.fullmatch(p.relative_to(run_dir).as_posix())]
    if not files and old is None:
        return
    what = (f"a run of pair {old.get('pair')!r}" if old is not None
            else f"not a compute.run folder ({len(files)} file(s), e.g. {files[0]})")
    raise FolderError(f"{run_dir}: {what}; compute.run writes pair {pair!r} only into "
                      "a new or empty folder or an earlier run of that pair. Choose "
                      "another --out or --name, or pass --force to use it (only the "
                      "files compute.run writes are ever replaced or removed)")


def remove_run_files(run_dir: Path, run_id: str | None, under: str = "") -> int:
    """Delete the result files of run `run_id` under `run_dir` (or its `under`
    subfolder): names of RUN_FILES, and for Parquet a run_id column holding only
    `run_id`; nothing when `run_id` is None. Empty folders left are removed.
    Returns how many files went."""
    import pyarrow.parquet as pq

    if run_id is None or not (run_dir / under).is_dir():
        return 0
    gone = 0
    for p in sorted((run_dir / under).rglob("*")):
        rel = p.relative_to(run_dir).as_posix()
        if p.is_dir() or not RUN_FILES.fullmatch(rel):
            continue
        if p.suffix == ".parquet":
            try:
                ids = set(pq.read_table(p, columns=["run_id"]).column(0).to_pylist())
            except Exception:  # unreadable, or no run_id column: not provably ours
                continue
            if ids - {run_id}:
                continue
        p.unlink()
        gone += 1
    for d in sorted((run_dir / under).rglob("*"), key=lambda d: -len(d.parts)):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    return gone


def inventory(run_dir: Path, kind: str, keys: set[str] | None = None) -> dict:
    """What a finished kind consists of, for run.json and the loader's checks:
    {"files": {table: [relative paths]}, "rows": {table: rows}}. `keys`: the
    relative paths present elsewhere too (an object store's listing); the rows are
    counted (Parquet footers) only when every file is here."""
    import fnmatch

    import pyarrow.parquet as pq

    present = {p.relative_to(run_dir).as_posix()
               for table, pattern in KIND_TABLES[kind].items()
               for p in run_dir.glob(pattern)}
    files, rows = {}, {}
    for table, pattern in KIND_TABLES[kind].items():
        names = sorted(k for k in present | set(keys or ())
                       if fnmatch.fnmatch(k, pattern) and "/." not in f"/{k}")
        files[table] = names
        if rows is not None and all(n in present for n in names):
            rows[table] = sum(pq.ParquetFile(run_dir / n).metadata.num_rows
                              for n in names)
        else:
            rows = None
    return {"files": files} | ({"rows": rows} if rows is not None else {})
