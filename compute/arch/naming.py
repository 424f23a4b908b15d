"""Tensor names and checkpoint layouts: where a tensor sits and what it is.

    from compute.arch.naming import Layout, parse_name
    layer, module = parse_name("transformer.h.3.attn.c_attn.weight")   # (3, "c_attn")
    layout = Layout(config)                      # the checkpoint's config.json
    views = layout.views(name, shape)            # the matrices to analyse in a tensor
    layout.summary(tensors)                      # what compute.pairs.doctor prints

The layer index comes from the block container, whatever it is called (`layers`,
`h`, `blocks`, `layer`, `block`, under any prefix: `model.`, `transformer.`,
`gpt_neox.`, `decoder.`, `language_model.model.`, ...), and is checked against the
config's layer count. Module types get stable names: the Llama names where a
projection has one (GPT-2's `attn.c_proj` is `o_proj`, GPT-NeoX's `dense_h_to_4h` is
`up_proj`, Mixtral's expert `w1` is `gate_proj`), the checkpoint's own name for a
fused projection (`c_attn`, `query_key_value`, `qkv_proj`, `gate_up_proj`, `w13`),
`router` for a mixture-of-experts router (`gate`, `router`).

A tensor gives one or more `View`s, each a matrix with its three spectra:
- a 2-D weight: itself (Conv1D weights, stored [in, out], are recorded out x in);
- a fused projection: itself whole and its parts cut out by the config: q/k/v rows
  (q = heads x head_dim, k = v = kv heads x head_dim), concatenated [q; k; v]
  (`qkv_proj`, `c_attn`, `Wqkv`, `W_pack`), interleaved per head (GPT-NeoX and
  BLOOM's `query_key_value`, GPT-BigCode's `c_attn` without multi-query: rows
  (heads, 3, head_dim)), per kv group (Falcon's: (kv heads, q heads per group + 2,
  head_dim)) or per model-parallel group (CodeGen's `qkv_proj`: (4, q|v|k,
  hidden / 4), value before key); gate/up halves (`gate_up_proj`,
  `w13`: [gate; up]). A part is named `<tensor>[q]` and has the module `q_proj`;
- a 3-D stacked-experts tensor [experts, out, in] (or [experts, in, out], told
  apart by the config's sizes) named `...experts.<proj>`: one view per expert,
  `<tensor>[e]`, with `expert` = e (per-expert 2-D tensors `experts.E.w1` get it
  from their name).
Any other 3-D (or higher) tensor is refused with an error naming it.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np

CONTAINERS = ("layers", "h", "blocks", "layer", "block")
_BLOCK = re.compile(r"(?:^|\.)(?P<container>" + "|".join(CONTAINERS)
                    + r")\.(?P<index>\d+)(?:\.|$)")
_EXPERT = re.compile(r"(?:^|\.)experts\.(?P<index>\d+)\.")

# leaf name -> stable module name (where the meaning does not depend on the parent)
CANONICAL = {
    "wte": "embed_tokens", "embed_in": "embed_tokens", "word_embeddings": "embed_tokens",
    "tok_embeddings": "embed_tokens", "wpe": "embed_positions", "embed_out": "lm_head",
    "output": "lm_head", "w1": "gate_proj", "w3": "up_proj", "w2": "down_proj",
    "dense_h_to_4h": "up_proj", "dense_4h_to_h": "down_proj", "fc1": "up_proj",
    "fc2": "down_proj", "fc_in": "up_proj", "fc_out": "down_proj",
    "c_fc": "up_proj", "wq": "q_proj", "wk": "k_proj",
    "wv": "v_proj", "wo": "o_proj", "router": "router",
}
# leaf -> stable name inside an attention block (`dense`, `c_proj` are ambiguous)
ATTN_PARENTS = ("attn", "attention", "self_attn", "self_attention")
ATTN_CANONICAL = {"dense": "o_proj", "c_proj": "o_proj", "out_proj": "o_proj"}
MLP_CANONICAL = {"c_proj": "down_proj", "dense": "down_proj"}
FUSED_QKV = ("qkv_proj", "c_attn", "query_key_value", "Wqkv", "W_pack", "qkv")
FUSED_GATE_UP = ("gate_up_proj", "w13")
CONV1D_MODEL_TYPES = ("gpt2",)  # transformers' Conv1D: weight stored [in, out]
CONV1D_LEAVES = ("c_attn", "c_proj", "c_fc", "q_attn")
PER_HEAD_QKV = ("gpt_neox", "bloom")  # query_key_value rows (heads, 3, head_dim)
PER_GROUP_QKV = ("falcon",)  # rows (kv heads, q heads per group + 2, head_dim)
# qkv_proj rows (groups, q|v|k, hidden / groups): CodeGen's mp_num = 4
MP_GROUPED_QKV = {"codegen": 4}
SHARED = ("shared_expert", "shared_experts")
# a decoder's cross-attention
CROSS_PARENTS = ("encoder_attn", "crossattention", "cross_attn")

LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
HEAD_KEYS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
KV_KEYS = ("num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num")
HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "dim")
EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts",
               "moe_num_experts")
MOE_INTER_KEYS = ("moe_intermediate_size", "intermediate_size", "ffn_dim")


class LayoutError(ValueError):
    """A tensor whose place or meaning cannot be told (the message names it)."""


def _first(config: Mapping, keys: Iterable[str]):
    for k in keys:
        if config.get(k) is not None:
            return config[k]
    return None


def text_config(config: Mapping) -> Mapping:
    """The language model's part of a config (multimodal configs nest it)."""
    inner = config.get("text_config")
    return inner if isinstance(inner, Mapping) and _first(inner, LAYER_KEYS) else config


