"""Pairs whose vocabulary-sized tensors differ: a resized vocabulary, a tied head.

    change = align_pair(base, sft)   # before pair_plan's checks; None: nothing to do
    rows = added_token_rows(change, sft)   # the added rows, for raw.added_tokens

- Resized vocabulary: a fine-tune that added tokens (chat markers, tools) has
  `vocab_size` V + N and N more rows in its embedding and lm_head. When only the
  tensors whose first dimension is the vocabulary differ, and by exactly the
  configs' vocab sizes, the SFT's tensors are narrowed to their first V rows (the
  byte range of the first V rows of a C-ordered matrix: nothing is copied), so the
  shared rows are compared as the embedding / lm_head matrices; the N added rows
  are recorded apart (token id, the row's norm, the token's string from the SFT's
  tokenizer.json when there is one). A smaller SFT vocabulary, or any other
  difference, stays an error of pair_plan.
- Tied head: a base with tied embeddings (no lm_head.weight) against a fine-tune
  that saved its own lm_head: the base's lm_head is its embedding matrix, so the
  SFT's lm_head is compared with it. (And the other way round.)
"""

from __future__ import annotations

import dataclasses
import math

from compute.io.checkpoints import Checkpoint, CheckpointError, TensorInfo
from compute.linalg.spectra import to_float64

HEAD = "lm_head.weight"


@dataclasses.dataclass
class VocabChange:
    base_vocab: int | None = None
    sft_vocab: int | None = None
    resized: dict[str, TensorInfo] = dataclasses.field(default_factory=dict)
    tied_head: str | None = None  # "base" or "sft": the side whose head is its embedding
    embedding: str | None = None  # the tied side's embedding tensor

    def options(self) -> dict:
        """What the run records (compute_runs.options)."""
        return {"base_vocab_size": self.base_vocab, "sft_vocab_size": self.sft_vocab,
                "resized_tensors": sorted(self.resized),
                "tied_head_compared_with": (f"{self.tied_head}'s {self.embedding}"
                                            if self.tied_head else None)}


def _embedding(ckpt: Checkpoint, shape: tuple[int, ...]) -> str:
    """The tensor a tied lm_head of `shape` shares: the embedding of that shape."""
    found = [n for n, t in ckpt.tensors.items() if t.shape == shape and n != HEAD
             and any(k in n for k in ("embed", "wte", "word_embeddings"))]
    if len(found) != 1:
        raise CheckpointError(
            f"{ckpt.ref} ties its lm_head to its embedding, but "
            f"{'no' if not found else len(found)} embedding tensor(s) of shape "
            f"{list(shape)} are there{': ' + ', '.join(found) if found else ''}")
    return found[0]


def _tie(change: VocabChange, tied: Checkpoint, other: Checkpoint, side: str) -> None:
    if (HEAD in tied.tensors or HEAD not in other.tensors
            or not tied.config.get("tie_word_embeddings", True)):
        return
    shape = other.tensors[HEAD].shape
    rows = tied.config.get("vocab_size")
    if isinstance(rows, int) and not any(t.shape == shape
                                         for t in tied.tensors.values()):
        shape = (rows, *shape[1:])  # a resized vocabulary: the tied side's own rows
    emb = _embedding(tied, shape)
    info = tied.tensors[emb]
    if not info.file.endswith(".safetensors"):
        raise CheckpointError(f"{tied.ref}: a tied lm_head in {info.file}: compare "
                              "it from safetensors (save_pretrained converts)")
    tied.tensors = dict(tied.tensors) | {HEAD: info}  # the same bytes, read as lm_head
    change.tied_head, change.embedding = side, emb


def align_pair(base: Checkpoint, sft: Checkpoint) -> VocabChange | None:
    """Narrow a resized vocabulary to the shared rows, alias a tied head (changing
    the checkpoints' tensor tables); None when the pair needs neither."""
    change = VocabChange()
    vb, vs = base.config.get("vocab_size"), sft.config.get("vocab_size")
    # the head first: a tied base's lm_head has the base's vocabulary
    _tie(change, base, sft, "base")
    _tie(change, sft, base, "sft")
    if isinstance(vb, int) and isinstance(vs, int) and vb != vs:
        differ = {n for n in set(base.tensors) & set(sft.tensors)
                  if base.tensors[n].shape != sft.tensors[n].shape}
        vocab_sized = {n for n in differ if base.tensors[n].shape[:1] == (vb,)
                       and sft.tensors[n].shape[:1] == (vs,)
                       and base.tensors[n].shape[1:] == sft.tensors[n].shape[1:]}
        if differ == vocab_sized and vs > vb:
            change.base_vocab, change.sft_vocab = vb, vs
            narrowed = {}
            for n in sorted(vocab_sized):
                info = sft.tensors[n]
                if not info.file.endswith(".safetensors"):
                    raise CheckpointError(
                        f"{sft.ref}: resized vocabulary in {info.file}: compare it "
                        "from safetensors (save_pretrained converts)")
                row = (info.end - info.start) // vs
                change.resized[n] = info
                narrowed[n] = dataclasses.replace(info, shape=(vb, *info.shape[1:]),
                                                  end=info.start + row * vb)
            sft.tensors = dict(sft.tensors) | narrowed
    if change.tied_head is None and not change.resized:
        return None
    return change


def added_token_rows(change: VocabChange, sft: Checkpoint) -> list[dict]:
    """One dict per (resized tensor, added row): token_id, token, norm."""
    if not change.resized:
        return []
    tokens = _token_strings(sft)
    rows = []
    for name, info in sorted(change.resized.items()):
        reader = Checkpoint(sft.ref, sft.path, sft.revision, {}, {name: info})
        w = to_float64(*reader.read_array(name))  # (V + N, d)
        for i in range(change.base_vocab, change.sft_vocab):
            rows.append({"tensor": name, "token_id": i,
                         "token": tokens(i), "norm": math.sqrt(float(w[i] @ w[i]))})
    return rows


def _token_strings(ckpt: Checkpoint):
    """id -> token string from the checkpoint's tokenizer.json (None without one)."""
    path = ckpt.path / "tokenizer.json"
    if not path.exists():
        return lambda i: None
    try:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path))
    except Exception:  # an unreadable tokenizer: the strings stay NULL
        return lambda i: None
    return tok.id_to_token
