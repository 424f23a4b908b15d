"""The pairs of one compute.run: known pairs by name, or a small TOML file.

    python -m compute.run --pairs 0.5B,1.5B,7B --ray --shards 4   # Ray tasks
    python -m compute.run --pairs pairs.toml --ray --shards 4
    python -m compute.run --pairs pairs.toml                      # one after another

pairs.toml, one [[pair]] table per pair:

    [[pair]]
    name = "7B"                    # a known pair (compute.run --help lists them)

    [[pair]]
    name = "my-sft"                # the pair's name in the warehouse
    base = "Qwen/Qwen2.5-0.5B"     # hub id or local folder
    sft = "./checkpoints/my-sft"   # hub id, local folder or LoRA adapter
    device = "cuda"                # options of this pair (OPTIONS); the command
    vectors = 0                    # line's options hold for the others

The command line's options go to every pair; a pair's own options replace them.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from ingest.runfolder import PairNameError, check_name

# a pair's options: TOML key -> type; the flag is --key with - for _
OPTIONS = {"device": str, "method": str, "vectors": int, "window": int,
           "batch_size": int, "full_basis_max": int, "revision_base": str,
           "revision_sft": str, "prompts": str, "skip_spectra": bool,
           "skip_behaviour": bool}
CHOICES = {"device": ("auto", "cpu", "cuda"), "method": ("gram", "svd", "svd64")}
# options the driver handles: name -> takes a value (None: an optional one)
DRIVER_OPTIONS = {"--ray": None, "--pairs": True, "--shards": True, "--pair": True,
                  "--shard": True, "--no-load": False, "--no-progress": False}


class PairsError(ValueError):
    """A pairs file that cannot be used; the message names the file and entry."""


@dataclasses.dataclass
class Entry:
    name: str
    base: str
    sft: str
    argv: list[str]  # compute.run options that select this pair, then its own
    device: str | None = None  # its own --device, if any


def _toml(path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - the 3.10 backport
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise PairsError(f"{path}: cannot read it ({exc.strerror})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise PairsError(f"{path}: not valid TOML ({exc})") from None


def _option_argv(where: str, key: str, value) -> list[str]:
    kind = OPTIONS.get(key)
    if kind is None:
        raise PairsError(f"{where}: unknown option {key!r} (a pair takes name, base, "
                         f"sft and {', '.join(OPTIONS)})")
    # TOML's booleans are not ints here, nor its ints bools
    if type(value) is not kind:
        raise PairsError(f"{where}: {key} = {value!r} should be "
                         f"{'true or false' if kind is bool else kind.__name__}")
    if key in CHOICES and value not in CHOICES[key]:
        raise PairsError(f"{where}: {key} = {value!r}; one of "
                         f"{', '.join(CHOICES[key])}")
    if kind is int and value < 0:
        raise PairsError(f"{where}: {key} = {value} must be >= 0")
    flag = "--" + key.replace("_", "-")
    if kind is bool:
        return [flag] if value else []
    return [flag, str(value)]


def read(path: str | Path, known: dict[str, tuple[str, str]]) -> list[Entry]:
    """The [[pair]] tables of `path`; `known`: pair name -> (base, sft)."""
    path = Path(path)
    doc = _toml(path)
    extra = sorted(set(doc) - {"pair"})
    if extra:
        raise PairsError(f"{path}: unknown table or key {', '.join(extra)} (the file "
                         "holds [[pair]] tables only)")
    tables = doc.get("pair")
    if not isinstance(tables, list) or not tables:
        raise PairsError(f"{path}: no [[pair]] tables (each pair is a [[pair]] table "
                         "with a name, and base and sft unless it is a known pair)")
    out: list[Entry] = []
    for k, table in enumerate(tables, start=1):
        if not isinstance(table, dict):
            raise PairsError(f"{path}: [[pair]] #{k} is not a table")
        name = table.get("name")
        where = f"{path}: [[pair]] #{k}" + (f" ({name!r})" if name else "")
        if not isinstance(name, str) or not name:
            raise PairsError(f"{where}: needs name = \"...\" (it names the pair's "
                             "folder under --out)")
        try:
            check_name(name, "name")
        except PairNameError as exc:
            raise PairsError(f"{where}: {exc}") from None
        base, sft = table.get("base"), table.get("sft")
        if (base is None) != (sft is None):
            raise PairsError(f"{where}: give both base and sft, or neither (a known "
                             "pair)")
        if base is None:
            if name not in known:
                raise PairsError(f"{where}: {name!r} is not a known pair; give base "
                                 f"and sft (known: {', '.join(known)})")
            base, sft = known[name]
            argv = ["--pair", name]
        elif not (isinstance(base, str) and isinstance(sft, str) and base and sft):
            raise PairsError(f"{where}: base and sft are hub ids or folders (strings)")
        else:
            argv = ["--base", base, "--sft", sft, "--name", name]
        device = table.get("device")
        for key, value in table.items():
            if key not in ("name", "base", "sft"):
                argv += _option_argv(where, key, value)
        if any(e.name == name for e in out):
            raise PairsError(f"{where}: the name {name!r} is given twice (each pair "
                             "has its own folder under --out)")
        out.append(Entry(name, base, sft, argv, device))
    return out


def from_names(text: str, known: dict[str, tuple[str, str]]) -> list[Entry]:
    """Comma-separated names of known pairs."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise PairsError(f"--pairs: unknown {', '.join(unknown) or 'nothing given'} "
                         f"(known: {', '.join(known)}; or a .toml file of pairs)")
    if len(set(names)) != len(names):
        raise PairsError(f"--pairs {text}: a pair is named twice")
    return [Entry(n, *known[n], ["--pair", n]) for n in names]


def parse(text: str, known: dict[str, tuple[str, str]]) -> list[Entry]:
    """--pairs: a .toml file, or names."""
    if text.endswith(".toml") or Path(text).is_file():
        return read(text, known)
    return from_names(text, known)


def one_after_another(argv: list[str], entries: list[Entry], run) -> int:
    """Each pair as its own compute.run (`run`: compute.run.main), in order; a
    failed pair does not stop the others. Exit status: 0, or the first failure's."""
    rest = task_argv(argv, keep=("--no-load", "--no-progress", "--shard"))
    failed: list[tuple[str, int]] = []
    for k, entry in enumerate(entries, start=1):
        print(f"== pair {k}/{len(entries)}: {entry.name}", flush=True)
        code = run([*rest, *entry.argv])
        if code:
            failed.append((entry.name, code))
    if failed:
        print("failed: " + ", ".join(f"{n} (exit {c})" for n, c in failed)
              + "; run the same command again to resume them", file=sys.stderr)
        return failed[0][1]
    return 0


def task_argv(argv: Sequence[str], keep: Sequence[str] = ()) -> list[str]:
    """`argv` without the options the driver handles (DRIVER_OPTIONS), but `keep`."""
    out, rest = [], list(argv)
    while rest:
        arg = rest.pop(0)
        name = arg.split("=", 1)[0]
        if name not in DRIVER_OPTIONS or name in keep:
            out.append(arg)
        elif "=" not in arg and (DRIVER_OPTIONS[name] or (
                DRIVER_OPTIONS[name] is None and rest
                and not rest[0].startswith("-"))):
            rest.pop(0)  # its value
    return out
