"""Tiny base/SFT pairs in the common checkpoint layouts, with planted, known ranks.

    python -m compute.layouts data/models/layouts            # every layout
    python -m compute.layouts data/models/layouts --layout gpt2
    from compute.layouts import LAYOUTS, build_layout_pair    # in tests

Each layout writes `out/<layout>/base`, `out/<layout>/sft` (config.json, weights,
tokenizer) and `out/<layout>/planted.json`: for every matrix compute.run will
analyse (by its name in raw.spectra: a tensor, a part `<fused>[q]`, an expert of a
stacked tensor `<tensor>[e]`) the planted rank of dW, and (for the fused layouts)
the unfused matrices the fused ones were assembled from.

    W_base = round_bf16(W0),  W_sft = round_bf16(W0 + U diag(s) V^T)

per logical matrix (q, k, v, gate, up, ... of every block, each expert's), with s
from 0.12 down to 0.04 and W0 ~ N(0, 0.02^2): the planted rank stands far above the
bf16 rounding noise. The logical matrices are then stored as each layout stores
them, written here independently of compute.naming (which reads them back):

| layout | blocks | what is special |
|---|---|---|
| llama | model.layers.N | separate q/k/v/o, gate/up/down (LlamaForCausalLM; a tokenizer) |
| gpt2 | transformer.h.N | Conv1D weights stored [in, out]; c_attn = [q; k; v] fused |
| gpt_neox | gpt_neox.layers.N | query_key_value rows interleaved per head (heads, 3, d) |
| phi3 | model.layers.N | qkv_proj = [q; k; v], gate_up_proj = [gate; up] |
| mixtral | model.layers.N | block_sparse_moe.experts.E.w1/w2/w3, router block_sparse_moe.gate |
| stacked_experts | model.layers.N | mlp.experts.gate_up_proj [E, 2i, h], down_proj [E, h, i] |
| llama_bin | model.layers.N | the llama pair as pytorch_model.bin |
| llama_bin_sharded | model.layers.N | as two .bin shards and pytorch_model.bin.index.json |
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

LAYOUTS = ("llama", "gpt2", "gpt_neox", "phi3", "mixtral", "stacked_experts",
           "llama_bin", "llama_bin_sharded")


@dataclasses.dataclass(frozen=True)
class TinySpec:
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2  # gpt2 and gpt_neox use heads (no grouped-query attention)
    intermediate: int = 96
    layers: int = 2
    vocab: int = 512
    experts: int = 3
    positions: int = 256
    init_std: float = 0.02
    s_hi: float = 0.12
    s_lo: float = 0.04
    seed: int = 1414

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


TINY = TinySpec()


class _Pair:
    """Accumulates the two checkpoints' tensors and the planted ranks."""

    def __init__(self, spec: TinySpec, seed: int):
        self.spec, self.rng = spec, np.random.default_rng(seed)
        self.base: dict[str, np.ndarray] = {}
        self.sft: dict[str, np.ndarray] = {}
        self.planted: dict[str, int] = {}
        self.unfused: dict[str, dict[str, str]] = {}

    def matrix(self, m: int, n: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """(W0, W0 + planted rank-`rank` update), float64 (m, n)."""
        s = self.spec
        w0 = self.rng.standard_normal((m, n)) * s.init_std
        u, _ = np.linalg.qr(self.rng.standard_normal((m, rank)))
        v, _ = np.linalg.qr(self.rng.standard_normal((n, rank)))
        sv = np.geomspace(s.s_hi, s.s_lo, rank) if rank > 1 else np.array([s.s_hi])
        return w0, w0 + (u * sv) @ v.T

    def add(self, name: str, w0: np.ndarray, w1: np.ndarray, rank: int | None = None,
            view: str | None = None) -> None:
        """Store a tensor (in its storage layout); `rank`: planted rank of the
        matrix compute.run names `view` (default: the tensor's name)."""
        self.base[name], self.sft[name] = w0, w1
        if rank is not None:
            self.planted[view or name] = rank

    def plain(self, name: str, m: int, n: int, rank: int,
              transposed: bool = False) -> None:
        w0, w1 = self.matrix(m, n, rank)
        if transposed:  # Conv1D: stored [in, out]
            w0, w1 = w0.T.copy(), w1.T.copy()
        self.add(name, w0, w1, rank)

    def vector(self, name: str, n: int, one: bool = False) -> None:
        w0 = (1.0 if one else 0.0) + self.rng.standard_normal(n) * self.spec.init_std
        self.add(name, w0, w0 + self.rng.standard_normal(n) * 1e-3)

    def layer_norms(self, prefix: str, names: tuple[str, ...], n: int) -> None:
        """LayerNorms with weight and bias (GPT-2, GPT-NeoX)."""
        for ln in names:
            self.vector(f"{prefix}.{ln}.weight", n, one=True)
            self.vector(f"{prefix}.{ln}.bias", n)


def _ranks(layer: int) -> dict[str, int]:
    """Planted ranks of a block's matrices: distinct per projection, so that a part
    cut out of a fused matrix at the wrong rows shows the wrong rank."""
    return {"q": 3 + layer, "k": 2, "v": 4, "o": 2 + layer, "gate": 3, "up": 5,
            "down": 2 + layer}


def _attn_parts(p: _Pair, layer: int, kv: int) -> dict[str, tuple]:
    s, r = p.spec, _ranks(layer)
    d = s.head_dim
    return {"q": (*p.matrix(s.heads * d, s.hidden, r["q"]), r["q"]),
            "k": (*p.matrix(kv * d, s.hidden, r["k"]), r["k"]),
            "v": (*p.matrix(kv * d, s.hidden, r["v"]), r["v"])}


def _fused(p: _Pair, name: str, parts: dict[str, tuple], order: list[np.ndarray],
           transposed: bool = False) -> None:
    """Store the fused tensor whose rows are `order` (row indices into the stacked
    parts), record every part's rank under `name[part]`."""
    w0 = np.concatenate([parts[k][0] for k in parts])[order]
    w1 = np.concatenate([parts[k][1] for k in parts])[order]
    if transposed:
        w0, w1 = w0.T.copy(), w1.T.copy()
    p.add(name, w0, w1, min(sum(v[2] for v in parts.values()), w0.shape[1]
                            if not transposed else w0.shape[0]))
    for k, (_, _, rank) in parts.items():
        p.planted[f"{name}[{k}]"] = rank
    p.unfused[name] = dict.fromkeys(parts)


def _llama(p: _Pair) -> dict:
    s = p.spec
    p.plain("model.embed_tokens.weight", s.vocab, s.hidden, 2)
    for layer in range(s.layers):
        r, pre = _ranks(layer), f"model.layers.{layer}"
        p.vector(f"{pre}.input_layernorm.weight", s.hidden, one=True)
        for k, (w0, w1, rank) in _attn_parts(p, layer, s.kv_heads).items():
            p.add(f"{pre}.self_attn.{k}_proj.weight", w0, w1, rank)
        p.plain(f"{pre}.self_attn.o_proj.weight", s.hidden, s.hidden, r["o"])
        p.vector(f"{pre}.post_attention_layernorm.weight", s.hidden, one=True)
        p.plain(f"{pre}.mlp.gate_proj.weight", s.intermediate, s.hidden, r["gate"])
        p.plain(f"{pre}.mlp.up_proj.weight", s.intermediate, s.hidden, r["up"])
        p.plain(f"{pre}.mlp.down_proj.weight", s.hidden, s.intermediate, r["down"])
    p.vector("model.norm.weight", s.hidden, one=True)
    p.plain("lm_head.weight", s.vocab, s.hidden, 1)
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": s.hidden, "intermediate_size": s.intermediate,
            "num_hidden_layers": s.layers, "num_attention_heads": s.heads,
            "num_key_value_heads": s.kv_heads, "head_dim": s.head_dim,
            "vocab_size": s.vocab, "max_position_embeddings": s.positions,
            "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "tie_word_embeddings": False, "attention_bias": False,
            "mlp_bias": False, "initializer_range": 0.02, "torch_dtype": "bfloat16"}


