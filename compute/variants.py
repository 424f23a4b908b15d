"""Tiny Qwen2 pairs that differ from the demo pair the ways real fine-tunes do.

    python -m compute.variants data/models/variants             # every variant
    python -m compute.variants data/models/variants --variant lora
    from compute.variants import VARIANTS, build_variant         # in tests

Each variant writes `out/<variant>/base`, `out/<variant>/sft` and
`out/<variant>/planted.json` (the planted rank of every matrix's dW; 0 for a
matrix the fine-tune leaves alone) with a small PairSpec (compute.demo):

| variant | base | fine-tuned side |
|---|---|---|
| fp32_sft | bf16 | float32: W0 + U S V^T, not rounded (only the base's rounding is noise) |
| fp16_sft | bf16 | float16 |
| vocab_plus | bf16, vocabulary V | bf16, V + 5 rows in embed_tokens and lm_head (5 new special tokens in its tokenizer), vocab_size V + 5 |
| tied_base | bf16, tie_word_embeddings (no lm_head) | bf16, its own lm_head |
| lora | bf16 | a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors): q_proj and v_proj of every layer, r = 4 (rank_pattern: 2 for layer 1's v_proj), lora_alpha 8 (alpha_pattern: 4 for layer 0's q_proj), lm_head in modules_to_save |

Written here, in PEFT's own file format, without PEFT: the tests load the adapter
with `peft.PeftModel.from_pretrained` and compare its merged weights with
compute.adapters' dW.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
from pathlib import Path

from compute.demo import (
    PairSpec,
    planted_update,
    qwen2_config,
    save_tokenizer,
    shapes,
    train_tokenizer,
    write_checkpoint,
)

VARIANTS = ("fp32_sft", "fp16_sft", "vocab_plus", "tied_base", "lora")
SPEC = PairSpec(hidden=64, intermediate=96, layers=2, heads=4, kv_heads=2,
                vocab=512, max_positions=256, seed=1403)
ADDED_TOKENS = [f"<|tool_{i}|>" for i in range(5)]
LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
        "rank_pattern": {"layers.1.self_attn.v_proj": 2},
        "alpha_pattern": {"layers.0.self_attn.q_proj": 4},
        "modules_to_save": ["lm_head"]}


def _rank(name: str) -> int:
    """The planted rank of a full fine-tune's dW (embed 3, lm_head 2, else 5)."""
    return 3 if "embed_tokens" in name else 2 if name == "lm_head.weight" else 5