def _stem(name: str) -> list[str]:
    parts = name.split(".")
    return [p for p in parts if p not in ("weight", "bias")] or parts


def block_of(name: str) -> tuple[str | None, int | None]:
    """(container path, layer index) of a tensor in the blocks, else (None, None)."""
    m = _BLOCK.search(name)
    if m is None:
        return None, None
    return name[:m.end("container")], int(m.group("index"))


def expert_of(name: str) -> int | None:
    """The expert index in tensor `name` (None: not an expert's tensor)."""
    m = _EXPERT.search(name)
    return int(m.group("index")) if m else None


def _encoder_style(stem: list[str]) -> str | None:
    """BERT-style blocks (used as decoders too): attention.self.query/key/value,
    attention.output.dense (o_proj), intermediate.dense (up), output.dense (down)."""
    leaf, parent = stem[-1], stem[-2] if len(stem) > 1 else ""
    if parent == "self" and leaf in ("query", "key", "value"):
        return {"query": "q_proj", "key": "k_proj", "value": "v_proj"}[leaf]
    if leaf == "dense" and parent == "intermediate":
        return "up_proj"
    if leaf == "dense" and parent == "output":
        return "o_proj" if len(stem) > 2 and stem[-3] == "attention" else "down_proj"
    return None


def parse_name(name: str, moe: bool = False) -> tuple[int | None, str]:
    """(layer, stable module name) of a tensor name; layer None outside the blocks.
    A bias is `<module>.bias`. `moe`: the model routes to experts, so a leaf `gate`
    is the router."""
    _, layer = block_of(name)
    stem = _stem(name)
    leaf = stem[-1]
    parent = stem[-2] if len(stem) > 1 else ""
    if leaf in ("gate", "router") and (moe or "moe" in parent):
        module = "router"
    elif parent in ATTN_PARENTS and leaf in ATTN_CANONICAL:
        module = ATTN_CANONICAL[leaf]
    elif parent in ATTN_PARENTS and leaf == "gate_proj":  # a gate on attention
        module = "attn_gate_proj"
    elif parent in ("mlp", "ffn", "feed_forward") and leaf in MLP_CANONICAL:
        module = MLP_CANONICAL[leaf]
    elif leaf in FUSED_QKV or leaf in FUSED_GATE_UP:
        module = leaf
    else:
        module = _encoder_style(stem) or CANONICAL.get(leaf, leaf)
    if parent in CROSS_PARENTS:
        module = f"cross_attn.{module}"
    if any(s in stem[:-1] for s in SHARED):
        module = f"shared_expert.{module}"
    if name.endswith(".bias"):
        module = f"{module}.bias"
    return layer, module


