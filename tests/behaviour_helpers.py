"""Shared pieces of the behaviour tests: tiny pairs, prompts, a reference scorer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file

from compute.fixtures.planted import PairSpec, build_pair, corpus_lines

SPEC = PairSpec(layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=512,
                max_positions=1024)
DEEP = PairSpec(layers=4, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=512,
                max_positions=1024, seed=11)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a busy 2-core box run faster (and steadier) on one thread
    (a module that imports this fixture gets it)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pair(out: Path, spec: PairSpec = SPEC) -> tuple[Path, Path]:
    return build_pair(out, spec)


def equal_pair(out: Path) -> tuple[Path, Path]:
    """SFT is a byte-for-byte copy of the base."""
    base, sft = build_pair(out, SPEC)
    shutil.rmtree(sft)
    shutil.copytree(base, sft)
    return base, sft


def planted_pair(out: Path, layer: int) -> tuple[Path, Path]:
    """SFT = base except the tensors of block `layer`, which keep their SFT values."""
    base, sft = build_pair(out, DEEP)
    wb, ws = load_file(str(base / "model.safetensors")), load_file(
        str(sft / "model.safetensors"))
    mixed = {k: (ws[k] if f".layers.{layer}." in k else wb[k]) for k in wb}
    assert any(not torch.equal(mixed[k], wb[k]) for k in wb)
    save_file(mixed, str(sft / "model.safetensors"), metadata={"format": "pt"})
    return base, sft


def texts(n: int, first: int = 0) -> list[str]:
    """n deterministic physics-like texts of varied length (about 10 to 150 tokens)."""
    lines = corpus_lines()
    return [" ".join(lines[(first + i) * 11:(first + i) * 11 + 1 + (i * 5) % 9])
            for i in range(n)]


def prompts(n: int, first: int = 0, id0: int = 1000) -> pd.DataFrame:
    return pd.DataFrame({
        "post_id": range(id0, id0 + n), "site": "physics.test",
        "grp": ["low" if i % 2 else "high" for i in range(n)],
        "text": texts(n, first)})


def read(out_dir: Path, table: str) -> pd.DataFrame:
    files = sorted((out_dir / "behaviour" / table).glob("*.parquet"))
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


class Reference:
    """An independent scorer: one post at a time, the model's own full logits."""

    def __init__(self, folder: Path):
        from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

        self.tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
        self.model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=torch.float32, attn_implementation="eager").eval()
        self.eos = self.tok.convert_tokens_to_ids("<|endoftext|>")

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def logprobs(self, inputs: list[int]) -> torch.Tensor:
        """log p(inputs[j+1] | inputs[:j+1]) for j = 0 .. len - 2, fp32."""
        x = torch.tensor([inputs])
        logits = self.model(input_ids=x).logits[0].float()  # (T, V)
        lp = torch.log_softmax(logits, -1)[:-1]
        return lp.gather(1, x[0, 1:, None])[:, 0]

    def post(self, text: str) -> torch.Tensor:
        return self.logprobs([self.eos, *self.ids(text)])
