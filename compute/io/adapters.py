"""A PEFT LoRA adapter as the fine-tuned side of a pair.

    sft = resolve_sft("my-org/qwen-lora", base)   # an adapter folder or hub id, or a
                                                  # full checkpoint (then a Checkpoint)
    factors = sft.lowrank("model.layers.0.self_attn.q_proj.weight")  # (left, right)

An adapter folder holds adapter_config.json and adapter_model.safetensors (PEFT's
own format). For every adapted matrix dW = scale * B @ A, with A (r, in) and
B (out, r) from the file and scale = lora_alpha / r (lora_alpha / sqrt(r) with
`use_rslora`; `rank_pattern` and `alpha_pattern` override r and alpha per module,
matched as PEFT matches them); `fan_in_fan_out` means the base stores the weight
[in, out] (GPT-2's Conv1D), so dW is stored transposed; an embedding's
`lora_embedding_A` (r, vocab) and `lora_embedding_B` (dim, r) give (B @ A)^T.
W_sft = W_base + dW. `lowrank(name)` returns dW's factors in the base tensor's
stored orientation, so compute.linalg.spectra forms dW block by block in fp64 and never
rounds it: an adapter-made dW carries no storage rounding (noise_sigma 0), and its
rank is exactly r. Matrices the adapter does not touch are W_base itself (dW = 0,
unchanged); `modules_to_save` (and saved biases) are full tensors that replace the
base's and are compared like any fine-tune's.

Refused with a message naming the file and the reason: other adapter types (IA3,
AdaLoRA, LoHa, ...), DoRA (`use_dora`: W' = m * (W + BA) / ||W + BA||, not
W + BA), LoRA biases, adapters on parameters (`target_parameters`), and adapters
whose modules or shapes the base does not have.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np

from compute.io.checkpoints import (
    Checkpoint,
    CheckpointError,
    TensorInfo,
    _local_revision,
    _read_config,
    _scan,
    locate,
    resolve,
    scan_weight_file,
)
from compute.linalg.spectra import to_float64

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PEFT's prefix of every saved key
LORA_KEY = re.compile(r"(?P<module>.+)\.(?P<kind>lora_A|lora_B)\.weight"
                      r"|(?P<emodule>.+)\.(?P<ekind>lora_embedding_A|lora_embedding_B)")


class AdapterError(CheckpointError):
    """An adapter sftscope cannot use (the message names the file and why)."""


def is_adapter(folder: Path) -> bool:
    """Whether `folder` holds a PEFT adapter (adapter_config.json)."""
    return (folder / ADAPTER_CONFIG).exists()


def pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches the
    end of the module name on a dot boundary (peft.utils.other.get_pattern_key)."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


@dataclasses.dataclass
class Lora:
    """One adapted base tensor: dW = scale * B @ A (embeddings: (B @ A)^T)."""

    module: str  # the module's name in the model
    a: str  # the adapter file's keys of A and B
    b: str
    embedding: bool
    rank: int
    alpha: float
    scale: float


class Adapter(Checkpoint):
    """A LoRA adapter over `base`, seen as a checkpoint with the base's tensors.

    `read_array` gives the base's tensor for every name except the full tensors the
    adapter saves (modules_to_save, biases); `lowrank` gives dW's factors of the
    adapted ones."""

    def __init__(self, ref: str, folder: Path, revision: str, base: Checkpoint,
                 adapter_config: dict, lora: dict[str, Lora],
                 full: dict[str, TensorInfo], own: dict[str, TensorInfo]) -> None:
        super().__init__(ref, folder, revision, base.config,
                         dict(base.tensors) | full)
        self.base = base
        self.adapter_config = adapter_config
        self.lora = lora  # base tensor name -> its factors' keys
        self.full = full  # base tensor name -> the adapter's tensor
        self._own = own  # the adapter file's tensors by their own keys

    def read_array(self, name: str) -> tuple[np.ndarray, str]:
        """Tensor `name` as the fine-tuned side has it: the adapter's own full
        tensor, else the base's."""
        if name in self.full:
            return super().read_array(name)
        return self.base.read_array(name)

    def exact(self, name: str) -> bool:
        """Whether dW of `name` carries no storage rounding: formed from the
        adapter's factors, or zero (a matrix the adapter leaves alone)."""
        return name not in self.full

    def _values(self, key: str) -> np.ndarray:
        """A tensor of the adapter file, by its own key, in fp64."""
        info = self._own[key]
        reader = Checkpoint(self.ref, self.path, self.revision, {}, {key: info})
        return to_float64(*reader.read_array(key))

    def lowrank(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(left (m, r), right (r, n)) fp64 with dW = left @ right in the base
        tensor's stored orientation (m, n), scale folded in; None if not adapted."""
        lo = self.lora.get(name)
        if lo is None:
            return None
        a, b = self._values(lo.a), self._values(lo.b)  # (r, in), (out, r)
        if lo.embedding or self.adapter_config.get("fan_in_fan_out"):
            return np.ascontiguousarray(a.T), np.ascontiguousarray(b.T * lo.scale)
        return b * lo.scale, a

    def summary(self) -> dict:
        """What the run records about the adapter (compute_runs.options)."""
        c = self.adapter_config
        return {"peft_type": c.get("peft_type"), "r": c.get("r"),
                "lora_alpha": c.get("lora_alpha"),
                "use_rslora": bool(c.get("use_rslora")),
                "fan_in_fan_out": bool(c.get("fan_in_fan_out")),
                "rank_pattern": c.get("rank_pattern") or {},
                "alpha_pattern": c.get("alpha_pattern") or {},
                "base_model_name_or_path": c.get("base_model_name_or_path"),
                "n_adapted": len(self.lora), "full_tensors": sorted(self.full)}


def _config(folder: Path) -> dict:
    path = folder / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_bytes())
    except (ValueError, OSError, RecursionError) as exc:
        raise AdapterError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{path}: expected a JSON object")
    kind = str(config.get("peft_type", "")).upper()
    if kind != "LORA":
        raise AdapterError(
            f"{path}: a {config.get('peft_type')!r} adapter; sftscope reads LoRA "
            "adapters only (dW = scale * B @ A)")
    refusals = {
        "use_dora": "a DoRA adapter (use_dora: true): its weight is a magnitude "
        "times the normalised W + BA, not W + BA",
        "lora_bias": "LoRA with a bias on B (lora_bias: true)",
        "target_parameters": "LoRA on parameters (target_parameters), not modules",
        "layer_replication": "an adapter that replicates layers (layer_replication)",
        "trainable_token_indices": "trainable token rows (trainable_token_indices), "
        "not W + BA",
    }
    for key, what in refusals.items():
        if config.get(key):
            raise AdapterError(f"{path}: {what}; not supported")
    for key in ("r", "lora_alpha"):
        if not isinstance(config.get(key), (int, float)) or config[key] <= 0:
            raise AdapterError(f"{path}: {key} must be a positive number, not "
                               f"{config.get(key)!r}")
    return config


