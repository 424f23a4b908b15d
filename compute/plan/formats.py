"""What of a checkpoint sftscope compares: quantized and encoder-decoder checkpoints
refused in one line, a multimodal model's language tower taken on its own.

    towers = text_towers(base, sft)  # before pair_plan's checks (it calls this)
    check_readable(ckpt)                 # CheckpointError naming what it cannot read

- Quantized checkpoints (a `quantization_config` in config.json, or tensors named as
  GPTQ / AWQ / bitsandbytes store them: `qweight`, `qzeros`, `weight_scale_inv`,
  `absmax`...): their weights are integer codes with scales, and quantizing adds an
  error of its own that would read as fine-tuning. They are refused, naming the
  format, before any work: compare the unquantized checkpoint the quantized one was
  made from, or dequantize it with transformers and save it in bf16 first.
- Encoder-decoder models (T5, BART, Whisper: `is_encoder_decoder` in the config) are
  refused: sftscope compares decoder-only causal LMs.
- Multimodal models (Qwen2-VL, LLaVA, Gemma 3, ...; a `text_config` beside a
  `vision_config`): the language tower is compared and the vision tower and
  projector left out. Qwen2-VL keeps the tower as `model.<...>` beside `visual.*`;
  newer checkpoints (and transformers 5's modules) as `model.language_model.<...>`
  (head `lm_head`), older LLaVA ones as `language_model.model.<...>` (head
  `language_model.lm_head`); all are read under the text-only names
  (`model.<...>`, `lm_head`), so a vision-language fine-tune
  compares with its text-only base, or with another of its kind; the config is the
  nested `text_config`.
"""

from __future__ import annotations

from compute.io.checkpoints import Checkpoint, CheckpointError

# tensor-name endings of the quantized formats (when the config does not say)
QUANT_TENSORS = {".qweight": "GPTQ/AWQ", ".qzeros": "GPTQ/AWQ", ".g_idx": "GPTQ",
                 ".weight_scale_inv": "fp8", ".weight_scale": "fp8 / compressed-"
                 "tensors", ".weight_packed": "compressed-tensors", ".absmax":
                 "bitsandbytes", ".quant_map": "bitsandbytes", ".SCB": "bitsandbytes",
                 ".quant_state.bitsandbytes__nf4": "bitsandbytes",
                 ".quant_state.bitsandbytes__fp4": "bitsandbytes",
                 "_blocks": "MXFP4"}
# (prefix of the tower's tensors, prefix of their text-only names)
TOWERS = (("model.language_model.", "model."), ("language_model.model.", "model."),
          ("language_model.lm_head.", "lm_head."), ("model.text_model.", "model."))
NON_TEXT = ("visual", "vision", "multi_modal", "image", "audio", "speech")


def quantization(ckpt: Checkpoint) -> str | None:
    """The quantization format of a checkpoint, or None."""
    q = ckpt.config.get("quantization_config")
    if isinstance(q, dict):
        method = str(q.get("quant_method") or "")
        if q.get("load_in_4bit") or q.get("_load_in_4bit"):
            method = "bitsandbytes 4-bit"
        elif q.get("load_in_8bit") or q.get("_load_in_8bit"):
            method = "bitsandbytes 8-bit"
        bits = q.get("bits") or q.get("w_bit")
        return (method or "unknown") + (f" {bits}-bit" if bits and "bit" not in
                                          method else "")
    for name in ckpt.tensors:
        for end, fmt in QUANT_TENSORS.items():
            if name.endswith(end):
                return f"{fmt} (tensor {name})"
    return None


def check_readable(ckpt: Checkpoint) -> None:
    """Refuse, in one line naming the checkpoint, what sftscope cannot compare."""
    fmt = quantization(ckpt)
    if fmt:
        raise CheckpointError(
            f"{ckpt.ref}: a quantized checkpoint ({fmt}); sftscope compares "
            "unquantized weights (bf16, fp16, fp32): use the checkpoint it was "
            "quantized from, or dequantize it with transformers and save_pretrained "
            "it in bf16 first")
    if ckpt.config.get("is_encoder_decoder"):
        raise CheckpointError(
            f"{ckpt.ref}: an encoder-decoder model "
            f"({ckpt.config.get('model_type', '?')}); sftscope compares decoder-only "
            "causal language models")


def _tower_name(name: str) -> str | None:
    """The text-only name of a language-tower tensor, else None."""
    for prefix, text in TOWERS:
        if name.startswith(prefix):
            return text + name[len(prefix):]
    return None


def is_multimodal(ckpt: Checkpoint) -> bool:
    """A nested text_config beside a vision (or audio) one, or tower prefixes."""
    c = ckpt.config
    return ((isinstance(c.get("text_config"), dict)
            and any(k in c for k in ("vision_config", "audio_config")))
            or any(_tower_name(n) is not None for n in ckpt.tensors))


def _other_tower(name: str) -> bool:
    """A tensor of a vision / audio tower or projector (Qwen2-VL's `visual.`, LLaVA's
    `vision_tower.`, `multi_modal_projector.`, ...), by its first two names."""
    return any(w in part for part in name.split(".")[:2] for w in NON_TEXT)


def text_tower(ckpt: Checkpoint) -> bool:
    """Make the checkpoint its language tower, under text-only names and config
    (its tensor table and config change; the bytes read are the tower's); False
    when it is a text-only model (left alone)."""
    if not is_multimodal(ckpt):
        return False
    prefixed = any(_tower_name(n) is not None for n in ckpt.tensors)
    tensors = {}
    for name, info in ckpt.tensors.items():
        text = _tower_name(name)
        if text is None and not prefixed and not _other_tower(name):
            text = name  # Qwen2-VL as saved: the tower as model.*, beside visual.*
        if text is not None or name == "lm_head.weight":
            tensors[text or name] = info  # info.name: the name in the file
    config = ckpt.config.get("text_config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{ckpt.ref}: a multimodal checkpoint without a "
                              "text_config in config.json: its language tower's "
                              "sizes are unknown")
    config = {k: v for k, v in ckpt.config.items() if k != "text_config"} | config
    config["tie_word_embeddings"] = ckpt.config.get(
        "tie_word_embeddings", config.get("tie_word_embeddings"))
    ckpt.config, ckpt.tensors = config, tensors
    return True


def text_towers(base: Checkpoint, sft: Checkpoint) -> bool:
    """Both sides checked (check_readable); a multimodal side made its language
    tower, so that it compares with a text-only one. True if either was."""
    for ckpt in (base, sft):
        check_readable(ckpt)
    return any([text_tower(base), text_tower(sft)])
