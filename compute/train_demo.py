"""Train the demo pair: a tiny Qwen2 base pretrained on Stack Exchange text, and its
fully fine-tuned SFT sibling on question -> answer pairs in a chat format.

    python -m compute.train_demo --out models/demo          # what the repo ships
    python -m compute.train_demo --out /tmp/d --quick       # a small, short run

The corpus is what the repository ships: the real dump samples under
samples/stackexchange/ (CC BY-SA; attribution in SOURCES.md) and the generated demo
site (ingest.demo_site), parsed by the project's own ingest code (ingest.se_parse,
body text by ingest.se_text). Threads (a question and its answers) are split by a
hash of (site, question id): one in ten is held out of both trainings.

1. A byte-level BPE tokenizer (compute.demo.train_tokenizer) on the training posts.
2. Base: Qwen2ForCausalLM from a seeded random init, trained on the training posts,
   each behind `<|endoftext|>` (as compute.behaviour scores them), packed into
   blocks of `seq_len` tokens; AdamW, warmup then cosine decay.
3. SFT: a copy of the base, every weight trained (full fine-tuning) on

       <|endoftext|><|im_start|>user
       {title}

       {question}<|im_end|>
       <|im_start|>assistant
       {answer}<|im_end|>

   with the loss on the answer tokens only; the answer is the accepted one, else the
   highest-scored answer with a score >= 1.

OUT gets base/ and sft/ (config.json, model.safetensors in bf16, tokenizer files),
training_log.csv (one row per role and step: loss, held-out losses, lr, tokens seen)
and train.json (the configuration, corpus counts, timings, held-out perplexities and
the sha256 of every file). Written to OUT.tmp, then renamed. Deterministic for a
configuration, a torch build and a thread count (torch.use_deterministic_algorithms).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from compute.demo import PairSpec, qwen2_config, save_tokenizer, train_tokenizer

if TYPE_CHECKING:
    import torch

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "stackexchange"
DEMO_SITE = "physics.demo"
EOS, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
LOG_COLUMNS = ("role", "step", "epoch", "tokens_seen", "lr", "train_loss",
               "heldout_post_loss", "heldout_answer_loss", "seconds")


@dataclasses.dataclass
class TrainConfig:
    out: Path = Path("models/demo")
    seed: int = 19
    vocab: int = 2048
    hidden: int = 128
    intermediate: int = 384
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    seq_len: int = 512
    batch: int = 16            # sequences per step
    pretrain_epochs: float = 1.5
    pretrain_lr: float = 3e-3
    sft_epochs: float = 2.0
    sft_lr: float = 1e-3
    warmup: int = 20           # steps of linear warmup, then cosine to lr / 10
    weight_decay: float = 0.1
    eval_every: int = 30       # steps between held-out evaluations
    eval_blocks: int = 32      # held-out post blocks per evaluation
    heldout_mod: int = 10      # one thread in heldout_mod is held out
    threads: int = 1           # one: faster per CPU second, and bit-reproducible
    max_posts: int | None = None  # use only the first N posts per site (quick runs)
    progress: bool = True

    def spec(self) -> PairSpec:
        """The shape as compute.demo's PairSpec (for its Qwen2 config writer)."""
        return PairSpec(hidden=self.hidden, intermediate=self.intermediate,
                        layers=self.layers, heads=self.heads, kv_heads=self.kv_heads,
                        vocab=self.vocab, max_positions=self.seq_len)


QUICK = dict(vocab=512, hidden=64, intermediate=128, layers=2, seq_len=128, batch=8,
             pretrain_epochs=1.0, sft_epochs=1.0, eval_every=10, eval_blocks=8,
             max_posts=150, warmup=5)


# ------------------------------------------------------------------ corpus

@dataclasses.dataclass(frozen=True)
class Post:
    site: str
    id: int
    thread: int  # the question's id
    is_question: bool
    title: str
    text: str
    score: int
    accepted_answer_id: int | None

    @property
    def document(self) -> str:
        """The post as pretraining text: a question's title, a blank line, its body."""
        return f"{self.title}\n\n{self.text}" if self.is_question else self.text


