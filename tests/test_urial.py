"""URIAL's protocol (compute.behaviour.urial) on the shipped demo pair against a
hand-rolled reference: a greedy loop of plain SFT forward passes (argmax of the last
logits, no `generate`), then one plain forward of the base on prompt + answer, the
rank of each generated token among the base's logits counted directly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from compute.behaviour import urial
from compute.behaviour.scoring import load_model, load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo"
QUESTIONS = ["How does a lens focus light onto a point?",
             "Why do heavier objects not fall faster in a vacuum?"]


@pytest.fixture(scope="module")
def models():
    cpu = torch.device("cpu")
    base = load_model(DEMO / "base", cpu, torch.float32, "sdpa")
    sft = load_model(DEMO / "sft", cpu, torch.float32, "sdpa")
    return base, sft, load_tokenizer(DEMO / "sft")


def by_hand(base, sft, prompt: list[int], max_new: int, stops: list[int]):
    """(answer ids, base rank of each, KL(p_sft || p_base) of each), plainly."""
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(max_new):
            nxt = int(sft(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
            if nxt in stops:
                break
        answer = ids[len(prompt):]
        seq = torch.tensor([ids])
        lb = torch.log_softmax(base(input_ids=seq).logits[0].double(), -1)
        ls = torch.log_softmax(sft(input_ids=seq).logits[0].double(), -1)
    ranks, kls = [], []
    for j, tok in enumerate(answer):
        row = len(prompt) - 1 + j  # the logits that predict answer[j]
        ranks.append(1 + int((lb[row] > lb[row, tok]).sum()))
        kls.append(float((ls[row].exp() * (ls[row] - lb[row])).sum()))
    return answer, ranks, kls


def test_generated_tokens_classes_and_kl_against_a_plain_loop(models):
    """The answer is the plain greedy loop's, each token's class is URIAL's class of
    its rank among the base's logits, KL to 1e-4, positions 0..n-1 in the table."""
    base, sft, tok = models
    stops = urial.stop_ids(tok)
    answers = urial.run_urial(base, sft, tok, list(enumerate(QUESTIONS)), 24,
                              torch.device("cpu"), progress=False)
    assert len(answers) == len(QUESTIONS)
    table = urial.rows(answers, "r", "demo").to_pandas()
    seen = set()
    for a in answers:
        answer, ranks, kls = by_hand(base, sft, a.prompt, 24, stops)
        assert a.answer == answer
        got = table[table["post_id"] == a.post_id].sort_values("position")
        assert got["position"].tolist() == list(range(len(answer)))
        assert got["rank_in_base"].tolist() == ranks
        assert got["shift_class"].tolist() == [
            "unshifted" if r == 1 else "marginal" if r <= 3 else "shifted"
            for r in ranks]
        np.testing.assert_allclose(got["kl_sft_base"], kls, atol=1e-4)
        seen |= set(got["shift_class"])
    assert (table["mode"] == "generated").all()
    assert len(seen) >= 2  # the demo pair's answers are not all one class


def test_chat_prompt_is_the_demo_format(models):
    """Without a chat_template the demo's ChatML turn: EOS, user turn, assistant
    header; the stop ids are <|im_end|> and EOS."""
    _, _, tok = models
    ids = urial.chat_ids(tok, "Q?")
    assert tok.decode(ids) == "<|endoftext|><|im_start|>user\nQ?<|im_end|>\n" \
        "<|im_start|>assistant\n"
    assert urial.stop_ids(tok) == [tok.get_vocab()["<|im_end|>"], tok.eos_token_id]


def test_command_writes_the_generated_mode_apart(tmp_path):
    """python -m compute.urial writes OUT/<pair>/urial/generated.parquet, nothing
    into the teacher-forced tables' folders."""
    from compute.run.urial import main

    prompts = tmp_path / "p.parquet"
    pd.DataFrame({"post_id": [1, 2], "site": "s", "grp": ["low", "high"],
                  "text": QUESTIONS}).to_parquet(prompts)
    assert main(["--base", str(DEMO / "base"), "--sft", str(DEMO / "sft"), "--name",
                 "demo", "--prompts", str(prompts), "--generate", "1",
                 "--max-new-tokens", "8", "--out", str(tmp_path / "runs"),
                 "--device", "cpu", "--dtype", "float32", "--no-progress",
                 "--no-load"]) == 0
    out = pd.read_parquet(tmp_path / "runs" / "demo" / "urial" / "generated.parquet")
    assert out["post_id"].nunique() == 1 and 1 <= len(out) <= 8  # --generate 1
    assert sorted(p.name for p in (tmp_path / "runs" / "demo").iterdir()) == ["urial"]


