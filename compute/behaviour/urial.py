"""URIAL's token shift on the fine-tuned model's own answers (Lin et al. 2023).

    python -m compute.urial --pair demo --generate 20 --max-new-tokens 64
    python -m compute.urial --base A --sft B --name N --prompts p.parquet --generate 50
    python -m compute.urial --pair demo --generate 64 --batch-size 16

For each of the first N prompts (question posts first), the SFT model answers the
post's text as the user turn of its chat template (the tokenizer's `chat_template`;
without one, ChatML when the vocabulary has `<|im_start|>` / `<|im_end|>`, the demo
pair's format), greedily, up to `--max-new-tokens` tokens or its end-of-turn token,
`--batch-size` prompts per `generate` (left-padded, the padding masked).
Both models then read the same sequence (prompt + answer), and at each generated
token t the base's rank eta_t of the SFT's chosen token gives URIAL's classes:
unshifted (eta = 1), marginal (2-3), shifted (> 3); with KL both ways and both
entropies from the same next-token distributions (compute.behaviour.scoring.
token_stats), and the position in the answer.

This is a different quantity from the teacher-forced shift on human posts that
compute.run stores (raw.token_shift): the rows here carry `mode = 'generated'` and
go to their own file, OUT/<pair>/urial/generated.parquet (temporary name, then
renamed); they are not loaded into the warehouse yet.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from compute.behaviour.scoring import forward, token_stats

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SCHEMA = pa.schema([
    ("run_id", pa.string()), ("pair", pa.string()), ("mode", pa.string()),
    ("post_id", pa.int64()), ("position", pa.int32()), ("n_generated", pa.int32()),
    ("token_id", pa.int64()), ("logprob_base", pa.float64()),
    ("logprob_sft", pa.float64()), ("kl_sft_base", pa.float64()),
    ("kl_base_sft", pa.float64()), ("entropy_base", pa.float64()),
    ("entropy_sft", pa.float64()), ("rank_in_base", pa.int64()),
    ("shift_class", pa.string()), ("position_bucket", pa.string())])


class UrialError(ValueError):
    """Input the protocol refuses (the message names it)."""


def shift_class(rank: int) -> str:
    """URIAL's classes of the base's rank of the SFT's token."""
    return "unshifted" if rank == 1 else "marginal" if rank <= 3 else "shifted"


def position_bucket(position: int) -> str:
    """The buckets of the token-shift marts (dbt macro position_bucket)."""
    for hi, name in ((16, "0-15"), (64, "16-63"), (256, "64-255"),
                     (1024, "256-1023")):
        if position < hi:
            return name
    return "1024+"


def chat_ids(tok, question: str) -> list[int]:
    """The user turn `question` and the assistant header, in the SFT's template."""
    if getattr(tok, "chat_template", None):
        out = tok.apply_chat_template([{"role": "user", "content": question}],
                                      add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") \
            else out
        return [int(i) for i in ids]
    vocab = tok.get_vocab()
    if IM_START in vocab and IM_END in vocab:
        prefix = tok.eos_token or ""
        text = f"{prefix}{IM_START}user\n{question}{IM_END}\n{IM_START}assistant\n"
        return list(tok(text, add_special_tokens=False)["input_ids"])
    raise UrialError("the SFT tokenizer has no chat_template and no ChatML tokens: "
                     "URIAL's protocol needs the model's chat format")


def stop_ids(tok) -> list[int]:
    """End-of-turn ids: <|im_end|> when the vocabulary has it, and EOS."""
    vocab = tok.get_vocab()
    ids = [vocab[IM_END]] if IM_END in vocab else []
    if tok.eos_token_id is not None:
        ids.append(int(tok.eos_token_id))
    return ids


@torch.inference_mode()
def generate(sft, prompt: list[int], max_new: int, stops: list[int],
             device: torch.device) -> list[int]:
    """The SFT's greedy answer to `prompt` (its ids, the end-of-turn token
    included when reached)."""
    ids = torch.tensor([prompt], device=device)
    out = sft.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                       max_new_tokens=max_new, eos_token_id=stops or None,
                       pad_token_id=stops[0] if stops else 0, num_beams=1)
    return [int(i) for i in out[0, len(prompt):]]