def heldout(site: str, thread: int, mod: int) -> bool:
    return zlib.crc32(f"{site}:{thread}".encode()) % mod == 0


def read_posts(path: Path, site: str, max_posts: int | None = None) -> list[Post]:
    """Questions and answers of one Posts.xml, parsed by the ingest's own code."""
    from ingest.se_parse import RowSplitter, parse_chunk

    def blocks() -> Iterator[bytes]:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                yield block

    splitter = RowSplitter(str(path), blocks())
    if splitter.root != "posts":
        raise ValueError(f"{path}: root <{splitter.root}>, not a Posts.xml")
    out: list[Post] = []
    for data, first_line in splitter.chunks(4 << 20):
        table, _ = parse_chunk("se_posts", str(path), data, first_line,
                               skip_bad_rows=True)
        for r in table.select(["id", "post_type_id", "parent_id", "title", "body_text",
                               "score", "accepted_answer_id"]).to_pylist():
            kind = r["post_type_id"]
            if kind not in (1, 2) or not (r["body_text"] or "").strip():
                continue
            thread = r["id"] if kind == 1 else r["parent_id"]
            if thread is None:
                continue
            out.append(Post(site, r["id"], thread, kind == 1, r["title"] or "",
                            r["body_text"], r["score"] or 0, r["accepted_answer_id"]))
    return out[:max_posts] if max_posts else out


def corpus_files(samples: Path = SAMPLES) -> list[tuple[str, Path]]:
    """(site, Posts.xml) of every sample folder: the folder's name is the site."""
    files = sorted(p for p in samples.glob("*/*.xml") if p.name.lower() == "posts.xml")
    if not files:
        raise FileNotFoundError(f"no */Posts.xml under {samples}")
    return [(p.parent.name, p) for p in files]


def load_corpus(max_posts: int | None = None) -> list[Post]:
    """Every sample site's posts, then the demo site's (generated in a temp folder)."""
    from ingest.demo_site import generate

    posts: list[Post] = []
    for site, path in corpus_files():
        posts += read_posts(path, site, max_posts)
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp)
        posts += [p for p in read_posts(Path(tmp) / "Posts.xml", DEMO_SITE, max_posts)
                  if p.id < 1_000_000_000]  # not the dump's two fabricated rows
    return posts


def qa_pairs(posts: list[Post]) -> list[tuple[Post, Post]]:
    """(question, answer): the accepted answer, else the best with score >= 1."""
    answers: dict[tuple[str, int], list[Post]] = {}
    for p in posts:
        if not p.is_question:
            answers.setdefault((p.site, p.thread), []).append(p)
    pairs = []
    for q in (p for p in posts if p.is_question):
        cands = answers.get((q.site, q.id), [])
        best = next((a for a in cands if a.id == q.accepted_answer_id), None)
        if best is None and cands:
            top = max(cands, key=lambda a: (a.score, -a.id))
            best = top if top.score >= 1 else None
        if best is not None:
            pairs.append((q, best))
    return pairs


def chat_prompt(question: Post) -> str:
    """The user turn and the assistant header: what the answer follows."""
    return (f"{EOS}{IM_START}user\n{question.title}\n\n{question.text}{IM_END}\n"
            f"{IM_START}assistant\n")


