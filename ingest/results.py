"""A results root that is a local folder or an object-store URI (pyarrow.fs).

    python -m compute.run --pair 72B --shard 0/8 --no-load --out s3://bucket/runs
    python -m ingest.compute_load s3://bucket/runs/72B

`--out` takes a path, a `file:///...` URI, or any URI that
`pyarrow.fs.FileSystem.from_uri` understands (`s3://bucket/prefix`, `gs://...`, with
its options in the query: `s3://b/p?endpoint_override=host:9000&scheme=http`).

On an object store a run works in a local staging folder (`$SFTSCOPE_STAGING`, default
data/staging, one subfolder per URI) exactly as on a local root, and publishes each
finished file to the store as one object: the file is complete on local disk before
its upload starts, and an upload becomes an object only when it completes (a single
PUT, or a multipart upload's completion), so a killed run never leaves part of an
object. The keys are the local layout's (`<pair>/spectra/00012.parquet`, ...); a
finished part's key exists only once it is whole, so re-running skips the parts whose
keys exist. The resume markers (a tensor's spectra file, its vectors file, a batch's
post_texts file) are uploaded after the files they mark.

An object store has no locks and no rename, so the run's metadata is made to need
neither:
- the run's identity is derived from its inputs: run_id = <pair>-<first 12 hex digits
  of sha256 over pair, models, revisions and method>; every shard, on any machine,
  computes the same run_id without talking to the others, and `<pair>/run.json`
  (identity only) is written by whichever shard comes first, with the same content
  whoever writes it. A run.json of other inputs under the prefix stops the run (exit
  2): delete the prefix, or use another one, to start over (`--force` does that);
- each finished kind is its own object, `<pair>/kinds/<kind>.json`, written by the
  shard that finds every file of that kind present after uploading its own (so the
  last one to finish sees them all); two shards finishing together write equivalent
  records. Nothing is read, modified and written back, so no update can be lost.
The loader reads run.json and the kinds/*.json records beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ingest.atomic import atomic_path
from ingest.runfolder import PairNameError, check_key

STAGING = Path("data/staging")  # local working copies of object-store runs
# uploaded last, in this order: what marks a part done comes after what it marks
MARKERS = ("directions/vectors/", "spectra/[0-9]", "behaviour/post_texts/",
           "patch/[a-z_]+/models/")
BULKY = ("directions/vectors/", "spectra/pieces/")  # not pulled unless needed
# run.json's keys that make a run's identity (compute.run.open_manifest's)
IDENTITY = ("pair", "base_model", "sft_model", "base_revision", "sft_revision",
            "method")


class ResultsError(RuntimeError):
    """Results under an object-store prefix that this run cannot use (named)."""


def is_remote(out: str | os.PathLike) -> bool:
    """Whether `out` is a URI of a file system other than the local one."""
    text = str(out)
    scheme = urlsplit(text).scheme
    return "://" in text and len(scheme) > 1 and scheme != "file"


def local_path(out: str | os.PathLike) -> Path:
    """A plain path, or a file:// URI's path."""
    text = str(out)
    if text.startswith("file://"):
        from pyarrow.fs import FileSystem

        return Path(FileSystem.from_uri(text)[1])
    return Path(text)


def results_root(out: str | os.PathLike) -> tuple[Path, str | None]:
    """A command's `--out` as (the local folder it works in, the object-store URI
    or None): a URI's folder is its staging folder, a path or file:// URI itself."""
    if is_remote(out):
        return staging_dir(str(out)), str(out)
    return local_path(out), None


def pair_results(remote: str | None, run_dir: Path) -> str:
    """Where a pair's results end up: its folder (OUT/<pair>), or, with `remote`
    (the --out URI), the pair's URI under it."""
    return child(remote, run_dir.name) if remote else str(run_dir)


