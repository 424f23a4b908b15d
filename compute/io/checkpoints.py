"""Finding checkpoints and reading their tensors one at a time.

    ckpt = resolve("Qwen/Qwen2.5-0.5B")      # hub id (honours HF_HUB_OFFLINE, cache)
    ckpt = resolve("data/models/demo/base")  # or a local folder
    plan = pair_plan(base, sft)              # checks both hold the same tensors
    w, storage = ckpt.read_array("model.layers.0.mlp.up_proj.weight")  # NumPy
    w = ckpt.read("model.layers.0.mlp.up_proj.weight")   # torch, storage dtype

Never `from_pretrained` for the weights: tensors are streamed from the safetensors
files one by one (the byte range the header gives, read into a fresh array; no mmap
of whole files is held), so memory is bounded by a few matrices whatever the model
size. Headers are validated by safetensors' own reader when a weight file is scanned.
torch is imported only by `read`: the CPU spectra need NumPy alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import SafetensorError, safe_open

from compute.arch.naming import Layout
from compute.io.binfiles import BinError, bin_weight_files, read_bin, scan_bin
from compute.linalg.spectra import ARRAY_DTYPES

if TYPE_CHECKING:
    import torch


HUB_PATTERNS = ["*.safetensors", "*.json", "tokenizer*", "*.txt", "*.model"]
BIN_PATTERNS = ["pytorch_model*.bin"]  # fetched only when a repo has no safetensors
# safetensors dtype -> storage dtype (its arrays: compute.linalg.spectra.ARRAY_DTYPES)
STORAGE = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}
READ_CHUNK = 1 << 30  # bytes per read call (Linux reads at most ~2 GiB at once)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as it is (the message names file or tensor)."""


@dataclasses.dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype: BF16, F16, F32
    file: str
    start: int = 0  # byte range of the data in the file
    end: int = 0


@dataclasses.dataclass
class Checkpoint:
    ref: str  # what the user named: hub id or folder
    path: Path  # local folder
    revision: str  # hub commit, or "local:<hash of config+headers>"
    config: dict
    tensors: dict[str, TensorInfo]

    def read_array(self, name: str, rows: slice | None = None
                   ) -> tuple[np.ndarray, str]:
        """(the tensor `name` as a NumPy array, its storage dtype: "bfloat16", ...);
        a bfloat16 array holds the bits (uint16). `rows`: only these rows (first
        axis; a piece of a matrix split across shards of the work), reading only
        their bytes."""
        info = self.tensors[name]
        path = self.path / info.file
        if path.suffix == ".bin" and info.dtype in STORAGE:
            try:
                arr = read_bin(path, info.name)  # its name in the file
            except BinError as exc:
                raise CheckpointError(str(exc)) from exc
            return (arr if rows is None else arr[rows].copy()), STORAGE[info.dtype]
        if info.dtype not in STORAGE:
            raise CheckpointError(
                f"{path}: tensor {name} is stored as {info.dtype}; sftscope reads "
                f"{', '.join(STORAGE)} weights")
        storage = STORAGE[info.dtype]
        arr = np.empty(info.shape, ARRAY_DTYPES[storage])
        if arr.nbytes != info.end - info.start:  # safe_open checks it too
            raise CheckpointError(
                f"{path}: tensor {name} has {info.end - info.start} bytes of data, "
                f"its shape {list(info.shape)} of {info.dtype} needs {arr.nbytes}")
        start = info.start
        if rows is not None:  # the rows' bytes only, into an array of their size
            first, stop, _ = rows.indices(info.shape[0])
            start += first * (arr.nbytes // max(info.shape[0], 1))
            arr = np.empty((stop - first, *info.shape[1:]), arr.dtype)
        view, done = memoryview(arr.reshape(-1).view(np.uint8)), 0
        try:
            with open(path, "rb", buffering=0) as fh:
                fh.seek(start)
                while done < arr.nbytes:
                    got = fh.readinto(view[done:done + READ_CHUNK])
                    if not got:
                        raise CheckpointError(
                            f"{path}: truncated in tensor {name} (the file ends "
                            f"{arr.nbytes - done} bytes early); download it again")
                    done += got
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read tensor {name}: {exc}"
                                  ) from exc
        return arr, storage

    def read(self, name: str) -> torch.Tensor:
        """The tensor `name` in its storage dtype, on the CPU (imports torch)."""
        import torch

        arr, storage = self.read_array(name)
        t = torch.from_numpy(arr)
        return t.view(torch.bfloat16) if storage == "bfloat16" else t

    @property
    def n_layers(self) -> int | None:
        """The number of blocks its config gives (None: not given)."""
        return Layout(self.config).n_layers  # num_hidden_layers, n_layer, ...