def _gpt2(p: _Pair) -> dict:
    s = p.spec
    h, inner = s.hidden, s.intermediate
    p.plain("transformer.wte.weight", s.vocab, h, 2)
    p.plain("transformer.wpe.weight", s.positions, h, 1)
    for layer in range(s.layers):
        r, pre = _ranks(layer), f"transformer.h.{layer}"
        p.layer_norms(pre, ("ln_1", "ln_2"), h)
        parts = _attn_parts(p, layer, s.heads)
        _fused(p, f"{pre}.attn.c_attn.weight", parts, np.arange(3 * h), transposed=True)
        p.vector(f"{pre}.attn.c_attn.bias", 3 * h)
        p.plain(f"{pre}.attn.c_proj.weight", h, h, r["o"], transposed=True)
        p.vector(f"{pre}.attn.c_proj.bias", h)
        p.plain(f"{pre}.mlp.c_fc.weight", inner, h, r["up"], transposed=True)
        p.vector(f"{pre}.mlp.c_fc.bias", inner)
        p.plain(f"{pre}.mlp.c_proj.weight", h, inner, r["down"], transposed=True)
        p.vector(f"{pre}.mlp.c_proj.bias", h)
    p.layer_norms("transformer", ("ln_f",), h)
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "n_embd": h, "n_head": s.heads, "n_layer": s.layers, "n_inner": inner,
            "n_positions": s.positions, "vocab_size": s.vocab,
            "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
            "torch_dtype": "bfloat16"}


