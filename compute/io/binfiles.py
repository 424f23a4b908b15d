"""Older checkpoints: `pytorch_model.bin` (or weight files named by
`pytorch_model.bin.index.json`), read safely when a folder has no safetensors.

    from compute.io.binfiles import bin_weight_files, scan_bin, read_bin
    files = bin_weight_files(folder)          # {weight file: names (None: single file)}
    infos = scan_bin(folder / "pytorch_model.bin")   # {name: (shape, dtype)}
    arr, storage = read_bin(path, name)       # NumPy, as Checkpoint.read_array

A .bin file is a pickle. It is opened only with `torch.load(weights_only=True)`,
which refuses any pickled object other than tensors and plain containers (a file
with pickled code is refused before anything in it runs, and nothing is loaded), and
memory-mapped (`mmap=True`): a weight file's tensors are read from the page cache as
they are used. One weight file is open at a time (the last one read, per process).
"""

from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path

import numpy as np

BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
# torch dtype name -> safetensors dtype name (what TensorInfo.dtype holds)
DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "float64": "F64"}

_open: dict = {"path": None, "state": None}
_lock = threading.Lock()


class BinError(RuntimeError):
    """A .bin checkpoint that cannot be read safely (the message names the file)."""


def bin_weight_files(folder: Path) -> dict[str, list[str] | None] | None:
    """{weight file: tensor names the index gives it (None: single file)}, or None
    when the folder has no pytorch_model*.bin."""
    index = folder / BIN_INDEX
    if index.exists():
        try:
            weight_map = json.loads(index.read_bytes())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not {tensor: file name}")
        except (ValueError, KeyError, TypeError, OSError, RecursionError) as exc:
            raise BinError(f"{index}: not a checkpoint index ({exc})") from None
        files: dict[str, list[str] | None] = {}
        for name, file in weight_map.items():
            files.setdefault(str(file), []).append(name)  # type: ignore[union-attr]
        return files
    if (folder / BIN_SINGLE).exists():
        return {BIN_SINGLE: None}
    others = sorted(p.name for p in folder.glob("pytorch_model*.bin"))
    return {others[0]: None} if len(others) == 1 else None


def _load(path: Path) -> dict:
    """The state dict of one .bin file, memory-mapped, weights only."""
    import torch

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # the legacy (pre-zip) format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise BinError(
            f"{path}: refused: the file holds pickled objects other than tensors "
            f"(code that would run when loaded); nothing was loaded. Use a safetensors "
            f"copy of this checkpoint. ({str(exc).splitlines()[0]})") from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise BinError(f"{path}: not a readable PyTorch checkpoint: {exc}") from exc
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise BinError(f"{path}: not a state dict of named tensors")
    return state


def _state(path: Path) -> dict:
    """The open weight file's state dict; opening another one releases it."""
    if _open["path"] != path:
        _open["path"], _open["state"] = None, None  # drop the old mapping first
        _open["state"] = _load(path)
        _open["path"] = path
    return _open["state"]


def scan_bin(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """{tensor name: (shape, safetensors dtype name)} of one .bin weight file."""
    with _lock:
        state = _state(path)
        out = {}
        for name, t in state.items():
            dtype = str(t.dtype).removeprefix("torch.")
            out[name] = (tuple(t.shape), DTYPES.get(dtype, dtype.upper()))
        return out


def read_bin(path: Path, name: str) -> np.ndarray:
    """Tensor `name` of a .bin weight file as a fresh NumPy array in
    compute.linalg.spectra's
    ARRAY_DTYPES layout (bf16 as its uint16 bits)."""
    import torch

    with _lock:
        state = _state(path)
        if name not in state:
            raise BinError(f"{path}: no tensor {name}")
        t = state[name].detach()
        if t.dtype == torch.bfloat16:
            return t.contiguous().view(torch.int16).numpy().view(np.uint16).copy()
        return t.contiguous().numpy().copy()
