"""Tiny Qwen2-architecture checkpoint pairs with planted, known weight deltas.

    python -m compute.demo data/models/planted    # the planted pair (--pair planted)
    from compute.demo import PairSpec, build_pair  # other shapes, in tests

A pair is two folders in the real Hugging Face layout (config.json, safetensors,
tokenizer.json / tokenizer_config.json), stored in bf16 like a released checkpoint:

    W_base = round_bf16(W0)
    W_sft  = round_bf16(W0 + U diag(s) V^T + dense)

W0 is a random init (std 0.02), U diag(s) V^T a planted update of known rank r whose
singular values s run geometrically from `s_hi` to `s_lo`, `dense` a Gaussian far
below bf16 rounding. `planted.json` beside the pair records r and s per tensor: the
ground truth that the signal rank of dW must find. Deterministic for a given spec.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from compute.naming import parse_name

if TYPE_CHECKING:  # imported where used
    import torch

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def demo_rank(module: str, layer: int | None, n_layers: int) -> int:
    """Planted rank of the demo pair: larger in q/k and growing with depth."""
    if module in ("embed_tokens", "lm_head"):
        return {"embed_tokens": 4, "lm_head": 2}[module]
    assert layer is not None
    if module in ("q_proj", "k_proj"):
        return 12 + 4 * layer
    if module in ("v_proj", "o_proj"):
        return 4 + layer
    return 8 + 2 * (layer * 3 // n_layers)  # gate/up/down: 8, 10, 12 by depth


@dataclasses.dataclass(frozen=True)
class PairSpec:
    hidden: int = 256
    intermediate: int = 704
    layers: int = 6
    heads: int = 4
    kv_heads: int = 2
    vocab: int = 2048
    tie_embeddings: bool = False
    shards: int = 1  # > 1 writes model-0000i-of-0000n + model.safetensors.index.json
    s_hi: float = 0.12
    s_lo: float = 0.04
    dense_std: float = 2e-6
    init_std: float = 0.02  # scales W0, and with it the bf16 rounding noise of dW
    max_positions: int = 2048
    seed: int = 6197
    rank_fn: Callable[[str, int | None, int], int] = demo_rank

    def key(self) -> str:
        """A hash of everything that determines the files (for rebuild checks)."""
        fields = dataclasses.asdict(self)
        fields["rank_fn"] = getattr(self.rank_fn, "__qualname__", repr(self.rank_fn))
        text = json.dumps(fields, sort_keys=True) + "v1"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


DEMO = PairSpec()


def qwen2_config(spec: PairSpec, eos_id: int) -> dict:
    head_dim = spec.hidden // spec.heads
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": head_dim,
        "vocab_size": spec.vocab,
        "max_position_embeddings": spec.max_positions,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": spec.tie_embeddings,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": spec.layers,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "bfloat16",
        "use_cache": True,
    }


def shapes(spec: PairSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Qwen2 checkpoint with this spec, in file order."""
    h, i, kv = spec.hidden, spec.intermediate, spec.kv_heads * (spec.hidden // spec.heads)
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (spec.vocab, h)}
    for layer in range(spec.layers):
        p = f"model.layers.{layer}"
        out |= {
            f"{p}.input_layernorm.weight": (h,),
            f"{p}.self_attn.q_proj.weight": (h, h),
            f"{p}.self_attn.q_proj.bias": (h,),
            f"{p}.self_attn.k_proj.weight": (kv, h),
            f"{p}.self_attn.k_proj.bias": (kv,),
            f"{p}.self_attn.v_proj.weight": (kv, h),
            f"{p}.self_attn.v_proj.bias": (kv,),
            f"{p}.self_attn.o_proj.weight": (h, h),
            f"{p}.post_attention_layernorm.weight": (h,),
            f"{p}.mlp.gate_proj.weight": (i, h),
            f"{p}.mlp.up_proj.weight": (i, h),
            f"{p}.mlp.down_proj.weight": (h, i),
        }
    out["model.norm.weight"] = (h,)
    if not spec.tie_embeddings:
        out["lm_head.weight"] = (spec.vocab, h)
    return out


def planted_update(
    m: int, n: int, rank: int, spec: PairSpec, gen: torch.Generator
) -> tuple[torch.Tensor, list[float]]:
    """U diag(s) V^T with orthonormal U (m, r), V (n, r) and s from s_hi to s_lo."""
    import torch

    rank, dev = min(rank, m, n), gen.device
    if rank == 0:
        return torch.zeros(m, n, device=dev), []
    u, _ = torch.linalg.qr(torch.randn(m, rank, generator=gen, dtype=torch.float64,
                                       device=dev))
    v, _ = torch.linalg.qr(torch.randn(n, rank, generator=gen, dtype=torch.float64,
                                       device=dev))
    ratio = (spec.s_lo / spec.s_hi) ** (1 / max(rank - 1, 1))
    s = torch.tensor([spec.s_hi * ratio**k for k in range(rank)], dtype=torch.float64,
                     device=dev)
    return ((u * s) @ v.T).float(), s.tolist()  # (m, n)


