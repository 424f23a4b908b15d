"""The prefix token the behaviour half scores behind, on tokenizers built here:
`<|endoftext|>` where both have it, else their shared BOS token, else a clear error."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from compute.behaviour.scoring import prefix_id


def tokenizer(vocab: list[str], **special) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose ids are the positions in `vocab`."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)},
                                     unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", **special)


def test_qwen_style_pair_uses_endoftext_even_with_a_bos():
    tok = tokenizer(["<unk>", "<s>", "<|endoftext|>", "a"], bos_token="<s>")
    assert prefix_id(tok, tok) == 2


def test_llama_style_pair_without_endoftext_uses_the_shared_bos():
    vocab = ["<unk>", "a", "<|begin_of_text|>"]
    base = tokenizer(vocab, bos_token="<|begin_of_text|>")
    sft = tokenizer([*vocab, "<|eot_id|>"], bos_token="<|begin_of_text|>")
    assert prefix_id(base, sft) == 2


def test_endoftext_with_different_ids_falls_back_to_the_bos():
    base = tokenizer(["<unk>", "<s>", "<|endoftext|>"], bos_token="<s>")
    sft = tokenizer(["<unk>", "<s>", "x", "<|endoftext|>"], bos_token="<s>")
    assert prefix_id(base, sft) == 1


def test_no_common_prefix_token_is_refused_naming_both():
    base = tokenizer(["<unk>", "<s>", "a"], bos_token="<s>")
    sft = tokenizer(["<unk>", "a", "<bos>"], bos_token="<bos>")
    with pytest.raises(ValueError, match=r"no common prefix token.*'<s>', '<bos>'"):
        prefix_id(base, sft)