def _gpt_neox(p: _Pair) -> dict:
    s = p.spec
    h, d = s.hidden, s.head_dim
    p.plain("gpt_neox.embed_in.weight", s.vocab, h, 2)
    # stacked [q; k; v] rows -> per head (q_h, k_h, v_h): (heads, 3, d)
    per_head = np.arange(3 * h).reshape(3, s.heads, d).transpose(1, 0, 2).reshape(-1)
    for layer in range(s.layers):
        r, pre = _ranks(layer), f"gpt_neox.layers.{layer}"
        p.layer_norms(pre, ("input_layernorm", "post_attention_layernorm"), h)
        parts = _attn_parts(p, layer, s.heads)
        _fused(p, f"{pre}.attention.query_key_value.weight", parts, per_head)
        p.vector(f"{pre}.attention.query_key_value.bias", 3 * h)
        p.plain(f"{pre}.attention.dense.weight", h, h, r["o"])
        p.plain(f"{pre}.mlp.dense_h_to_4h.weight", s.intermediate, h, r["up"])
        p.plain(f"{pre}.mlp.dense_4h_to_h.weight", h, s.intermediate, r["down"])
    p.layer_norms("gpt_neox", ("final_layer_norm",), h)
    p.plain("embed_out.weight", s.vocab, h, 1)
    return {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
            "hidden_size": h, "intermediate_size": s.intermediate,
            "num_hidden_layers": s.layers, "num_attention_heads": s.heads,
            "vocab_size": s.vocab, "max_position_embeddings": s.positions,
            "rotary_pct": 0.25, "use_parallel_residual": True,
            "torch_dtype": "bfloat16"}


