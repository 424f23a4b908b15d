"""The pair plan: check that base and SFT are one architecture and list the work
(matrices, vectors, views, skipped buffers, the vocabulary alignment).

    from compute.plan.pair import pair_plan
    plan = pair_plan(resolve(base_ref), resolve(sft_ref))
"""

from __future__ import annotations

import dataclasses

from compute.arch.naming import Layout, LayoutError, View
from compute.io.checkpoints import STORAGE, Checkpoint, CheckpointError
from compute.plan.formats import text_towers
from compute.plan.vocab import VocabChange, align_pair


@dataclasses.dataclass
class Plan:
    matrices: list[str]  # 2-D/3-D weights, in file order: spectra of base, sft, delta
    vectors: list[str]  # 1-D tensors: relative change only
    tied: bool  # lm_head shares embed_tokens (absent from the files)
    # the matrices each tensor gives (compute.arch.naming: whole, fused parts, experts)
    views: dict[str, list[View]] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # buffers: why
    vocab: VocabChange | None = None  # a resized vocabulary, a tied head (compute.plan.vocab)

    @property
    def n_views(self) -> int:
        """The matrices analysed (a fused tensor's parts and experts count apart)."""
        return sum(len(self.views[m]) for m in self.matrices)


ARCH_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "intermediate_size", "vocab_size")


def pair_plan(base: Checkpoint, sft: Checkpoint) -> Plan:
    """Check that base and SFT are one architecture; list the work. Errors name the
    first tensor (or config key) that differs, before any work is done. A resized
    vocabulary and a tied head against an untied one are aligned first
    (compute.plan.vocab: the checkpoints' tensor tables change); the storage dtypes of
    the two sides may differ. Quantized and encoder-decoder checkpoints are refused,
    a multimodal one is read as its language tower (compute.plan.formats)."""
    towers = text_towers(base, sft)  # refuses quantized, encoder-decoder models
    vocab = align_pair(base, sft)
    for key in ARCH_KEYS:
        if key == "vocab_size" and vocab and vocab.base_vocab:
            continue
        if key == "model_type" and towers:  # qwen2_vl's text tower vs qwen2
            continue
        if base.config.get(key) != sft.config.get(key):
            raise CheckpointError(
                f"base and SFT are different architectures: config {key} is "
                f"{base.config.get(key)!r} in {base.ref} but {sft.config.get(key)!r} "
                f"in {sft.ref}"
            )
    only_base = sorted(set(base.tensors) - set(sft.tensors))
    only_sft = sorted(set(sft.tensors) - set(base.tensors))
    if only_base or only_sft:
        which = (f"{only_base[0]} is in {base.ref} only" if only_base
                 else f"{only_sft[0]} is in {sft.ref} only")
        raise CheckpointError(
            f"base and SFT hold different tensors ({len(only_base)} only in base, "
            f"{len(only_sft)} only in SFT): {which}"
        )
    matrices, vectors = [], []
    layout = Layout(base.config)
    views: dict[str, list[View]] = {}
    skipped: dict[str, str] = {}
    for name, info in base.tensors.items():
        other = sft.tensors[name]
        if info.shape != other.shape:
            raise CheckpointError(
                f"tensor {name}: shape {list(info.shape)} in {base.ref} but "
                f"{list(other.shape)} in {sft.ref}"
            )
        if layout.skip(name, info.shape):
            skipped[name] = layout.skip(name, info.shape)
            continue
        for ckpt, t in ((base, info), (sft, other)):  # each side its own dtype
            if t.dtype not in STORAGE:
                raise CheckpointError(
                    f"{ckpt.path / t.file}: tensor {name} is stored as {t.dtype}; "
                    f"sftscope reads {', '.join(STORAGE)} weights")
        try:
            if len(info.shape) >= 2:
                views[name] = layout.views(name, info.shape)
                matrices.append(name)
            elif len(info.shape) == 1:
                layout.place(name)
                vectors.append(name)
            else:
                raise LayoutError(f"tensor {name}: a scalar, not a weight")
        except LayoutError as exc:
            raise CheckpointError(f"{base.path / info.file}: {exc}") from exc
    try:
        layout.check_unique([v for vs in views.values() for v in vs])
    except LayoutError as exc:
        raise CheckpointError(f"{base.ref}: {exc}") from exc
    tied = bool(base.config.get("tie_word_embeddings")) and "lm_head.weight" not in base.tensors
    return Plan(matrices, vectors, tied, views, skipped, vocab)