@torch.inference_mode()
def generate_batch(sft, prompts: list[list[int]], max_new: int, stops: list[int],
                   device: torch.device) -> list[list[int]]:
    """The SFT's greedy answers to several prompts in one `generate`: the prompts
    left-padded to the longest, the padding masked out (attention_mask 0), each
    answer cut after its first end-of-turn token. The same tokens as `generate` on
    each prompt alone (tests/test_urial.py), up to float ties of the argmax."""
    if len(prompts) == 1:
        return [generate(sft, prompts[0], max_new, stops, device)]
    pad = stops[0] if stops else 0
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts],
                        device=device)
    out = sft.generate(ids, attention_mask=mask, do_sample=False,
                       max_new_tokens=max_new, eos_token_id=stops or None,
                       pad_token_id=pad, num_beams=1)
    answers = []
    for row in out[:, width:].tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t in stops), len(row))
        answers.append([int(t) for t in row[:cut]])
    return answers


@torch.inference_mode()
def score_answer(base, sft, prompt: list[int], answer: list[int],
                 device: torch.device) -> dict[str, np.ndarray]:
    """Per generated token: both log-probs, KL both ways, entropies, and the base's
    rank of the SFT's top token (= the generated one under greedy decoding)."""
    ids = torch.tensor([prompt + answer], device=device)
    mask = torch.ones_like(ids)
    at = torch.arange(len(prompt) - 1, len(prompt) + len(answer) - 1, device=device)
    hb = forward(base, ids, mask).hidden[-1][0, at]
    hs = forward(sft, ids, mask).hidden[-1][0, at]
    stats = token_stats(base, sft, hb, hs, ids[0, at + 1])
    return {k: v.cpu().numpy() for k, v in stats.items()}


@dataclasses.dataclass
class Answer:
    post_id: int
    prompt: list[int]
    answer: list[int]
    stats: dict[str, np.ndarray]


def rows(answers: list[Answer], run_id: str, pair: str) -> pa.Table:
    """One row per generated token, mode 'generated'."""
    out = []
    for a in answers:
        s = a.stats
        for j, token in enumerate(a.answer):
            rank = int(s["rank_sft_top_in_base"][j])
            out.append({
                "run_id": run_id, "pair": pair, "mode": "generated",
                "post_id": a.post_id, "position": j, "n_generated": len(a.answer),
                "token_id": token, "logprob_base": float(s["logprob_base"][j]),
                "logprob_sft": float(s["logprob_sft"][j]),
                "kl_sft_base": float(s["kl_sft_base"][j]),
                "kl_base_sft": float(s["kl_base_sft"][j]),
                "entropy_base": float(s["entropy_base"][j]),
                "entropy_sft": float(s["entropy_sft"][j]), "rank_in_base": rank,
                "shift_class": shift_class(rank),
                "position_bucket": position_bucket(j)})
    return pa.Table.from_pylist(out, schema=SCHEMA)


def run_urial(base, sft, tok, posts: list[tuple[int, str]], max_new: int,
              device: torch.device, progress: bool = True,
              batch_size: int = 1) -> list[Answer]:
    """Generate (batch_size prompts per `generate`, left-padded) and score each
    (post_id, question); answers in the order of `posts`, empty ones left out."""
    from tqdm import tqdm

    stops = stop_ids(tok)
    out = []
    with tqdm(total=len(posts), desc="urial", unit="answer", disable=not progress,
              dynamic_ncols=True) as bar:
        for i in range(0, len(posts), max(batch_size, 1)):
            chunk = posts[i:i + max(batch_size, 1)]
            prompts = [chat_ids(tok, question) for _, question in chunk]
            answers = generate_batch(sft, prompts, max_new, stops, device)
            for (post_id, _), prompt, answer in zip(chunk, prompts, answers,
                                                    strict=True):
                if answer:
                    out.append(Answer(post_id, prompt, answer,
                                      score_answer(base, sft, prompt, answer,
                                                   device)))
            bar.update(len(chunk))
    return out


def write(table: pa.Table, out_dir: Path) -> Path:
    """OUT/<pair>/urial/generated.parquet, written to a temporary name, renamed."""
    from compute.io.files import write_parquet

    path = out_dir / "urial" / "generated.parquet"
    write_parquet(table, path)
    return path