def _phi3(p: _Pair) -> dict:
    s = p.spec
    h, inner = s.hidden, s.intermediate
    p.plain("model.embed_tokens.weight", s.vocab, h, 2)
    for layer in range(s.layers):
        r, pre = _ranks(layer), f"model.layers.{layer}"
        p.vector(f"{pre}.input_layernorm.weight", h, one=True)
        parts = _attn_parts(p, layer, s.kv_heads)
        n_qkv = (s.heads + 2 * s.kv_heads) * s.head_dim
        _fused(p, f"{pre}.self_attn.qkv_proj.weight", parts, np.arange(n_qkv))
        p.plain(f"{pre}.self_attn.o_proj.weight", h, h, r["o"])
        p.vector(f"{pre}.post_attention_layernorm.weight", h, one=True)
        mlp = {"gate": (*p.matrix(inner, h, r["gate"]), r["gate"]),
               "up": (*p.matrix(inner, h, r["up"]), r["up"])}
        _fused(p, f"{pre}.mlp.gate_up_proj.weight", mlp, np.arange(2 * inner))
        p.plain(f"{pre}.mlp.down_proj.weight", h, inner, r["down"])
    p.vector("model.norm.weight", h, one=True)
    p.plain("lm_head.weight", s.vocab, h, 1)
    return {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3",
            "hidden_size": h, "intermediate_size": inner,
            "num_hidden_layers": s.layers, "num_attention_heads": s.heads,
            "num_key_value_heads": s.kv_heads, "vocab_size": s.vocab,
            "max_position_embeddings": s.positions, "torch_dtype": "bfloat16"}


def _expert_rank(layer: int, expert: int, proj: str) -> int:
    return {"gate": 2, "up": 3, "down": 1}[proj] + (expert + layer) % 3


def _moe_attention(p: _Pair, layer: int) -> None:
    s, r, pre = p.spec, _ranks(layer), f"model.layers.{layer}"
    p.vector(f"{pre}.input_layernorm.weight", s.hidden, one=True)
    for k, (w0, w1, rank) in _attn_parts(p, layer, s.kv_heads).items():
        p.add(f"{pre}.self_attn.{k}_proj.weight", w0, w1, rank)
    p.plain(f"{pre}.self_attn.o_proj.weight", s.hidden, s.hidden, r["o"])
    p.vector(f"{pre}.post_attention_layernorm.weight", s.hidden, one=True)


def _moe_config(s: TinySpec, arch: str, model_type: str) -> dict:
    return {"architectures": [arch], "model_type": model_type,
            "hidden_size": s.hidden, "intermediate_size": s.intermediate,
            "num_hidden_layers": s.layers, "num_attention_heads": s.heads,
            "num_key_value_heads": s.kv_heads, "vocab_size": s.vocab,
            "max_position_embeddings": s.positions, "num_experts_per_tok": 2,
            "torch_dtype": "bfloat16"}


def _mixtral(p: _Pair) -> dict:
    s = p.spec
    p.plain("model.embed_tokens.weight", s.vocab, s.hidden, 2)
    for layer in range(s.layers):
        _moe_attention(p, layer)
        pre = f"model.layers.{layer}.block_sparse_moe"
        p.plain(f"{pre}.gate.weight", s.experts, s.hidden, 1)
        for e in range(s.experts):
            for w, proj, shape in (("w1", "gate", (s.intermediate, s.hidden)),
                                   ("w3", "up", (s.intermediate, s.hidden)),
                                   ("w2", "down", (s.hidden, s.intermediate))):
                p.plain(f"{pre}.experts.{e}.{w}.weight", *shape,
                        _expert_rank(layer, e, proj))
    p.vector("model.norm.weight", s.hidden, one=True)
    p.plain("lm_head.weight", s.vocab, s.hidden, 1)
    return _moe_config(s, "MixtralForCausalLM", "mixtral") | {
        "num_local_experts": s.experts}