@dataclasses.dataclass(frozen=True)
class View:
    """One matrix to analyse, cut from a checkpoint tensor `source`."""

    tensor: str  # unique name: the source, or `<source>[e]`, `<source>[q]`, ...
    source: str
    layer: int | None
    module: str
    expert: int | None = None
    part: str | None = None  # q, k, v, gate, up: a part of a fused projection
    stack: int | None = None  # index into a 3-D stacked-experts tensor
    rows: tuple[int, ...] | None = None  # out-dimension indices of a part
    transposed: bool = False  # stored [in, out] (Conv1D, some stacked experts)
    shape: tuple[int, int] = (0, 0)  # (out, in): n_rows, n_cols

    def take(self, w):
        """This view's matrix from the source tensor `w` (NumPy or torch, in its
        storage layout); orientation is kept (the singular values do not depend on
        it), a part is a contiguous copy."""
        if self.stack is not None:
            w = w[self.stack]  # (out, in) or (in, out)
        if self.rows is not None:
            idx = np.asarray(self.rows)
            if not isinstance(w, np.ndarray):
                import torch

                idx = torch.as_tensor(idx, device=w.device)
                return (w[:, idx] if self.transposed else w[idx]).contiguous()
            w = np.ascontiguousarray(w[:, idx] if self.transposed else w[idx])
        return w