def _base_name(path: str, base: Checkpoint) -> str | None:
    """The base tensor a saved key's module path names (also without the model
    class's first component, for checkpoints saved without it)."""
    for cand in (path, path.partition(".")[2]):
        if cand in base.tensors:
            return cand
    return None


def load_adapter(ref: str, folder: Path, revision: str | None,
                 base: Checkpoint) -> Adapter:
    """The adapter in `folder` over `base`; AdapterError when they do not match."""
    config = _config(folder)
    weights = folder / ADAPTER_WEIGHTS
    if not weights.exists():
        found = sorted(p.name for p in folder.glob("adapter_model*"))
        raise AdapterError(
            f"{folder}: no {ADAPTER_WEIGHTS}"
            + (f" (found {', '.join(found)}; save it with safe_serialization)"
               if found else ""))
    own = scan_weight_file(weights)
    own = {k: dataclasses.replace(v, file=ADAPTER_WEIGHTS) for k, v in own.items()}
    factors: dict[str, dict[str, str]] = {}
    full: dict[str, TensorInfo] = {}
    ranks = config.get("rank_pattern") or {}
    alphas = config.get("alpha_pattern") or {}
    for key, info in own.items():
        path = key.removeprefix(PREFIX)
        if "lora_magnitude_vector" in path:
            raise AdapterError(f"{weights}: {key} is a DoRA magnitude; not supported")
        m = LORA_KEY.fullmatch(path)
        module = m and (m["module"] or m["emodule"])
        target = _base_name(f"{module}.weight" if m else path, base)
        if target is None:
            raise AdapterError(
                f"{weights}: {key} adapts {module or path}, which the base "
                f"{base.ref} does not have: is the adapter for another model "
                f"(adapter_config.json names {config.get('base_model_name_or_path')!r})?")
        if not m:  # modules_to_save, biases: they replace the base's tensor
            if info.shape != base.tensors[target].shape:
                raise AdapterError(
                    f"{weights}: {key} has shape {list(info.shape)}, the base's "
                    f"{target} {list(base.tensors[target].shape)}")
            full[target] = dataclasses.replace(info, name=target)
            continue
        kind = (m["kind"] or m["ekind"])[-1]  # "A" or "B"
        factors.setdefault(target, {"module": module,
                                    "embedding": bool(m["ekind"])})[kind] = key
    lora: dict[str, Lora] = {}
    for target, f in factors.items():
        if "A" not in f or "B" not in f:
            raise AdapterError(f"{weights}: {f['module']} has lora_"
                               f"{'A' if 'A' in f else 'B'} but not lora_"
                               f"{'B' if 'A' in f else 'A'}")
        if target in full:
            raise AdapterError(f"{weights}: {target} is both adapted and saved whole")
        (r, n_in), (n_out, r_b) = own[f["A"]].shape, own[f["B"]].shape
        module = f["module"]
        want_r = pattern_value(ranks, module, config["r"])
        if r != r_b or r != want_r:
            raise AdapterError(
                f"{weights}: {module} has A {list(own[f['A']].shape)} and B "
                f"{list(own[f['B']].shape)}; adapter_config.json gives rank {want_r}")
        shape = base.tensors[target].shape
        transposed = f["embedding"] or bool(config.get("fan_in_fan_out"))
        want = (n_in, n_out) if transposed else (n_out, n_in)
        if tuple(shape) != want:
            raise AdapterError(
                f"{weights}: {module}'s update is {n_out} x {n_in}"
                + (" (stored transposed)" if transposed else "")
                + f", the base's {target} is {list(shape)}: the adapter is for "
                "another model")
        alpha = float(pattern_value(alphas, module, config["lora_alpha"]))
        scale = alpha / (math.sqrt(r) if config.get("use_rslora") else r)
        lora[target] = Lora(module, f["A"], f["B"], f["embedding"], r, alpha, scale)
    if not lora and not full:
        raise AdapterError(f"{weights}: holds no LoRA weights")
    rev = revision or "local:" + _adapter_hash(folder)
    return Adapter(ref, folder, rev, base, config, lora, full, own)