def corpus_lines() -> list[str]:
    """A small physics-flavoured corpus to train the demo tokenizer on."""
    words = (
        "the a of and to in is that for on with as by energy momentum field mass "
        "charge quantum state wave function particle electron photon force gravity "
        "spin angular velocity acceleration potential kinetic entropy temperature "
        "heat pressure volume density current voltage magnetic electric tensor "
        "metric spacetime relativity frame observer light speed vacuum operator "
        "eigenvalue hamiltonian lagrangian symmetry conservation law equation "
        "derivative integral vector scalar basis why how does would should can "
        "question answer because therefore however consider assume suppose given "
        "$E=mc^2$ $F=ma$ $\\hbar$ $\\psi(x)$ $\\nabla\\cdot E$ 1 2 3 10 100 0.5 "
        "code print def return numpy array plot"
    ).split()
    import torch

    gen = torch.Generator().manual_seed(1)
    lines = []
    for _ in range(3000):
        idx = torch.randint(len(words), (int(torch.randint(6, 30, (1,), generator=gen)),),
                            generator=gen)
        lines.append(" ".join(words[i] for i in idx.tolist()).capitalize() + ".")
    return lines


def train_tokenizer(vocab: int, lines: list[str] | None = None):
    """A byte-level BPE tokenizer with Qwen's special tokens, trained in-process:
    on `lines` with `vocab` entries, or (default) on `corpus_lines()` with at most
    1024 (the planted pair's embedding rows past that are never used)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab, 1024) if lines is None else vocab,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines() if lines is None else lines, trainer=trainer)
    return tok


def save_tokenizer(tok, folder: Path) -> None:
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 32768,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "additional_special_tokens": SPECIAL_TOKENS[1:],
        "clean_up_tokenization_spaces": False,
    }, indent=2))


def write_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], shards: int) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    if shards <= 1:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    per = -(-len(names) // shards)
    weight_map, total = {}, 0
    for k in range(shards):
        part = {n: tensors[n] for n in names[k * per:(k + 1) * per]}
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, str(folder / fname), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, fname)
        total += sum(t.numel() * t.element_size() for t in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def build_pair(out: str | os.PathLike, spec: PairSpec = DEMO, *, force: bool = False,
               device: str = "cpu") -> tuple[Path, Path]:
    """Write `out/base` and `out/sft` (and `out/planted.json`); returns the folders.

    Skips the work when `out` already holds this spec's pair. `device`: where the
    weights are drawn (a GPU draws a 7B-shaped pair in seconds, the CPU in minutes);
    each device's generator gives other numbers, so it is part of the cache key.
    """
    out = Path(out)
    key = spec.key() if device == "cpu" else f"{spec.key()}-{device}"
    base_dir, sft_dir, truth = out / "base", out / "sft", out / "planted.json"
    if not force and truth.exists():
        try:
            if json.loads(truth.read_text()).get("spec_key") == key:
                return base_dir, sft_dir
        except (json.JSONDecodeError, OSError):
            pass
    import torch

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    gen = torch.Generator(device=device).manual_seed(spec.seed)
    tok = train_tokenizer(spec.vocab)
    eos_id = tok.token_to_id("<|endoftext|>")
    base, sft, planted = {}, {}, {}
    for name, shape in shapes(spec).items():
        w0 = torch.randn(shape, generator=gen, device=device) * spec.init_std
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            w0 = 1.0 + w0
        if len(shape) == 2:
            layer, module = parse_name(name)
            rank = spec.rank_fn(module, layer, spec.layers)
            update, s = planted_update(*shape, rank, spec, gen)
            dense = torch.randn(shape, generator=gen, device=device) * spec.dense_std
            w1 = w0 + update + dense
            planted[name] = {"rank": len(s), "singular_values": s,
                             "shape": list(shape)}
        else:
            w1 = w0 + torch.randn(shape, generator=gen, device=device) * 1e-3
        base[name] = w0.to(torch.bfloat16).cpu().contiguous()
        sft[name] = w1.to(torch.bfloat16).cpu().contiguous()
    for folder, tensors in ((tmp / "base", base), (tmp / "sft", sft)):
        write_checkpoint(folder, tensors, spec.shards)
        (folder / "config.json").write_text(json.dumps(qwen2_config(spec, eos_id),
                                                       indent=2))
        save_tokenizer(tok, folder)
    (tmp / "planted.json").write_text(json.dumps(
        {"spec_key": key, "noise_free_dense_std": spec.dense_std,
         "tensors": planted}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return base_dir, sft_dir


def place_in_hub_cache(folder: Path, cache_dir: Path, repo_id: str,
                       commit: str | None = None) -> Path:
    """Lay `folder` out as the hub cache does (blobs, snapshots/<commit>, refs/main).

    With HF_HUB_CACHE=cache_dir and HF_HUB_OFFLINE=1, huggingface_hub resolves
    `repo_id` to it. Returns the snapshot folder.
    """
    commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for f in sorted(Path(folder).iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / f.name
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, snap))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="data/models/planted")
    ap.add_argument("--force", action="store_true", help="rebuild even if present")
    args = ap.parse_args()
    base, sft = build_pair(args.out, force=args.force)
    print(f"planted pair: {base} vs {sft}")


if __name__ == "__main__":
    main()
