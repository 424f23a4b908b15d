"""Is a checkpoint pair complete and compatible? Ask before a long run.

    python -m compute.doctor --pair 7B                  # Qwen2.5-7B vs -Instruct
    python -m compute.doctor --base ./a --sft ./b       # any two hub ids or folders
    python -m compute.doctor --pair 7B --verify         # also hash every weight file
    python -m compute.doctor --pair demo --scan         # also read every tensor
    python -m compute.run --check --pair 7B             # the same, from compute.run

Checks, for each checkpoint: that it resolves (folder, or hub id in the cache or
downloadable), that config.json parses, that model.safetensors.index.json (if any)
parses and every weight file it names is there, that every weight file is complete
(its header parses and the file is as long as the header promises: a half-downloaded
weight file is caught here) and holds the tensors the index gives it, and that a
tokenizer is there (the behaviour half needs one). For the pair: the same architecture
(config keys that decide shapes), the same tensor names, shapes and storage dtypes,
and the layout compute.arch.naming recognises (the block container and layer count,
Conv1D weights stored [in, out], fused projections and how they are split, experts,
buffers skipped; a tensor it cannot place fails here). With `--verify`, every weight
file of a checkpoint from the hub cache is hashed (sha256) and compared with the name
of its blob, which is the sha256 of what the hub served: a weight file damaged on disk
but of the right length (bit rot, a bad copy) is caught only here. It reads the whole
pair (0.6-0.9 GB/s on one core: half a minute to a minute for the 7B pair, minutes for
72B), so it is not on by default. A local folder has no reference checksum: it is
reported as not verified (SKIP). With `--scan` (which implies `--verify`), every
tensor is read (one at a time) and NaN/Inf entries are counted per tensor: compute.run
would go on and mark such tensors (raw.spectra.n_nonfinite > 0, empty spectrum), but a
checkpoint with non-finite weights is damaged.

Prints one line per check (PASS, WARN, FAIL, SKIP: not checkable) and a verdict; exit
status 0 when the pair is ready for `python -m compute.run`, 2 when it is not. Never
writes anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TextIO

from compute.arch.naming import Layout, LayoutError
from compute.io.adapters import is_adapter, load_adapter
from compute.io.checkpoints import (
    STORAGE,
    Checkpoint,
    CheckpointError,
    TensorInfo,
    _read_config,
    _weight_files,
    hub_blob,
    hub_sha256,
    locate,
    scan_weight_file,
    sha256_file,
)
from compute.plan.formats import check_readable, text_tower
from compute.plan.pair import ARCH_KEYS
from compute.plan.vocab import align_pair

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


@dataclasses.dataclass
class Finding:
    level: str  # PASS | WARN | FAIL | SKIP (could not be checked)
    where: str  # base | sft | pair | verify | scan
    text: str


@dataclasses.dataclass
class Checked:
    ref: str
    folder: Path | None = None
    revision: str | None = None
    config: dict | None = None
    # None unless every weight file is sound
    tensors: dict[str, TensorInfo] | None = None
    # the complete ones
    weight_files: list[Path] = dataclasses.field(default_factory=list)


class Report:
    def __init__(self, out: TextIO):
        self.out, self.findings = out, []

    def add(self, level: str, where: str, text: str) -> None:
        """Record a finding and print it."""
        self.findings.append(Finding(level, where, text))
        print(f"  {level}  {text}", file=self.out, flush=True)

    def section(self, title: str) -> None:
        """Print a section title."""
        print(title, file=self.out, flush=True)

    @property
    def failures(self) -> list[Finding]:
        """The FAIL findings so far."""
        return [f for f in self.findings if f.level == "FAIL"]


def _few(names: list[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (f" (+{len(names) - k} more)" if len(names) > k else "")


def check_checkpoint(role: str, ref: str, revision: str | None, rep: Report) -> Checked:
    """Every per-checkpoint check; reports all problems found, not just the first."""
    c = Checked(ref)
    rep.section(f"{role}: {ref}")
    try:
        c.folder, c.revision = locate(ref, revision)
    except CheckpointError as exc:
        rep.add("FAIL", role, str(exc))
        return c
    rep.add("PASS", role, f"found {c.folder}"
            + (f" (hub commit {c.revision})" if c.revision else ""))
    try:
        c.config = _read_config(c.folder)
        rep.add("PASS", role, f"config.json parses (model_type "
                f"{c.config.get('model_type')!r}, {c.config.get('num_hidden_layers')} "
                "layers)")
    except CheckpointError as exc:
        rep.add("FAIL", role, str(exc))
    try:
        files = _weight_files(c.folder)
    except CheckpointError as exc:
        rep.add("FAIL", role, str(exc))
        return c
    indexed = next(iter(files.values())) is not None
    if indexed:
        on_disk = {p.name for p in c.folder.glob("*.safetensors")}
        stray = sorted(on_disk - set(files))
        if stray:
            rep.add("WARN", role, f"{c.folder}: weight file(s) not named in "
                    f"model.safetensors.index.json, ignored: {_few(stray)}")
    tensors: dict[str, TensorInfo] = {}
    sound, total = True, 0
    for file, expected in files.items():
        path = c.folder / file
        if not path.exists():
            rep.add("FAIL", role, f"{path}: weight file named in "
                    "model.safetensors.index.json "
                    f"(for {len(expected or [])} tensors) is missing")
            sound = False
            continue
        try:
            found = scan_weight_file(path)
        except CheckpointError as exc:
            rep.add("FAIL", role, str(exc))
            sound = False
            continue
        total += path.stat().st_size
        c.weight_files.append(path)
        for name, info in found.items():
            tensors[name] = dataclasses.replace(info, file=file)
        if expected is not None:
            missing = sorted(set(expected) - set(found))
            if missing:
                rep.add("FAIL", role, f"{path}: index names {len(missing)} tensor(s) "
                        f"the weight file lacks: {_few(missing)}")
                sound = False
    if sound:
        c.tensors = tensors
        rep.add("PASS", role, f"{len(files)} weight file(s) complete ({total:,} bytes, "
                f"{len(tensors)} tensors)")
    if not any((c.folder / f).exists() for f in TOKENIZER_FILES):
        rep.add("WARN", role, f"{c.folder}: no tokenizer ({' / '.join(TOKENIZER_FILES)})"
                "; the behaviour half (log-probs, drift) cannot run")
    return c


def check_adapter(ref: str, revision: str | None, base: Checked, rep: Report
                  ) -> bool:
    """Whether `ref` is a LoRA adapter (then checked against the base here: its
    type, its modules and shapes; docs/finetunes.md)."""
    try:
        folder, rev = locate(ref, revision)
    except CheckpointError:
        return False  # check_checkpoint reports it
    if not is_adapter(folder):
        return False
    rep.section(f"sft: {ref} (LoRA adapter)")
    if base.tensors is None or base.config is None or base.folder is None:
        rep.add("FAIL", "sft", "adapter not checked: the base is unusable")
        return True
    ckpt = Checkpoint(base.ref, base.folder, base.revision or "local", base.config,
                      base.tensors)
    try:
        found = load_adapter(ref, folder, rev, ckpt).summary()
    except CheckpointError as exc:
        rep.add("FAIL", "sft", str(exc))
        return True
    rep.add("PASS", "sft", f"LoRA adapter over the base: {found['n_adapted']} "
            f"adapted matrices (r {found['r']}, lora_alpha {found['lora_alpha']}"
            + (", rsLoRA" if found["use_rslora"] else "")
            + (", rank_pattern" if found["rank_pattern"] else "")
            + (", alpha_pattern" if found["alpha_pattern"] else "")
            + "), saved whole: " + (", ".join(found["full_tensors"]) or "none")
            + "; dW = scale * B @ A, the others unchanged")
    return True


def check_formats(base: Checked, sft: Checked, rep: Report) -> list[str] | None:
    """Quantized and encoder-decoder checkpoints (FAIL: None), a multimodal one's
    language tower (compared as compute.run does: compute.plan.formats); returns the
    refs read as their towers."""
    for c in (base, sft):
        try:
            check_readable(c)
        except CheckpointError as exc:
            rep.add("FAIL", "pair", str(exc))
            return None
    towers = [c.ref for c in (base, sft) if text_tower(c)]
    if towers:
        rep.add("PASS", "pair", f"multimodal: the language tower of "
                f"{', '.join(towers)} is compared (vision tower, projector left out)")
    return towers


def check_compatible(base: Checked, sft: Checked, rep: Report) -> None:
    """The pair checks: vocabulary alignment, architecture, tensor names,
    shapes and storage dtypes, the layout recognised."""
    rep.section("pair")
    vocab, towers = None, []
    if None not in (base.config, sft.config, base.tensors, sft.tensors):
        towers = check_formats(base, sft, rep)
        if towers is None:
            return
        try:  # a resized vocabulary, a tied head: compared as compute.run does
            vocab = align_pair(base, sft)
        except CheckpointError as exc:
            rep.add("FAIL", "pair", str(exc))
    if vocab is not None:
        o = vocab.options()
        if vocab.base_vocab:
            rep.add("PASS", "pair", f"resized vocabulary {o['base_vocab_size']} -> "
                    f"{o['sft_vocab_size']}: the shared rows of "
                    f"{', '.join(o['resized_tensors'])} are compared, the added ones "
                    "recorded apart")
        if vocab.tied_head:
            rep.add("PASS", "pair", "lm_head compared with the "
                    f"{o['tied_head_compared_with']} (tied embeddings on one side)")
    if base.config is not None and sft.config is not None:
        diff = [k for k in ARCH_KEYS if base.config.get(k) != sft.config.get(k)
                and not (k == "vocab_size" and vocab and vocab.base_vocab)
                and not (k == "model_type" and towers)]  # qwen2_vl's tower vs qwen2
        for k in diff:
            rep.add("FAIL", "pair", f"different architectures: config {k} is "
                    f"{base.config.get(k)!r} in {base.ref} but {sft.config.get(k)!r} "
                    f"in {sft.ref}")
        if not diff:
            rep.add("PASS", "pair", "same architecture (" + ", ".join(ARCH_KEYS) + ")")
    else:
        rep.add("FAIL", "pair", "architecture not compared: a config.json is unusable")
    if base.tensors is None or sft.tensors is None:
        rep.add("FAIL", "pair", "tensors not compared: a checkpoint is incomplete")
        return
    ok = True
    only_base = sorted(set(base.tensors) - set(sft.tensors))
    only_sft = sorted(set(sft.tensors) - set(base.tensors))
    if only_base:
        rep.add("FAIL", "pair", f"{len(only_base)} tensor(s) only in {base.ref}: "
                f"{_few(only_base)}")
    if only_sft:
        rep.add("FAIL", "pair", f"{len(only_sft)} tensor(s) only in {sft.ref}: "
                f"{_few(only_sft)}")
    ok = not (only_base or only_sft)
    dtypes = set()
    try:  # buffers it skips may be integers
        layout = Layout(base.config) if base.config is not None else None
    except LayoutError:
        layout = None
    for name, b in base.tensors.items():
        s = sft.tensors.get(name)
        if s is None:
            continue
        if b.shape != s.shape:
            rep.add("FAIL", "pair", f"tensor {name}: shape {list(b.shape)} in "
                    f"{base.ref} but {list(s.shape)} in {sft.ref}")
            ok = False
        elif (b.dtype not in STORAGE or s.dtype not in STORAGE) and not (
                layout and layout.skip(name, b.shape)):
            rep.add("FAIL", "pair", f"tensor {name}: stored as {b.dtype} in "
                    f"{base.ref} and {s.dtype} in {sft.ref}; sftscope reads "
                    f"{', '.join(STORAGE)} weights")
            ok = False
        elif b.dtype != s.dtype:
            dtypes.add(f"{b.dtype} -> {s.dtype}")
    if ok:
        n2 = sum(len(t.shape) >= 2 for t in base.tensors.values())
        rep.add("PASS", "pair", f"same {len(base.tensors)} tensors and shapes "
                f"({n2} matrices)")
    if dtypes:  # compared in fp64, each side's rounding its own (docs/finetunes.md)
        rep.add("PASS", "pair", "storage dtypes differ (base -> SFT: "
                f"{', '.join(sorted(dtypes))}): dW is formed in fp64, the noise "
                "level from each side's own rounding")
    check_layout(base, rep)


def check_layout(base: Checked, rep: Report) -> None:
    """The layout compute.arch.naming recognises: blocks, Conv1D storage, what is split
    (fused projections) or analysed per expert, what is skipped."""
    if base.tensors is None or base.config is None:
        return
    rep.section("layout")
    try:
        lines = Layout(base.config).summary(
            {name: info.shape for name, info in base.tensors.items()})
    except LayoutError as exc:
        rep.add("FAIL", "layout", str(exc))
        return
    for line in lines:
        rep.add("WARN" if "NOT all" in line or "none recognised" in line else "PASS",
                "layout", line)


def verify_checksums(role: str, c: Checked, rep: Report, progress: bool) -> None:
    """Hash every complete weight file whose hub-cache blob is named by its sha256 and
    compare; say which weight files have no reference to compare with."""
    from tqdm import tqdm

    if c.folder is None:
        rep.add("SKIP", "verify", f"{role}: not verified (checkpoint not found)")
        return
    todo, plain, git = [], [], []
    for path in c.weight_files:
        blob = hub_blob(path)
        if blob is None:
            plain.append(path)
        elif (want := hub_sha256(blob)) is None:
            git.append(path)
        else:
            todo.append((path, blob, want))
    if plain and not todo and not git:
        rep.add("SKIP", "verify", f"{role}: {c.folder}: no reference checksum (a local "
                "folder; only the hub cache names files by their sha256): not verified")
    elif plain or git:
        rep.add("SKIP", "verify", f"{role}: {len(plain) + len(git)} weight file(s) "
                "with no "
                "sha256 to compare (" + ("not hub-cache blobs" if plain else "")
                + (", " if plain and git else "") + ("stored in git" if git else "")
                + f"): {_few([p.name for p in plain + git])}")
    if not todo:
        if not c.weight_files:
            rep.add("SKIP", "verify", f"{role}: no complete weight file to verify")
        return
    total = sum(blob.stat().st_size for _, blob, _ in todo)
    bad = 0
    with tqdm(total=total, desc=f"sha256 {role}", unit="B", unit_scale=True,
              unit_divisor=1024, disable=not progress, file=sys.stderr) as bar:
        for path, blob, want in todo:
            try:
                got = sha256_file(blob, bar)
            except OSError as exc:
                rep.add("FAIL", "verify", f"{role}: {path}: cannot read ({exc})")
                bad += 1
                continue
            if got != want:
                rep.add("FAIL", "verify", f"{role}: {path}: sha256 mismatch: expected "
                        f"{want} (its hub blob's name), got {got}: damaged on disk; "
                        f"delete {blob} and download it again")
                bad += 1
    if not bad:
        rep.add("PASS", "verify", f"{role}: {len(todo)} weight file(s) match their "
                "hub sha256 "
                f"({total:,} bytes hashed)")


def scan_values(role: str, c: Checked, rep: Report, progress: bool) -> None:
    """Read every tensor once and count NaN/Inf entries."""
    import torch
    from tqdm import tqdm

    if c.tensors is None or c.folder is None:
        rep.add("FAIL", "scan", f"{role}: not scanned (incomplete checkpoint)")
        return
    ckpt = Checkpoint(c.ref, c.folder, c.revision or "", c.config or {}, c.tensors)
    bad = 0
    for name in tqdm(list(c.tensors), desc=f"scan {role}", unit="tensor",
                     disable=not progress, file=sys.stderr):
        try:
            w = ckpt.read(name)
        except CheckpointError as exc:
            rep.add("FAIL", "scan", f"{role}: {exc}")
            bad += 1
            continue
        if not w.is_floating_point():
            continue
        n_nan = int(torch.isnan(w).sum())
        n_inf = int(torch.isinf(w).sum())
        if n_nan or n_inf:
            rep.add("FAIL", "scan", f"{role} tensor {name} ({c.folder / c.tensors[name].file}"
                    f"): {n_nan} NaN, {n_inf} Inf of {w.numel()} entries")
            bad += 1
    if not bad:
        rep.add("PASS", "scan", f"{role}: all {len(c.tensors)} tensors finite")


def check_pair(base: str, sft: str, *, revision_base: str | None = None,
               revision_sft: str | None = None, scan: bool = False,
               verify: bool | None = None, out: TextIO | None = None,
               progress: bool | None = None) -> bool:
    """Print the report; True when the pair is ready for compute.run. `verify`
    (default: with `scan`) hashes the hub-cache weight files."""
    out = out or sys.stdout
    progress = sys.stderr.isatty() if progress is None else progress
    verify = scan if verify is None else verify
    rep = Report(out)
    b = check_checkpoint("base", base, revision_base, rep)
    adapter = check_adapter(sft, revision_sft, b, rep)
    sides = [("base", b)]
    if not adapter:
        s = check_checkpoint("sft", sft, revision_sft, rep)
        check_compatible(b, s, rep)
        sides.append(("sft", s))
    else:
        check_layout(b, rep)
    if verify:
        rep.section("checksums (--verify)")
        for role, c in sides:
            verify_checksums(role, c, rep, progress)
    if scan:
        rep.section("values (--scan)")
        for role, c in sides:
            scan_values(role, c, rep, progress)
    fails = rep.failures
    if fails:
        print(f"FAIL: {len(fails)} problem(s); fix them before python -m compute.run "
              "(a missing or truncated weight file: download it again)", file=out)
    else:
        warns = sum(f.level == "WARN" for f in rep.findings)
        hashable = not verify and any(
            (blob := hub_blob(p)) is not None and hub_sha256(blob) is not None
            for _, c in sides for p in c.weight_files)
        print("PASS: the pair is complete and compatible"
              + (f" ({warns} warning(s))" if warns else "")
              + ("; add --verify to compare every weight file with its hub sha256"
                 if hashable else "")
              + ("" if scan else "; add --scan to check every value for NaN/Inf"),
              file=out)
    return not fails


def main(argv: list[str] | None = None) -> int:
    """python -m compute.doctor: print the report; exit status 0 ready, 2 not."""
    from compute.pairs.registry import PAIRS, PairError, build_if_planted, resolve_pair

    ap = argparse.ArgumentParser(prog="python -m compute.doctor",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--pair", help=f"a known pair: {', '.join(PAIRS)} or demo "
                    "(python -m compute.run --help says what each is)")
    ap.add_argument("--base", help="base checkpoint: hub id or local folder")
    ap.add_argument("--sft", help="fine-tuned checkpoint: hub id or local folder")
    ap.add_argument("--revision-base")
    ap.add_argument("--revision-sft")
    ap.add_argument("--verify", action="store_true",
                    help="hash every weight file from the hub cache (sha256, reads "
                    "the whole "
                    "pair) and compare with its blob name")
    ap.add_argument("--scan", action="store_true",
                    help="read every tensor and count NaN/Inf (reads the whole pair); "
                    "implies --verify")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    a = ap.parse_args(argv)
    try:
        name, base, sft = resolve_pair(a.pair, a.base, a.sft)
    except PairError as exc:
        ap.error(str(exc))
    build_if_planted(name, base)
    try:
        ok = check_pair(base, sft, revision_base=a.revision_base,
                        revision_sft=a.revision_sft, scan=a.scan,
                        verify=a.verify or a.scan,
                        progress=a.progress and sys.stderr.isatty())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