def encode_pair(tok, question: Post, answer: Post, seq_len: int) -> tuple[list, int]:
    """(ids, n_prompt): the chat text's ids, the question cut so that the prompt takes
    at most half of `seq_len`, the whole cut to `seq_len`."""
    head = tok.encode(f"{EOS}{IM_START}user\n{question.title}\n\n{question.text}").ids
    tail = tok.encode(f"{IM_END}\n{IM_START}assistant\n").ids
    prompt = head[: max(seq_len // 2 - len(tail), 1)] + tail
    reply = tok.encode(f"{answer.text}{IM_END}").ids
    return (prompt + reply)[:seq_len], len(prompt)


# ------------------------------------------------------------------ batches

def pack(docs: list[list[int]], seq_len: int) -> torch.Tensor:
    """Documents' ids end to end, cut into rows of seq_len: (n_blocks, seq_len)."""
    import torch

    flat = [t for d in docs for t in d]
    n = len(flat) // seq_len
    return torch.tensor(flat[: n * seq_len], dtype=torch.long).view(n, seq_len)


def pad_pairs(encoded: list[tuple[list, int]], pad: int) -> tuple[torch.Tensor, ...]:
    """(ids, attention mask, labels) of chat pairs, right-padded; labels -100 outside
    the answers."""
    import torch

    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (row, n_prompt) in enumerate(encoded):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, n_prompt: len(row)] = ids[i, n_prompt: len(row)]
    return ids, mask, labels


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(total - warmup, 1)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


# ------------------------------------------------------------------ evaluation

def mean_nll(model, batches) -> float:
    """Mean negative log-likelihood per scored token over (ids, mask, labels)."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.inference_mode():
        for ids, mask, labels in batches:
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            target = labels[:, 1:]
            nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                  target.reshape(-1), ignore_index=-100,
                                  reduction="sum")
            total += float(nll)
            count += int((target != -100).sum())
    return total / max(count, 1)


def block_batches(blocks: torch.Tensor, batch: int):
    import torch

    for i in range(0, len(blocks), batch):
        ids = blocks[i: i + batch]
        yield ids, torch.ones_like(ids), ids


def pair_batches(encoded: list[tuple[list, int]], batch: int, pad: int):
    for i in range(0, len(encoded), batch):
        yield pad_pairs(encoded[i: i + batch], pad)


@dataclasses.dataclass
class Evaluator:
    post_blocks: torch.Tensor          # held-out posts, packed
    answers: list[tuple[list, int]]    # held-out chat pairs
    batch: int
    pad: int

    def __call__(self, model) -> tuple[float, float]:
        was = model.training
        model.eval()
        posts = mean_nll(model, block_batches(self.post_blocks, self.batch))
        answers = mean_nll(model, pair_batches(self.answers, self.batch, self.pad))
        model.train(was)
        return posts, answers


# ------------------------------------------------------------------ training

def train_phase(model, role: str, batches: list, epochs: float, cfg: TrainConfig,
                lr: float, evaluate: Evaluator, log: list[dict]) -> float:
    """AdamW over `batches` (each (ids, mask, labels)) for `epochs`, shuffled by a
    seeded generator; a log row per step, held-out losses every eval_every steps.
    Returns the seconds spent."""
    import torch
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(cfg.seed + (role == "sft"))
    total = max(1, round(epochs * len(batches)))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    model.train()
    t0, seen, order = time.perf_counter(), 0, []
    post_loss, answer_loss = evaluate(model)
    log.append(dict(role=role, step=0, epoch=0.0, tokens_seen=0, lr=0.0,
                    train_loss=None, heldout_post_loss=post_loss,
                    heldout_answer_loss=answer_loss, seconds=0.0))
    bar = tqdm(range(total), desc=f"{role} training", unit="step",
               disable=not cfg.progress, file=sys.stderr)
    for step in bar:
        if not order:
            order = torch.randperm(len(batches), generator=gen).tolist()
        ids, mask, labels = batches[order.pop()]
        rate = lr_at(step, total, lr, cfg.warmup)
        for group in opt.param_groups:
            group["lr"] = rate
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        seen += int(mask.sum())
        row = dict(role=role, step=step + 1, epoch=(step + 1) / len(batches),
                   tokens_seen=seen, lr=rate, train_loss=loss.item(),
                   heldout_post_loss=None, heldout_answer_loss=None,
                   seconds=time.perf_counter() - t0)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == total:
            row["heldout_post_loss"], row["heldout_answer_loss"] = evaluate(model)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}",
                            heldout=f"{row['heldout_post_loss']:.3f}")
        log.append(row)
    return time.perf_counter() - t0


def new_model(cfg: TrainConfig, eos_id: int):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(cfg.seed)
    conf = qwen2_config(cfg.spec(), eos_id)
    conf["torch_dtype"] = "float32"
    return Qwen2ForCausalLM(Qwen2Config(**conf)).float(), conf


def save_model(model, conf: dict, tok, folder: Path) -> None:
    """config.json, model.safetensors (bf16, as released checkpoints are), tokenizer."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    tensors = {n: t.detach().to(torch.bfloat16).contiguous()
               for n, t in model.state_dict().items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(conf | {"torch_dtype": "bfloat16"},
                                                   indent=2) + "\n")
    save_tokenizer(tok, folder)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_log(log: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_COLUMNS, lineterminator="\n")
        w.writeheader()
        for row in log:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else
                            "" if v is None else v) for k, v in row.items()})