@pytest.mark.slow
def test_load_and_mart_against_pandas(tmp_path):
    """Rows of three answers load into raw.generated_token_shift (twice: replaced,
    not duplicated), nothing into the teacher-forced raw.token_shift; the mart's
    shares equal pandas' over the tokens, its interval SciPy's t interval over the
    answers' shifted shares."""
    from scipy import stats

    from ingest.generated import load
    from tests.conftest import query, run_dbt

    rng = np.random.default_rng(3)
    answers = []
    for post_id, n in ((1, 20), (2, 7), (3, 30)):
        ranks = rng.choice([1, 1, 1, 2, 3, 5, 40], size=n)
        answers.append(urial.Answer(post_id, [0], list(range(n)), {
            "rank_sft_top_in_base": ranks,
            **{k: rng.random(n) for k in ("logprob_base", "logprob_sft",
                                          "kl_sft_base", "kl_base_sft",
                                          "entropy_base", "entropy_sft")}}))
    table = urial.rows(answers, "r1", "demo")
    path = urial.write(table, tmp_path / "runs" / "demo")
    db = tmp_path / "w.duckdb"
    assert load(path, db) == load(path, db) == {"generated_token_shift": 57}
    assert query(db, "select count(*) from raw.token_shift")[0][0] == 0
    run_dbt(db, "build", "--quiet", "--select", "+fct_generated_token_shift")
    df = table.to_pandas()
    got = dict(zip(["n", "shifted", "marginal", "kl", "lo", "hi"], query(db, """
        select n_tokens, shifted_share, marginal_share, mean_kl_sft_base,
               shifted_share_lo95, shifted_share_hi95
        from marts.fct_generated_token_shift where position_bucket = 'all'""")[0],
        strict=True))
    assert got["n"] == 57
    assert got["shifted"] == pytest.approx((df["rank_in_base"] > 3).mean())
    assert got["marginal"] == pytest.approx(df["rank_in_base"].between(2, 3).mean())
    assert got["kl"] == pytest.approx(df["kl_sft_base"].mean())
    per = df.groupby("post_id")["shift_class"].apply(lambda c: (c == "shifted").mean())
    lo, hi = stats.t.interval(0.95, len(per) - 1, loc=per.mean(), scale=stats.sem(per))
    assert (got["lo"], got["hi"]) == pytest.approx((lo, hi), rel=1e-6)


def test_batched_generation_equals_one_at_a_time(models):
    """Five questions of different lengths answered in one left-padded `generate`
    (and in batches of 2, one batch ragged) give the same tokens as each question
    answered alone, the plain greedy loop's; the scored rows are then identical."""
    base, sft, tok = models
    stops = urial.stop_ids(tok)
    questions = [*QUESTIONS, "Why?", "What is the boiling point of water at the top "
                 "of a high mountain, and why is it lower there?", "Is glass a liquid?"]
    prompts = [urial.chat_ids(tok, q) for q in questions]
    assert len({len(p) for p in prompts}) == len(prompts)  # padding really differs
    cpu = torch.device("cpu")
    alone = [urial.generate(sft, p, 20, stops, cpu) for p in prompts]
    assert [by_hand(base, sft, p, 20, stops)[0] for p in prompts[:2]] == alone[:2]
    assert urial.generate_batch(sft, prompts, 20, stops, cpu) == alone
    posts = list(enumerate(questions))
    one = urial.run_urial(base, sft, tok, posts, 20, cpu, progress=False)
    two = urial.run_urial(base, sft, tok, posts, 20, cpu, progress=False,
                          batch_size=2)
    assert [a.answer for a in one] == [a.answer for a in two] == [
        a for a in alone if a]
    assert urial.rows(one, "r", "demo").equals(urial.rows(two, "r", "demo"))