@dataclasses.dataclass
class Layout:
    """What a checkpoint's config says about its tensors."""

    config: Mapping

    def __post_init__(self):
        c = self.text = text_config(self.config)
        self.model_type = str(c.get("model_type") or self.config.get("model_type") or "")
        self.n_layers = _first(c, LAYER_KEYS)
        self.hidden = _first(c, HIDDEN_KEYS)
        self.heads = _first(c, HEAD_KEYS)
        kv = _first(c, KV_KEYS)
        if kv is None and c.get("multi_query"):
            kv = 1
        self.kv_heads = kv if kv is not None else self.heads
        head_dim = c.get("head_dim")
        if head_dim is None and self.hidden and self.heads:
            head_dim = self.hidden // self.heads
        self.head_dim = head_dim
        self.n_experts = _first(c, EXPERT_KEYS)
        self.moe_inter = _first(c, MOE_INTER_KEYS)
        self.conv1d = self.model_type in CONV1D_MODEL_TYPES

    @property
    def moe(self) -> bool:
        """Whether the model is a mixture of experts."""
        return bool(self.n_experts)

    # -- one tensor --------------------------------------------------------------
    @staticmethod
    def skip(name: str, shape: tuple[int, ...]) -> str | None:
        """Why a tensor is not a weight to compare (a buffer saved with the
        weights), or None."""
        leaf = name.split(".")[-1]
        if leaf in ("masked_bias", "inv_freq"):
            return "a buffer, not a weight"
        if len(shape) == 0:  # Apertus' activation act_fn.beta
            return "a scalar parameter (0-D), neither a matrix nor a vector"
        if leaf == "bias" and len(shape) == 4 and name.endswith("attn.bias"):
            return "the causal-mask buffer, not a weight"
        return None

    def place(self, name: str) -> tuple[int | None, str, int | None]:
        """(layer, module, expert) of a tensor; the layer checked against the
        config's layer count."""
        layer, module = parse_name(name, self.moe)
        if layer is not None and self.n_layers is not None and layer >= self.n_layers:
            raise LayoutError(
                f"tensor {name}: block {layer}, but the config has {self.n_layers} "
                f"layers ({'/'.join(LAYER_KEYS)})")
        return layer, module, expert_of(name)

    def is_conv1d(self, name: str) -> bool:
        """Whether tensor `name` is a GPT-2 Conv1D weight, stored [in, out]."""
        return self.conv1d and _stem(name)[-1] in CONV1D_LEAVES

    def qkv_rows(self, leaf: str, out: int) -> dict[str, list[int]] | None:
        """Row indices of q, k, v in a fused projection with `out` rows, or None
        when the config's sizes do not add up to `out`."""
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        if not (h and kv and d) or (h + 2 * kv) * d != out:
            return None
        rows = np.arange(out)
        if leaf == "qkv_proj" and self.model_type in MP_GROUPED_QKV:
            mp = MP_GROUPED_QKV[self.model_type]
            if kv != h or out % (3 * mp):
                return None
            grid = rows.reshape(mp, 3, out // (3 * mp))  # (groups, q|v|k, dim)
            q, v, k = grid[:, 0], grid[:, 1], grid[:, 2]
        elif self._per_head(leaf):
            if kv != h:
                return None
            grid = rows.reshape(h, 3, d)  # (heads, q|k|v, head_dim)
            q, k, v = grid[:, 0], grid[:, 1], grid[:, 2]
        elif leaf == "query_key_value" and self.model_type in PER_GROUP_QKV:
            grid = rows.reshape(kv, h // kv + 2, d)  # (groups, q.. k v, head_dim)
            q, k, v = grid[:, :-2], grid[:, -2], grid[:, -1]
        else:  # concatenated [q; k; v]
            q, k, v = rows[:h * d], rows[h * d:(h + kv) * d], rows[(h + kv) * d:]
        return {p: a.reshape(-1).tolist() for p, a in zip("qkv", (q, k, v), strict=True)}

    def _per_head(self, leaf: str) -> bool:
        """Rows (heads, 3, head_dim): GPT-NeoX and BLOOM's query_key_value, and
        GPT-BigCode's c_attn without multi-query attention."""
        return ((leaf == "query_key_value" and self.model_type in PER_HEAD_QKV)
                or (leaf == "c_attn" and self.model_type == "gpt_bigcode"
                    and self.kv_heads == self.heads))

    def split(self, name: str, out: int) -> tuple[dict[str, list[int]] | None, str]:
        """(part -> row indices, how) for a fused projection; (None, why not) else."""
        leaf = _stem(name)[-1]
        if leaf in FUSED_QKV:
            parts = self.qkv_rows(leaf, out)
            if parts is None:
                return None, (f"q/k/v sizes from the config ({self.heads} heads, "
                              f"{self.kv_heads} kv heads x {self.head_dim}) do not "
                              f"add up to its {out} rows: analysed whole only")
            how = ("interleaved per head" if self._per_head(leaf)
                   else "q/v/k per model-parallel group"
                   if leaf == "qkv_proj" and self.model_type in MP_GROUPED_QKV
                   else "interleaved per kv group"
                   if self.model_type in PER_GROUP_QKV and leaf == "query_key_value"
                   else "concatenated [q; k; v]")
            return parts, how
        if leaf in FUSED_GATE_UP:
            if out % 2:
                return None, f"{out} rows cannot be halved: analysed whole only"
            half = out // 2
            return ({"gate": list(range(half)), "up": list(range(half, out))},
                    "halves [gate; up]")
        return None, ""

    def _stacked_orientation(self, name: str, shape: tuple[int, ...]) -> bool:
        """Whether a stacked-experts tensor [E, a, b] stores [in, out] per expert."""
        leaf = CANONICAL.get(_stem(name)[-1], _stem(name)[-1])
        inter, hidden = self.moe_inter, self.hidden
        want = {"gate_proj": (inter, hidden), "up_proj": (inter, hidden),
                "down_proj": (hidden, inter),
                "gate_up_proj": (2 * inter if inter else None, hidden),
                "w13": (2 * inter if inter else None, hidden)}.get(leaf)
        got = tuple(shape[1:])
        if want is None or None in want or got == want:
            return False
        if got == want[::-1]:
            return True
        raise LayoutError(
            f"tensor {name}: stacked experts {list(shape)}, but the config's sizes "
            f"give [{self.n_experts}, {want[0]}, {want[1]}] (experts, out, in)")

    def views(self, name: str, shape: tuple[int, ...]) -> list[View]:
        """The matrices of a 2-D or 3-D tensor (see the module doc)."""
        layer, module, expert = self.place(name)
        if len(shape) == 2:
            stacks: list[int | None] = [None]
            transposed = self.is_conv1d(name)
            mat = shape
        elif len(shape) == 3 and ".experts." in f".{name}" and (
                self.n_experts is None or shape[0] == self.n_experts):
            stacks = list(range(shape[0]))
            transposed = self._stacked_orientation(name, shape)
            mat = shape[1:]
        else:
            raise LayoutError(
                f"tensor {name}: a {len(shape)}-D tensor {list(shape)} of unknown "
                "meaning; sftscope reads 2-D weights and 3-D stacked experts "
                f"[experts ({self.n_experts or 'config: num_local_experts'}), out, "
                "in] named ...experts.<projection>")
        out_dim, in_dim = (mat[1], mat[0]) if transposed else (mat[0], mat[1])
        parts, _ = self.split(name, out_dim)
        views = []
        for e in stacks:
            base_name = name if e is None else f"{name}[{e}]"
            ex = expert if e is None else e
            views.append(View(base_name, name, layer, module, ex, None, e, None,
                              transposed, (out_dim, in_dim)))
            for part, rows in (parts or {}).items():
                views.append(View(
                    f"{base_name}[{part}]", name, layer, f"{part}_proj", ex, part, e,
                    tuple(rows), transposed, (len(rows), in_dim)))
        return views

    # -- a whole checkpoint ------------------------------------------------------
    def check_unique(self, views: Iterable[View]) -> None:
        """No two views share a heatmap cell (layer, module, expert) or a name."""
        cells = Counter((v.layer, v.module, v.expert) for v in views
                        if v.layer is not None)
        clash = [c for c, n in cells.items() if n > 1]
        if clash:
            layer, module, expert = clash[0]
            names = [v.tensor for v in views if (v.layer, v.module, v.expert)
                     == clash[0]]
            raise LayoutError(
                f"tensors {', '.join(names[:3])} all read as layer {layer}, module "
                f"{module}" + (f", expert {expert}" if expert is not None else "")
                + "; sftscope cannot tell them apart")

    def summary(self, tensors: Mapping[str, tuple[int, ...]]) -> list[str]:
        """Lines for compute.pairs.doctor: the layout recognised, what is split or
        transposed, what is skipped. Raises LayoutError like views()."""
        containers, layers = Counter(), set()
        lines: list[str] = []
        views: list[View] = []
        fused: dict[str, tuple[int, str]] = {}
        transposed, stacked, experts, vectors, routers = 0, 0, set(), 0, 0
        skipped: list[str] = []
        for name, shape in tensors.items():
            if self.skip(name, shape):
                skipped.append(name)
                continue
            container, layer = block_of(name)
            if container is not None:
                containers[container] += 1
                layers.add(layer)
            if len(shape) < 2:
                vectors += 1
                self.place(name)
                continue
            vs = self.views(name, shape)
            views += vs
            whole = vs[0]
            transposed += whole.transposed and whole.stack in (None, 0)
            stacked += len(shape) == 3
            experts |= {v.expert for v in vs if v.expert is not None}
            routers += whole.module == "router"
            leaf = _stem(name)[-1]
            parts, how = self.split(name, whole.shape[0])
            if leaf in FUSED_QKV + FUSED_GATE_UP:
                n, _ = fused.get(leaf, (0, ""))
                fused[leaf] = (n + 1, how if parts else how or "not split")
        self.check_unique(views)
        if containers:
            found = ", ".join(f"{c}.N" for c in containers)
            n_seen = len(layers)
            ok = self.n_layers is None or layers == set(range(self.n_layers))
            lines.append(f"blocks: {found} ({n_seen} layers"
                         + ("" if self.n_layers is None else
                            f"; config {self.n_layers}") + ")"
                         + ("" if ok else ": NOT all config layers present"))
        else:
            lines.append("blocks: none recognised (every matrix has layer NULL)")
        if transposed:
            lines.append(f"Conv1D storage [in, out]: {transposed} matrices, recorded "
                         "out x in")
        for leaf, (n, how) in fused.items():
            parts = "q/k/v" if leaf in FUSED_QKV else "gate/up"
            lines.append(f"fused {leaf}: {n} tensors analysed whole"
                         + (f" and split into {parts} ({how})"
                            if "whole only" not in how else f"; {how}"))
        if experts:
            lines.append(f"experts: {len(experts)} per layer"
                         + (f" (config {self.n_experts})" if self.n_experts else "")
                         + (f", {stacked} stacked 3-D tensors analysed per expert"
                            if stacked else "") + f"; {routers} router matrices")
        if skipped:
            lines.append(f"skipped: {len(skipped)} buffers saved with the weights "
                         f"(e.g. {skipped[0]}: {self.skip(skipped[0], tensors[skipped[0]])})")
        lines.append(f"{len(views)} matrices to analyse (x3 spectra), {vectors} 1-D "
                     "tensors (norms only)")
        return lines