def _stacked_experts(p: _Pair) -> dict:
    s = p.spec
    h, inner = s.hidden, s.intermediate
    p.plain("model.embed_tokens.weight", s.vocab, h, 2)
    for layer in range(s.layers):
        _moe_attention(p, layer)
        pre = f"model.layers.{layer}.mlp"
        p.plain(f"{pre}.gate.weight", s.experts, h, 1)
        gate_up, down = ([], []), ([], [])
        name_gu, name_d = f"{pre}.experts.gate_up_proj", f"{pre}.experts.down_proj"
        for e in range(s.experts):
            rg, ru, rd = (_expert_rank(layer, e, k) for k in ("gate", "up", "down"))
            g, u, dn = p.matrix(inner, h, rg), p.matrix(inner, h, ru), p.matrix(h, inner, rd)
            for side in (0, 1):
                gate_up[side].append(np.concatenate([g[side], u[side]]))  # (2i, h)
                down[side].append(dn[side])  # (h, i)
            p.planted |= {f"{name_gu}[{e}]": rg + ru, f"{name_gu}[{e}][gate]": rg,
                          f"{name_gu}[{e}][up]": ru, f"{name_d}[{e}]": rd}
        p.add(name_gu, np.stack(gate_up[0]), np.stack(gate_up[1]))  # (E, 2i, h)
        p.add(name_d, np.stack(down[0]), np.stack(down[1]))  # (E, h, i)
    p.vector("model.norm.weight", h, one=True)
    p.plain("lm_head.weight", s.vocab, h, 1)
    return _moe_config(s, "Qwen3MoeForCausalLM", "qwen3_moe") | {
        "num_experts": s.experts, "moe_intermediate_size": inner}


BUILDERS = {"llama": _llama, "gpt2": _gpt2, "gpt_neox": _gpt_neox, "phi3": _phi3,
            "mixtral": _mixtral, "stacked_experts": _stacked_experts,
            "llama_bin": _llama, "llama_bin_sharded": _llama}


def _bf16(tensors: dict[str, np.ndarray]) -> dict:
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
            .to(torch.bfloat16) for k, v in tensors.items()}


def _shards(names: list[str], n: int) -> Iterator[list[str]]:
    per = -(-len(names) // n)
    for k in range(n):
        yield names[k * per:(k + 1) * per]


def write_weights(folder: Path, tensors: dict, fmt: str) -> None:
    """`fmt`: "safetensors", "bin" (pytorch_model.bin) or "bin_sharded"."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    elif fmt == "bin":
        torch.save(tensors, folder / "pytorch_model.bin")
    else:
        weight_map = {}
        for k, names in enumerate(_shards(list(tensors), 2)):
            fname = f"pytorch_model-{k + 1:05d}-of-00002.bin"
            torch.save({n: tensors[n] for n in names}, folder / fname)
            weight_map |= dict.fromkeys(names, fname)
        (folder / "pytorch_model.bin.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))


def build_layout_pair(layout: str, out: str | os.PathLike, spec: TinySpec = TINY
                      ) -> tuple[Path, Path]:
    """Write `out/base`, `out/sft` and `out/planted.json` for `layout`; returns the
    two folders. Rebuilt every call (a few hundred ms)."""
    from compute.demo import save_tokenizer, train_tokenizer

    if layout not in BUILDERS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    out = Path(out)
    same_weights = {"llama_bin": "llama", "llama_bin_sharded": "llama"}  # as llama
    pair = _Pair(spec, spec.seed + LAYOUTS.index(same_weights.get(layout, layout)))
    config = BUILDERS[layout](pair)
    tok = train_tokenizer(spec.vocab)
    eos = tok.token_to_id("<|endoftext|>")
    config |= {"bos_token_id": eos, "eos_token_id": eos}
    fmt = {"llama_bin": "bin", "llama_bin_sharded": "bin_sharded"}.get(
        layout, "safetensors")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for side, tensors in (("base", pair.base), ("sft", pair.sft)):
        write_weights(tmp / side, _bf16(tensors), fmt)
        (tmp / side / "config.json").write_text(json.dumps(config, indent=1))
        save_tokenizer(tok, tmp / side)
    (tmp / "planted.json").write_text(json.dumps(
        {"layout": layout, "ranks": pair.planted, "fused": pair.unfused}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out / "base", out / "sft"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="data/models/layouts")
    ap.add_argument("--layout", choices=LAYOUTS, action="append",
                    help="only this layout (repeatable; default: all)")
    args = ap.parse_args()
    for layout in args.layout or LAYOUTS:
        base, sft = build_layout_pair(layout, Path(args.out) / layout)
        print(f"{layout}: {base} vs {sft}")


if __name__ == "__main__":
    main()