def _read_config(folder: Path) -> dict:
    cfg = folder / "config.json"
    if not cfg.exists():
        raise CheckpointError(f"{folder}: no config.json")
    try:
        config = json.loads(cfg.read_bytes())
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8; too deep
        raise CheckpointError(f"{cfg}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise CheckpointError(f"{cfg}: cannot read ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg}: expected a JSON object")
    return config


def _weight_files(folder: Path) -> dict[str, list[str] | None]:
    """{weight file: tensor names the index assigns it (None: single-file)}."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_bytes())["weight_map"]
            if not isinstance(weight_map, dict) or not all(
                    isinstance(f, str) for f in weight_map.values()):
                raise TypeError("weight_map is not {tensor: file name}")
        except (ValueError, KeyError, TypeError, OSError, RecursionError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index ({exc})"
                                  ) from None
        files: dict[str, list[str] | None] = {}
        for name, file in weight_map.items():
            files.setdefault(file, []).append(name)  # type: ignore[union-attr]
        return files
    single = folder / "model.safetensors"
    if single.exists():
        return {"model.safetensors": None}
    others = sorted(p.name for p in folder.glob("*.safetensors"))
    if len(others) == 1:
        return {others[0]: None}
    if not others:  # an older checkpoint: pytorch_model*.bin, read safely
        try:
            bins = bin_weight_files(folder)
        except BinError as exc:
            raise CheckpointError(str(exc)) from exc
        if bins:
            return bins
    raise CheckpointError(
        f"{folder}: no model.safetensors or model.safetensors.index.json"
        + (f" (found {', '.join(others)})" if others else
           " (nor pytorch_model.bin or pytorch_model.bin.index.json)")
    )


MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit


def read_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the byte where its data start
    (8 + header length), after checking the file is as long as the header promises;
    the errors say what is wrong with the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated or empty ({size} bytes); "
                                      "not a safetensors file")
            header_len = int.from_bytes(head, "little")
            if header_len > MAX_HEADER_BYTES or header_len > size - 8:
                raise CheckpointError(
                    f"{path}: corrupt or truncated header (says {header_len} bytes, "
                    f"the file has {size}); download it again")
            raw = fh.read(header_len)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc})") from exc
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise TypeError("not a JSON object")
        end = max((int(v["data_offsets"][1]) for k, v in header.items()
                   if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
        raise CheckpointError(f"{path}: corrupt header ({exc}); download it again"
                              ) from exc
    expected = 8 + header_len + end
    if size < expected:
        raise CheckpointError(
            f"{path}: truncated ({size} bytes, header promises {expected}; "
            f"{expected - size} missing): an incomplete download? download it again")
    return header, 8 + header_len


def scan_weight_file(path: Path) -> dict[str, TensorInfo]:
    """The tensors of one safetensors file, after checking it is complete (or of a
    pytorch_model*.bin, loaded safely: compute.io.binfiles)."""
    if path.suffix == ".bin":
        try:
            return {name: TensorInfo(name, shape, dtype, path.name)
                    for name, (shape, dtype) in scan_bin(path).items()}
        except BinError as exc:
            raise CheckpointError(str(exc)) from exc
    header, data_start = read_header(path)
    tensors: dict[str, TensorInfo] = {}
    try:
        # safetensors' reader validates the header (dtypes, shapes against byte
        # ranges, no overlaps); NumPy's framework so that torch is not imported
        with safe_open(path, framework="numpy") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                start, end = (data_start + int(o) for o in header[name]["data_offsets"])
                tensors[name] = TensorInfo(name, tuple(sl.get_shape()), sl.get_dtype(),
                                           path.name, start, end)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file: {exc}"
                              ) from exc
    return tensors


def _scan(folder: Path) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for file, expected in _weight_files(folder).items():
        path = folder / file
        if not path.exists():
            raise CheckpointError(
                f"{path}: weight file named in model.safetensors.index.json is missing"
            )
        found = scan_weight_file(path)
        for name, info in found.items():
            tensors[name] = dataclasses.replace(info, file=file)
        if expected is not None:
            missing = sorted(set(expected) - set(found))
            if missing:
                raise CheckpointError(
                    f"{path}: index names {len(missing)} tensor(s) the weight file "
                    "lacks, "
                    f"e.g. {missing[0]}"
                )
    return tensors


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
HASH_BLOCK = 8 << 20  # bytes per read when hashing a file


def hub_blob(path: Path) -> Path | None:
    """The hub-cache blob behind `path`, or None for a plain file.

    huggingface_hub's cache (models--org--name/) keeps each file once, as
    blobs/<name>, and links snapshots/<commit>/<file> to it."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    return target if target.parent.name == "blobs" and target.is_file() else None


