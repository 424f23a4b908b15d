"""The trained demo pair: the training script learns, and the shipped pair (models/demo)
is what its train.json says and shows what the docs claim.

The shipped pair is scored here with a plain transformers forward pass (not the
training code's evaluator): held-out posts as raw text behind `<|endoftext|>`, and
held-out question -> answer pairs in the chat format, loss on the answer tokens.
The bounds are properties (far below the vocabulary size, SFT better than the base
on answers), not the figures of one run.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
from pathlib import Path

import pytest

from compute.fixtures import train_demo as td

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "demo"
SUMMARY = json.loads((SHIPPED / "train.json").read_text())
HELD = SUMMARY["config"]["heldout_mod"]

TINY = td.TrainConfig(vocab=320, hidden=32, intermediate=64, layers=1, heads=2,
                      kv_heads=1, seq_len=64, batch=8, pretrain_epochs=1.0,
                      sft_epochs=2.0, pretrain_lr=5e-3, sft_lr=2e-3, warmup=3,
                      eval_every=1000, eval_blocks=8, max_posts=40, progress=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "pair"
    td.train(dataclasses.replace(TINY, out=out, save_every=3))
    return out


def log_rows(path: Path) -> list[dict]:
    with open(path / "training_log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_training_lowers_losses(tiny_run):
    rows = log_rows(tiny_run)
    for role in ("base", "sft"):
        steps = [r for r in rows if r["role"] == role]
        evals = [r for r in steps if r["heldout_post_loss"]]
        assert [int(r["step"]) for r in steps] == list(range(len(steps)))
        assert len(evals) == 2, "evaluated before the first and after the last step"
        first, last = evals[0], evals[-1]
        if role == "base":  # from random weights: ln(vocab) down to well below it
            assert float(first["heldout_post_loss"]) > math.log(TINY.vocab) - 0.3
            assert float(last["heldout_post_loss"]) < float(
                first["heldout_post_loss"]) - 0.5
            batch = [float(r["train_loss"]) for r in steps[1:]]
            assert sum(batch[-5:]) / 5 < sum(batch[:5]) / 5 - 0.5
        else:  # fine-tuning lowers the loss on held-out answers in the chat format
            assert float(last["heldout_answer_loss"]) < float(
                first["heldout_answer_loss"])
    # a normal checkpoint folder, bf16 like a release, files as recorded
    summary = json.loads((tiny_run / "train.json").read_text())
    for rel, digest in summary["sha256"].items():
        assert hashlib.sha256((tiny_run / rel).read_bytes()).hexdigest() == digest
    config = json.loads((tiny_run / "base" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["torch_dtype"] == "bfloat16"


def test_sft_checkpoints_every_n_steps_as_a_trainer_writes_them(tiny_run):
    """--save-every 3: checkpoint-3, -6, ... and the last step's, which is the SFT
    byte for byte; trainer_state.json's tokens and loss are the log's."""
    rows = [r for r in log_rows(tiny_run) if r["role"] == "sft"]
    last = int(rows[-1]["step"])
    want = sorted({*range(3, last + 1, 3), last})
    folders = sorted((tiny_run / "checkpoints").iterdir(),
                     key=lambda f: int(f.name.split("-")[1]))
    assert [f.name for f in folders] == [f"checkpoint-{s}" for s in want]
    assert (folders[-1] / "model.safetensors").read_bytes() == (
        tiny_run / "sft" / "model.safetensors").read_bytes()
    middle = (folders[0] / "model.safetensors").read_bytes()
    assert middle not in {(tiny_run / r / "model.safetensors").read_bytes()
                          for r in ("base", "sft")}
    state = json.loads((folders[0] / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and len(state["log_history"]) == 3
    at = state["log_history"][-1]
    assert at["num_input_tokens_seen"] == int(rows[3]["tokens_seen"])
    assert at["loss"] == pytest.approx(float(rows[3]["train_loss"]), rel=1e-5)


def test_own_seed_rerun_with_checkpoints_is_the_series_of_the_pair(tiny_run, tmp_path):
    """compute.train_seed with the pair's own seed and --save-every: the re-run's
    checkpoints are the first training's checkpoints byte for byte (so shipped
    checkpoints made later are that fine-tune's), steps.toml ends at the pair's own
    sft/, and no copy of it is written; a pair whose sft/ the re-run does not
    reproduce is refused with nothing written."""
    from compute.fixtures.train_seed import SeedConfig, train_seed
    from compute.run.trajectory import parse_series

    out = tmp_path / "steps"
    train_seed(SeedConfig(tiny_run, TINY.seed, out, False, save_every=3))
    def names(folder: Path) -> list[str]:
        return sorted((p.name for p in folder.iterdir()),
                      key=lambda f: int(f.split("-")[1]))

    kept = names(out / "checkpoints")
    assert len(kept) >= 2 and kept == names(tiny_run / "checkpoints")[:-1]
    for name in kept:
        for f in ("model.safetensors", "trainer_state.json"):
            assert (out / "checkpoints" / name / f).read_bytes() == (
                tiny_run / "checkpoints" / name / f).read_bytes(), (name, f)
    assert not (out / "sft").exists()
    steps = parse_series(str(out / "steps.toml"))
    assert Path(steps[-1].model).resolve() == (tiny_run / "sft").resolve()
    rows = [r for r in log_rows(tiny_run) if r["role"] == "sft"]
    assert steps[-1].step == int(rows[-1]["step"])
    assert steps[-1].tokens_seen == int(rows[-1]["tokens_seen"])
    assert [s.tokens_seen for s in steps] == sorted(s.tokens_seen for s in steps)
    summary = json.loads((out / "train.json").read_text())
    assert "checkpoints/" + kept[0] + "/model.safetensors" in summary["sha256"]

    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    (other / "sft" / "model.safetensors").write_bytes(
        (other / "base" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="did not reproduce"):
        train_seed(SeedConfig(other, TINY.seed, tmp_path / "no", False, save_every=3))
    assert not (tmp_path / "no").exists()


def test_shipped_files_are_the_recorded_ones():
    """Every file the script wrote, byte for byte (train.json records its sha256)."""
    assert set(SUMMARY["sha256"]) >= {f"{r}/{f}" for r in ("base", "sft") for f in (
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")}
    for rel, digest in SUMMARY["sha256"].items():
        assert hashlib.sha256((SHIPPED / rel).read_bytes()).hexdigest() == digest, rel


# ------------------------------------------------------------ the shipped pair

@pytest.fixture(scope="module")
def shipped():
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    torch.set_num_threads(1)
    tok = PreTrainedTokenizerFast.from_pretrained(SHIPPED / "base")
    models = {role: AutoModelForCausalLM.from_pretrained(
        SHIPPED / role, dtype=torch.float32).eval() for role in ("base", "sft")}
    posts = td.load_corpus()
    held = [p for p in posts if td.heldout(p.site, p.thread, HELD)]
    return tok, models, held


def nll(model, ids: list[int], first: int) -> tuple[float, int]:
    """Sum of -log p(ids[t] | ids[:t]) for t >= first, in fp32 from the logits."""
    import torch

    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    target = torch.tensor(ids[1:])
    picked = logp[torch.arange(len(target)), target][first - 1:]
    return -float(picked.sum()), len(picked)


def test_shipped_base_perplexity_on_heldout_posts(shipped):
    tok, models, held = shipped
    seq = SUMMARY["config"]["seq_len"]
    total = {"base": [0.0, 0], "sft": [0.0, 0]}
    for post in held[::3]:
        ids = [tok.convert_tokens_to_ids(td.EOS)] + tok(post.document)["input_ids"]
        for role, model in models.items():
            s, n = nll(model, ids[:seq], 1)
            total[role][0] += s
            total[role][1] += n
    ppl = {r: math.exp(s / n) for r, (s, n) in total.items()}
    vocab = len(tok)
    assert vocab >= 1024
    # far below the vocabulary size: the base learned the text (a uniform guess is
    # `vocab`; the planted pair's random weights sit near it)
    assert ppl["base"] < 300 < vocab / 3
    # the SFT model is another model on raw posts, but not a broken one
    assert abs(math.log(ppl["sft"] / ppl["base"])) > 0.01
    assert ppl["sft"] < 2 * ppl["base"]


def test_shipped_sft_beats_base_on_heldout_answers(shipped):
    tok, models, held = shipped
    seq = SUMMARY["config"]["seq_len"]
    pairs = td.qa_pairs(held)
    assert len(pairs) >= 50
    total = {"base": [0.0, 0], "sft": [0.0, 0]}
    wins = 0
    for q, a in pairs[::2]:
        # the question cut so that the prompt takes at most half the context, the
        # assistant header kept (as in training)
        head = tok(f"{td.EOS}{td.IM_START}user\n{q.title}\n\n{q.text}")["input_ids"]
        tail = tok(f"{td.IM_END}\n{td.IM_START}assistant\n")["input_ids"]
        prompt = head[: seq // 2 - len(tail)] + tail
        reply = tok(a.text + td.IM_END)["input_ids"]
        ids = (prompt + reply)[:seq]
        per = {}
        for role, model in models.items():
            s, n = nll(model, ids, len(prompt))
            total[role][0] += s
            total[role][1] += n
            per[role] = s
        wins += per["sft"] < per["base"]
    ppl = {r: math.exp(s / n) for r, (s, n) in total.items()}
    assert ppl["sft"] < 0.9 * ppl["base"]
    assert wins > 0.7 * len(pairs[::2])


def test_training_threads_seed_is_the_split():
    """models/demo/training_threads.csv lists exactly the threads of the
    corpus the shipped pair's split trained on (crc32("site:thread") % heldout_mod,
    recomputed here with zlib), so the warehouse's in_training and the held-out
    prompt choice are the pair's; the demo site's threads past its first 40 are all
    held out, and the first 40 are the pair's training text unchanged."""
    import zlib

    posts = td.load_corpus()
    want = sorted({(p.site, p.thread) for p in posts
                   if zlib.crc32(f"{p.site}:{p.thread}".encode()) % HELD})
    with open(SHIPPED / "training_threads.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["site"], int(r["thread_id"])) for r in rows] == want
    demo = [p for p in posts if p.site == "physics.demo"]
    later = {p.thread for p in demo if p.thread > 160}
    assert len(later) == 24
    assert all(zlib.crc32(f"physics.demo:{t}".encode()) % HELD == 0 for t in later)
    assert SUMMARY["corpus"]["posts"] == len(posts) - 4 * len(later)