def child(uri: str, name: str) -> str:
    """`uri` with `name` appended to its path (its query, the options, kept)."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{name}"))


def as_uri(text: str, local: Path, uri: str) -> str:
    """`text` with each path under `local` written as the object's URI under `uri`
    (its query, the store's options, kept at the end): a message about a local
    copy that names the store."""
    return re.sub(re.escape(str(local)) + r"(/[^\s:()]*)?",
                  lambda m: child(uri, m.group(1)[1:]) if m.group(1) else uri, text)


def staging_dir(uri: str) -> Path:
    """The local staging folder of an object-store root: readable and unique."""
    parts = urlsplit(uri)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{parts.scheme}-{parts.netloc}{parts.path}")
    digest = hashlib.sha256(uri.encode()).hexdigest()[:8]
    return Path(os.environ.get("SFTSCOPE_STAGING", STAGING)) / f"{slug.strip('-')}-{digest}"


def run_identity(want: dict) -> str:
    """The deterministic run_id of a run on an object store (module docstring)."""
    blob = json.dumps(want, sort_keys=True, default=str).encode()
    return f"{want['pair']}-{hashlib.sha256(blob).hexdigest()[:12]}"


def _marker_rank(rel: str) -> int:
    for rank, prefix in enumerate(MARKERS, start=1):
        if re.match(prefix, rel):
            return rank
    return 0


class Store:
    """One pair's folder (`uri`) on an object store, mirrored by `local`."""

    def __init__(self, uri: str, local: Path):
        from pyarrow.fs import FileSystem

        self.uri, self.local = uri, Path(local)
        try:
            self.fs, self.base = FileSystem.from_uri(uri)
        except (ValueError, OSError) as exc:
            raise ResultsError(f"{uri}: not a results root pyarrow can open "
                               f"({exc})") from exc
        self.base = self.base.rstrip("/")
        self.known: set[str] = set()  # keys seen on the store (a listing's cache)

    def _key(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def rel(self, path: Path) -> str:
        """`path`'s place under the local folder, as the store's key suffix."""
        return Path(path).relative_to(self.local).as_posix()

    def listing(self, sub: str = "") -> set[str]:
        """Relative keys of the objects under the folder (or its `sub` folder)."""
        from pyarrow.fs import FileSelector, FileType

        root = self._key(sub).rstrip("/")
        infos = self.fs.get_file_info(FileSelector(root, recursive=True,
                                                   allow_not_found=True))
        keys = {i.path[len(self.base) + 1:] for i in infos if i.type == FileType.File}
        for key in keys:  # a key becomes a local path: '..' or '/x' would escape
            try:
                check_key(key, self.uri)
            except PairNameError as exc:
                raise ResultsError(str(exc)) from None
        self.known |= keys
        return keys

    def has(self, path: Path) -> bool:
        """`path` (under `local`) exists here or on the store (as last listed)."""
        return Path(path).exists() or self.rel(path) in self.known

    def exists(self, rel: str) -> bool:
        """Whether the store holds the file `rel`."""
        from pyarrow.fs import FileType

        return self.fs.get_file_info(self._key(rel)).type == FileType.File

    def read_json(self, rel: str) -> dict | None:
        """The JSON file `rel` of the store (None: not there)."""
        if not self.exists(rel):
            return None
        with self.fs.open_input_stream(self._key(rel)) as fh:
            data = fh.read()
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise ResultsError(f"{child(self.uri, rel)}: not valid JSON ({exc})"
                               ) from None

    def manifest(self) -> dict | None:
        """run.json with the kinds/<kind>.json records beside it (with_records), as
        the loader reads them; None when the store has no run.json."""
        manifest = self.read_json("run.json")
        if manifest is None:
            return None
        if not isinstance(manifest, dict):
            raise ResultsError(f"{child(self.uri, 'run.json')}: not a JSON object")
        keys = sorted(k for k in self.listing("kinds") if k.endswith(".json"))
        return with_records(manifest, [(Path(k).stem, self.read_json(k))
                                       for k in keys])

    def put_bytes(self, rel: str, data: bytes) -> None:
        """One object of `data`, whole or not at all: every byte is in memory before
        the stream opens, and the upload is completed (the stream closed) only after
        the write returned. pyarrow completes the upload of a stream that is dropped
        unclosed, so when the write fails the stream is closed and what it made is
        deleted before the error goes on: no partial object stays."""
        key = self._key(rel)
        stream = None
        try:
            stream = self.fs.open_output_stream(key)
            stream.write(data)
        except BaseException:
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()
                with contextlib.suppress(Exception):
                    self.fs.delete_file(key)
            raise
        stream.close()
        self.known.add(rel)

    def push(self, paths: Iterable[Path]) -> int:
        """Upload the finished local files among `paths` that the store lacks,
        markers last; returns how many."""
        todo = sorted({p for p in map(Path, paths) if p.is_file()
                       and not p.name.startswith(".")
                       and self.rel(p) not in self.known},
                      key=lambda p: (_marker_rank(self.rel(p)), self.rel(p)))
        for p in todo:
            self.put_bytes(self.rel(p), p.read_bytes())
        return len(todo)

    def push_all(self, sub: str = "") -> int:
        """Every finished local file under `sub` that the store lacks (not run.json:
        its records are published apart; not a tensor's pieces: compute.run uploads
        and removes them itself)."""
        rels = (p.relative_to(self.local) for p in (self.local / sub).rglob("*"))
        return self.push(self.local / r for r in rels if r.as_posix() != "run.json"
                         and not r.as_posix().startswith("spectra/pieces/")
                         and not any(part.startswith(".") for part in r.parts))

    def pull(self, subs: Iterable[str] = ("",), *, skip: Iterable[str] = ()) -> int:
        """Download the store's files under `subs` that are not here (temporary
        name, then rename), leaving out keys under `skip`; returns how many."""
        skip = ("run.json", "kinds/", *skip)
        todo = [self.local / rel for sub in subs for rel in sorted(self.listing(sub))
                if not rel.startswith(skip) and not (self.local / rel).exists()]
        self.fetch(todo)
        return len(todo)

    def fetch(self, paths: Iterable[Path]) -> None:
        """Download these files (under `local`) that are not here."""
        for dest in map(Path, paths):
            if dest.exists():
                continue
            with atomic_path(dest) as tmp, self.fs.open_input_stream(
                    self._key(self.rel(dest))) as fh:
                tmp.write_bytes(fh.read())

    def delete(self, paths: Iterable[Path]) -> None:
        """Remove these files' objects (gone already: fine)."""
        for p in paths:
            rel = self.rel(p)
            if self.exists(rel):
                self.fs.delete_file(self._key(rel))
            self.known.discard(rel)

    def delete_under(self, sub: str, last: str) -> None:
        """Remove every object under `sub`, the one named `last` (a key under `sub`)
        after all the others: while it exists, the others may too."""
        keys = sorted(self.listing(sub), key=lambda k: (k == last, k))
        self.delete(self.local / k for k in keys)

    def delete_all(self) -> None:
        """Remove everything under the store's prefix."""
        from pyarrow.fs import FileType

        if self.fs.get_file_info(self.base).type != FileType.NotFound:
            self.fs.delete_dir_contents(self.base, missing_dir_ok=True)
        self.known.clear()

    def claim(self, manifest: dict, identity: tuple[str, ...] = IDENTITY) -> None:
        """Write run.json (the identity) unless the store has it; refuse a run.json
        of other inputs (ResultsError)."""
        if self.check(manifest, identity):
            return
        record = {k: v for k, v in manifest.items() if k != "kinds"} | {"kinds": {}}
        self.put_bytes("run.json", json.dumps(record, indent=2, default=str).encode())

    def check(self, want: dict, identity: tuple[str, ...] = IDENTITY) -> bool:
        """Whether the store has run.json of `want`'s identity (False: none);
        ResultsError when it has one of other inputs."""
        want = {k: want.get(k) for k in identity}
        old = self.read_json("run.json")
        if old is not None:
            if {k: old.get(k) for k in identity} != want:
                raise ResultsError(
                    f"{child(self.uri, 'run.json')} is a run of other inputs "
                    f"({old.get('run_id')}: {old.get('base_model')} vs "
                    f"{old.get('sft_model')}, method {old.get('method')}); delete "
                    "the prefix (or run with --force) to start over there, or choose "
                    "another --out")
            return True
        return False

    def publish_kinds(self, manifest: dict) -> None:
        """kinds/<kind>.json of each finished kind the store lacks."""
        for kind, info in manifest.get("kinds", {}).items():
            rel = f"kinds/{kind}.json"
            if info.get("finished_at") and rel not in self.known and not self.exists(
                    rel):
                self.put_bytes(rel, json.dumps(info, indent=2, default=str).encode())


def attach(uri: str, local: Path, manifest: dict, *, force: bool = False) -> Store:
    """The store of a run working in `local`: claimed for `manifest`'s identity
    (emptied first with `force`), and what other shards finished pulled here (but
    the BULKY files: their keys are only listed)."""
    store = Store(uri, local)
    if force:
        store.delete_all()
    store.claim(manifest)
    store.pull(skip=BULKY)
    return store


def with_records(manifest: dict, records: Iterable[tuple[str, dict]]) -> dict:
    """`manifest` (run.json) with the per-kind records (kind, record) of an
    object-store run: a record there is the kind's, finished."""
    kinds = dict(manifest.get("kinds") or {})
    for kind, info in records:
        kinds[kind] = info
    return manifest | {"kinds": kinds}