def hub_sha256(blob: Path) -> str | None:
    """The sha256 a hub-cache blob is named by, or None: LFS files (the safetensors
    weight files) are named by the sha256 of their content, git-stored small files by
    their git object id (40 hex digits, a sha1 of a header and the content), which
    is not compared here."""
    return blob.name if _SHA256_HEX.fullmatch(blob.name) else None


def sha256_file(path: Path, progress=None) -> str:
    """sha256 of a file, read in HASH_BLOCK blocks; `progress` (a tqdm bar) is
    advanced by the bytes read."""
    h = hashlib.sha256()
    buf = bytearray(HASH_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
            if progress is not None:
                progress.update(n)
    return h.hexdigest()


def _local_revision(folder: Path, tensors: dict[str, TensorInfo]) -> str:
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}{t.shape}{t.dtype}".encode())
    for file in sorted({t.file for t in tensors.values()}):
        path = folder / file  # size, and a sample of the data from both ends
        size = path.stat().st_size
        h.update(str(size).encode())
        with open(path, "rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read())
    return "local:" + h.hexdigest()[:12]


def locate(ref: str, revision: str | None = None) -> tuple[Path, str | None]:
    """(local folder, hub commit or None for a local folder) of `ref`."""
    folder = Path(ref).expanduser()
    if folder.is_dir():
        return folder, None
    elif Path(ref).is_absolute() or ref.startswith(".") or ref.count("/") != 1:
        raise CheckpointError(f"{ref}: no such folder, and not a hub id (owner/name)")
    else:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            folder = Path(snapshot_download(ref, revision=revision,
                                            allow_patterns=HUB_PATTERNS))
            if not any(folder.glob("*.safetensors")):  # an older checkpoint
                folder = Path(snapshot_download(ref, revision=folder.name,
                                                allow_patterns=BIN_PATTERNS))
        except LocalEntryNotFoundError as exc:
            raise CheckpointError(
                f"{ref}: not in the hub cache and the hub cannot be reached "
                f"(HF_HUB_OFFLINE set, or no network): {exc}"
            ) from exc
        except (OSError, ValueError) as exc:  # HTTP errors, unknown repo or revision
            raise CheckpointError(f"{ref}: cannot fetch from the hub: {exc}") from exc
        return folder, folder.name  # snapshots/<commit>


def resolve(ref: str, revision: str | None = None) -> Checkpoint:
    """A local folder, or a hub id fetched (or found in the cache) by huggingface_hub."""
    folder, rev = locate(ref, revision)
    config = _read_config(folder)
    tensors = _scan(folder)
    return Checkpoint(ref, folder, rev or _local_revision(folder, tensors), config,
                      tensors)


def hub_headers(ref: str, revision: str | None = None) -> Checkpoint | None:
    """A hub id's checkpoint from its config.json, its index and the safetensors
    headers alone (two HTTP range requests per weight file: the 8-byte length, then
    the header), for a dry run: the weights are never downloaded and the returned
    checkpoint cannot read them. None when that is not possible (a local folder, an
    offline hub, a LoRA adapter or a repo without safetensors): resolve() then
    finds or fetches the checkpoint as a run does."""
    if Path(ref).expanduser().is_dir() or ref.count("/") != 1 or ref.startswith("."):
        return None
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    if constants.is_offline_mode():
        return None
    try:
        config_path = Path(hf_hub_download(ref, "config.json", revision=revision))
        folder = config_path.parent  # snapshots/<commit>: later files pinned to it
        try:
            index = Path(hf_hub_download(ref, "model.safetensors.index.json",
                                         revision=folder.name))
        except EntryNotFoundError:
            index = None
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None  # an adapter (no config.json), or the hub cannot be reached
    except (OSError, ValueError) as exc:  # HTTP errors, unknown repo or revision
        raise CheckpointError(f"{ref}: cannot fetch from the hub: {exc}") from exc
    files = _weight_files(folder) if index else {"model.safetensors": None}
    tensors: dict[str, TensorInfo] = {}
    for file, expected in files.items():
        try:
            header, data_start = _remote_header(ref, file, folder.name)
        except EntryNotFoundError:
            if index is None:
                return None  # no model.safetensors: an older (.bin) checkpoint
            raise CheckpointError(f"{ref}: {file}, named in "
                                  "model.safetensors.index.json, is missing") from None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{ref}: cannot read the header of {file}: {exc}"
                                  ) from exc
        try:
            for name, v in header.items():
                if name != "__metadata__":
                    start, end = (data_start + int(o) for o in v["data_offsets"])
                    tensors[name] = TensorInfo(name, tuple(int(d) for d in v["shape"]),
                                               str(v["dtype"]), file, start, end)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{ref}: {file}: corrupt header ({exc})") from exc
        missing = sorted(set(expected or ()) - set(header))
        if missing:
            raise CheckpointError(f"{ref}: index names {len(missing)} tensor(s) "
                                  f"{file} lacks, e.g. {missing[0]}")
    return Checkpoint(ref, folder, folder.name, _read_config(folder), tensors)


def _remote_header(ref: str, file: str, revision: str) -> tuple[dict, int]:
    """The JSON header of the hub file `file` and the byte where its data start,
    by two range requests (huggingface_hub's session: its endpoint, token,
    redirects and errors)."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    url, headers = hf_hub_url(ref, file, revision=revision), build_hf_headers()

    def fetch(first: int, last: int) -> bytes:
        """Bytes first..last; streamed, so a server that ignores the range (and
        sends the whole file) is stopped after them."""
        want, got = last - first + 1, b""
        with get_session().stream("GET", url, headers={
                **headers, "Range": f"bytes={first}-{last}"}) as r:
            if r.status_code >= 400:
                r.read()  # the error's message
            hf_raise_for_status(r)
            for chunk in r.iter_bytes():
                got += chunk
                if len(got) >= want:
                    break
        if r.status_code != 206 or len(got) != want:
            raise ValueError(f"the server did not answer the byte range {first}-{last}"
                             f" (status {r.status_code}, {len(got)} bytes)")
        return got

    n = int.from_bytes(fetch(0, 7), "little")
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"header of {n} bytes: not a safetensors file")
    header = json.loads(fetch(8, 7 + n))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header, 8 + n