def train(cfg: TrainConfig) -> dict:
    """The whole run; returns what train.json records."""
    import torch

    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    t_start = time.perf_counter()
    posts = load_corpus(cfg.max_posts)
    held = [p for p in posts if heldout(p.site, p.thread, cfg.heldout_mod)]
    kept = [p for p in posts if not heldout(p.site, p.thread, cfg.heldout_mod)]
    tok = train_tokenizer(cfg.vocab, [p.document for p in kept])
    eos_id, pad = tok.token_to_id(EOS), tok.token_to_id(EOS)

    def docs(ps: list[Post]) -> list[list[int]]:
        return [[eos_id, *e.ids] for e in tok.encode_batch([p.document for p in ps])]

    train_blocks = pack(docs(kept), cfg.seq_len)
    held_blocks = pack(docs(held), cfg.seq_len)[: cfg.eval_blocks]
    train_pairs = [encode_pair(tok, q, a, cfg.seq_len) for q, a in qa_pairs(kept)]
    held_pairs = [encode_pair(tok, q, a, cfg.seq_len) for q, a in qa_pairs(held)]
    if not len(train_blocks) or not held_pairs or not len(held_blocks):
        raise ValueError(f"corpus too small: {len(train_blocks)} training blocks, "
                         f"{len(held_blocks)} held-out blocks, {len(held_pairs)} "
                         "held-out question/answer pairs")
    evaluate = Evaluator(held_blocks, held_pairs, cfg.batch, pad)
    print(f"corpus: {len(posts)} posts ({len(held)} held out), "
          f"{train_blocks.numel()} training tokens, {len(train_pairs)} + "
          f"{len(held_pairs)} question/answer pairs; tokenizer {tok.get_vocab_size()}",
          file=sys.stderr)

    model, conf = new_model(cfg, eos_id)
    log: list[dict] = []
    shuffled = train_blocks[torch.randperm(len(train_blocks), generator=torch.Generator()
                                           .manual_seed(cfg.seed))]
    pre_batches = [(b, torch.ones_like(b), b) for b in shuffled.split(cfg.batch)]
    t_pre = train_phase(model, "base", pre_batches, cfg.pretrain_epochs, cfg,
                        cfg.pretrain_lr, evaluate, log)
    # The SFT copy starts from the base exactly as it is saved (bf16 values).
    base_state = {n: t.to(torch.bfloat16).float() for n, t in model.state_dict().items()}
    model.load_state_dict(base_state)
    base_eval = evaluate(model)
    # batches of similar lengths (less padding); train_phase shuffles their order
    by_length = sorted(train_pairs, key=lambda e: len(e[0]))
    sft_batches = list(pair_batches(by_length, cfg.batch, pad))
    t_sft = train_phase(model, "sft", sft_batches, cfg.sft_epochs, cfg, cfg.sft_lr,
                        evaluate, log)
    sft_state = {n: t.to(torch.bfloat16).float() for n, t in model.state_dict().items()}
    model.load_state_dict(sft_state)
    sft_eval = evaluate(model)

    tmp = cfg.out.with_name(cfg.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.load_state_dict(base_state)
    save_model(model, conf, tok, tmp / "base")
    model.load_state_dict(sft_state)
    save_model(model, conf, tok, tmp / "sft")
    write_log(log, tmp / "training_log.csv")
    summary = {
        "config": {k: (str(v) if isinstance(v, Path) else v)
                   for k, v in dataclasses.asdict(cfg).items()
                   if k not in ("out", "progress")},
        "torch": torch.__version__,
        "corpus": {
            "sites": sorted({p.site for p in posts}),
            "posts": len(posts), "heldout_posts": len(held),
            "training_tokens": train_blocks.numel(),
            "heldout_eval_tokens": held_blocks.numel(),
            "qa_pairs": len(train_pairs), "heldout_qa_pairs": len(held_pairs),
            "vocab": tok.get_vocab_size(),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "seconds": {"pretrain": round(t_pre, 1), "sft": round(t_sft, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
        # held-out perplexities of the saved (bf16) weights
        "heldout": {
            "base_post_ppl": math.exp(base_eval[0]),
            "sft_post_ppl": math.exp(sft_eval[0]),
            "base_answer_ppl": math.exp(base_eval[1]),
            "sft_answer_ppl": math.exp(sft_eval[1]),
        },
    }
    summary["sha256"] = {str(p.relative_to(tmp)): sha256(p)
                         for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / "train.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_card(tmp, summary)
    shutil.rmtree(cfg.out, ignore_errors=True)
    os.replace(tmp, cfg.out)
    return summary


def write_card(out: Path, summary: dict) -> None:
    """README.md beside the pair: what it is, where its text came from, its figures."""
    c, corpus, h = summary["config"], summary["corpus"], summary["heldout"]
    sites = ", ".join(corpus["sites"])
    (out / "README.md").write_text(f"""# The sftscope demo pair (trained)

`base/`: a Qwen2-architecture model ({corpus['parameters']:,} parameters, {c['layers']}
layers, hidden {c['hidden']}, vocabulary {corpus['vocab']}, context {c['seq_len']})
pretrained from random weights on {corpus['training_tokens']:,} tokens of Stack
Exchange posts. `sft/`: a copy of it, every weight fine-tuned on
{corpus['qa_pairs']} question -> answer pairs in a chat format. Both are stored in
bf16. Made by `python -m compute.train_demo --out models/demo` (seed {c['seed']},
{c['threads']} thread(s), torch {summary['torch']}): `train.json` holds the
configuration, the timings and the sha256 of every file, `training_log.csv` the loss
curves.

Held-out perplexity per token (threads the training never saw):

| | base | SFT |
|---|---|---|
| posts, raw text | {h['base_post_ppl']:.1f} | {h['sft_post_ppl']:.1f} |
| answers, chat format | {h['base_answer_ppl']:.1f} | {h['sft_answer_ppl']:.1f} |

The text: {sites}. All but `physics.demo` (generated by `ingest.demo_site`) are
real Stack Exchange content under CC BY-SA (see `samples/stackexchange/SOURCES.md`
for the origin and the licence of each file; attribution: the Stack Exchange network
and each post's author); weights trained on it are shared on the same terms.
""")


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    ap = argparse.ArgumentParser(prog="python -m compute.train_demo",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=TrainConfig.out,
                    help="output folder (default models/demo: the shipped pair)")
    ap.add_argument("--quick", action="store_true",
                    help="a small model on 150 posts per site, one epoch each "
                    "(seconds; for tests and trying the script)")
    ap.add_argument("--seed", type=int, default=TrainConfig.seed)
    ap.add_argument("--threads", type=int, default=TrainConfig.threads,
                    help="torch threads (the result depends on it, bit for bit)")
    ap.add_argument("--pretrain-epochs", type=float)
    ap.add_argument("--sft-epochs", type=float)
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    a = ap.parse_args(argv)
    cfg = TrainConfig(out=a.out, seed=a.seed, threads=a.threads, progress=a.progress,
                      **(QUICK if a.quick else {}))
    if a.pretrain_epochs is not None:
        cfg.pretrain_epochs = a.pretrain_epochs
    if a.sft_epochs is not None:
        cfg.sft_epochs = a.sft_epochs
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    summary = train(cfg)
    h = summary["heldout"]
    print(f"{cfg.out}: base and sft in {summary['seconds']['total']:.0f} s; held-out "
          f"perplexity on posts base {h['base_post_ppl']:.1f}, sft "
          f"{h['sft_post_ppl']:.1f}; on chat answers base {h['base_answer_ppl']:.1f}, "
          f"sft {h['sft_answer_ppl']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