def build_variant(out: str | Path, variant: str, *, force: bool = False
                  ) -> tuple[Path, Path]:
    """Write `out/<variant>/{base,sft,planted.json}` (skipped when present)."""
    import torch

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")
    root = Path(out) / variant
    base_dir, sft_dir = root / "base", root / "sft"
    if (root / "planted.json").exists() and not force:
        return base_dir, sft_dir
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    gen = torch.Generator().manual_seed(SPEC.seed + VARIANTS.index(variant))
    tok = train_tokenizer(SPEC.vocab)
    vocab = tok.get_vocab_size()  # embedding rows = tokenizer entries
    spec = dataclasses.replace(SPEC, vocab=vocab,
                               tie_embeddings=variant == "tied_base")
    base_dtype = torch.bfloat16
    sft_dtype = {"fp32_sft": torch.float32, "fp16_sft": torch.float16
                 }.get(variant, torch.bfloat16)
    names = shapes(dataclasses.replace(spec, tie_embeddings=False))
    base, sft, planted = {}, {}, {}
    lora = {}
    for name, shape in names.items():
        w0 = torch.randn(shape, generator=gen) * spec.init_std
        if len(shape) == 1:
            w0 = 1.0 + w0 if "norm" in name else w0
            base[name], sft[name] = w0.to(base_dtype), w0.to(sft_dtype)
            continue
        if variant == "lora":
            w1, rank = _lora_update(name, w0, gen, lora)
        else:
            update, s = planted_update(*shape, _rank(name), spec, gen)
            w1, rank = w0 + update, len(s)
        planted[name] = rank
        base[name], sft[name] = w0.to(base_dtype), w1.to(sft_dtype)
    if variant == "vocab_plus":  # new rows: near the mean embedding, as resizing does
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            new = sft[name].float().mean(0) + torch.randn(
                len(ADDED_TOKENS), spec.hidden, generator=gen) * spec.init_std
            sft[name] = torch.cat([sft[name], new.to(sft_dtype)])
    if variant == "tied_base":  # the base ties: its lm_head is its embedding
        del base["lm_head.weight"]
        sft["lm_head.weight"] = (base["model.embed_tokens.weight"].float()
                                 + planted_update(vocab, spec.hidden, 2, spec, gen)[0]
                                 ).to(sft_dtype)
        planted["lm_head.weight"] = 2
    config = qwen2_config(spec, tok.token_to_id("<|endoftext|>"))
    write_checkpoint(tmp / "base", base, 1)
    (tmp / "base" / "config.json").write_text(json.dumps(config, indent=2))
    save_tokenizer(tok, tmp / "base")
    if variant == "lora":
        _write_adapter(tmp / "sft", lora, sft["lm_head.weight"])
    else:
        sft_config = config | {"tie_word_embeddings": False,
                               "torch_dtype": str(sft_dtype).removeprefix("torch.")}
        if variant == "vocab_plus":
            tok.add_special_tokens(ADDED_TOKENS)
            sft_config["vocab_size"] = vocab + len(ADDED_TOKENS)
        write_checkpoint(tmp / "sft", sft, 1)
        (tmp / "sft" / "config.json").write_text(json.dumps(sft_config, indent=2))
        save_tokenizer(tok, tmp / "sft")
    (tmp / "planted.json").write_text(json.dumps(
        {"variant": variant, "ranks": planted,
         "added_tokens": ADDED_TOKENS if variant == "vocab_plus" else []}, indent=1))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return base_dir, sft_dir


def _lora_update(name: str, w0, gen, lora: dict):
    """(W_sft in fp32 for a full tensor, planted rank); records A, B of the adapted
    ones in `lora` (their W_sft is not stored: the adapter is)."""
    import torch

    module = name.removesuffix(".weight")
    short = module.rsplit(".", 1)[-1]
    if name == "lm_head.weight":  # modules_to_save: a full fine-tuned copy
        update, s = planted_update(*w0.shape, 2, SPEC, gen)
        return w0 + update, len(s)
    if short not in LORA["target_modules"]:
        return w0, 0
    r = next((v for k, v in LORA["rank_pattern"].items() if module.endswith(k)),
             LORA["r"])
    a = torch.randn(r, w0.shape[1], generator=gen) / math.sqrt(w0.shape[1])
    b = torch.randn(w0.shape[0], r, generator=gen) * 0.02
    lora[module] = (a, b)
    return w0, r


def _write_adapter(folder: Path, lora: dict, lm_head) -> None:
    """adapter_config.json and adapter_model.safetensors as PEFT saves them."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    tensors = {"base_model.model.lm_head.weight": lm_head.contiguous()}
    for module, (a, b) in lora.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = b.contiguous()
    save_file(tensors, str(folder / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "bias": "none",
              "lora_dropout": 0.0, "fan_in_fan_out": False, "use_rslora": False,
              "inference_mode": True, "base_model_name_or_path": "../base"} | LORA
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m compute.variants",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="data/models/variants")
    ap.add_argument("--variant", choices=VARIANTS, action="append",
                    help="only this variant (repeatable; default all)")
    ap.add_argument("--force", action="store_true", help="rebuild even if present")
    a = ap.parse_args(argv)
    for v in a.variant or VARIANTS:
        base, sft = build_variant(a.out, v, force=a.force)
        print(f"{v}: {base} vs {sft}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