def _adapter_hash(folder: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        h.update((folder / name).read_bytes())
    return h.hexdigest()[:12]


def adapter_base(ref: str, revision: str | None = None) -> str | None:
    """The base an adapter names (adapter_config.json's base_model_name_or_path): a
    folder, relative to the adapter's folder or to the working directory, else a hub
    id; None when `ref` is a full checkpoint, not an adapter."""
    folder, _ = locate(ref, revision)
    if not is_adapter(folder):
        return None
    name = _config(folder).get("base_model_name_or_path")
    if not isinstance(name, str) or not name.strip():
        raise AdapterError(f"{folder / ADAPTER_CONFIG}: no base_model_name_or_path; "
                           "give the base with --base")
    for cand in (folder / name, Path(name).expanduser()):
        if cand.is_dir():
            return str(cand.resolve())
    return name


def resolve_sft(ref: str, base: Checkpoint, revision: str | None = None
                ) -> Checkpoint:
    """The fine-tuned side: a full checkpoint (compute.io.checkpoints.resolve) or a
    LoRA adapter over `base` (a folder or hub id with adapter_config.json)."""
    folder, rev = locate(ref, revision)
    if not is_adapter(folder):
        if rev is None:
            return resolve(ref, revision)
        config, tensors = _read_config(folder), _scan(folder)
        return Checkpoint(ref, folder, rev or _local_revision(folder, tensors),
                          config, tensors)
    return load_adapter(ref, folder, rev, base)


def view_factors(view, factors):
    """The factors of a view's dW (compute.arch.naming.View): a fused matrix's part is
    some rows of dW (columns when stored transposed), i.e. rows of left (columns
    of right)."""
    if factors is None or view.rows is None:
        return factors
    left, right = factors
    idx = np.asarray(view.rows)
    return (left, np.ascontiguousarray(right[:, idx])) if view.transposed \
        else (np.ascontiguousarray(left[idx]), right)


def open_pair(base_ref: str, sft_ref: str) -> tuple[Checkpoint, Checkpoint]:
    """Base and fine-tuned side (a full checkpoint or a LoRA adapter), checked."""
    base = resolve(base_ref)
    sft = resolve_sft(sft_ref, base)
    return base, sft


def delta(base: Checkpoint, sft: Checkpoint, name: str) -> np.ndarray:
    """dW = W_sft - W_base of `name` in fp64, (rows, cols) as stored; an adapter
    fine-tune's from its factors (no rounding)."""
    if isinstance(sft, Adapter):
        factors = sft.lowrank(name)
        if factors is not None:
            left, right = factors
            return left @ right
    wb = to_float64(*base.read_array(name))
    ws = to_float64(*sft.read_array(name))
    return ws - wb
