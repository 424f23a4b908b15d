"""compute.pairs.registry.resolve_pair: the one resolution of --pair / --base/--sft,
and the three commands that take those options (compute.run, compute.doctor,
compute.extract_lora) agreeing with it."""

from __future__ import annotations

import argparse

import pytest

from compute.lora import extract
from compute.pairs import doctor
from compute.pairs.registry import PairError, resolve_pair
from compute.run.cli import parse_args


def test_named_local_and_explicit_pairs():
    assert resolve_pair("7B") == ("7B", "Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B-Instruct")
    assert resolve_pair("demo") == ("demo", "models/demo/base", "models/demo/sft")
    assert resolve_pair(base="/m/a", sft="/m/b") == ("a-vs-b", "/m/a", "/m/b")
    assert resolve_pair(base="a", sft="b", name="x") == ("x", "a", "b")


@pytest.mark.parametrize(("kw", "message"), [
    ({"pair": "8B"}, "unknown --pair '8B'; known: 0.5B, "),
    ({"pair": "7B", "base": "a"}, "give either --pair or --base/--sft, not both"),
    ({"base": "a"}, "give --pair, or --base and --sft"),
    ({}, "give --pair, or --base and --sft"),
])
def test_refusals_say_what_to_give(kw, message):
    with pytest.raises(PairError, match=message.replace("(", r"\(")):
        resolve_pair(**kw)


def _extract(argv):
    ap = argparse.ArgumentParser()
    extract.pair_args(ap)
    return extract.resolve_pair_args(ap, ap.parse_args(argv))


@pytest.mark.parametrize("argv", [["--pair", "7B"], ["--pair", "demo"],
                                  ["--base", "/m/a", "--sft", "/m/b"],
                                  ["--base", "a", "--sft", "b", "--name", "x"]])
def test_run_and_extract_lora_resolve_alike(argv):
    cfg = parse_args(argv)
    assert (cfg.pair, cfg.base, cfg.sft) == resolve_pair(
        *[argv[argv.index(f"--{k}") + 1] if f"--{k}" in argv else None
          for k in ("pair", "base", "sft", "name")]) == _extract(argv)


@pytest.mark.parametrize("argv", [["--pair", "8B"], ["--base", "a"],
                                  ["--pair", "7B", "--sft", "b"]])
def test_every_command_refuses_alike(argv, capsys):
    messages = []
    for command in (parse_args, _extract, doctor.main):
        with pytest.raises(SystemExit) as exc:
            command(argv)
        assert exc.value.code == 2
        messages.append(capsys.readouterr().err.strip().splitlines()[-1])
    assert len({m.split("error: ", 1)[1] for m in messages}) == 1, messages
