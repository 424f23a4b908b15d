"""Mutation testing: small deliberate bugs put into a copy of the repository, and the
tests that guard the code run against each; a mutant they do not catch survives and is
printed. A developer tool (`make mutate`), not part of `make test`.

    python tools/mutate.py                  # SQL/macro mutants, then cosmic-ray
    python tools/mutate.py --sql            # only the SQL/macro mutants (~40 s each)
    python tools/mutate.py --python         # only cosmic-ray on the Python selection
    python tools/mutate.py -k t_critical    # the mutants / Python functions named so
    python tools/mutate.py --list           # what would run
    python tools/mutate.py --python -k shards --rerun-survivors  # after new tests

The copy lives in data/mutate/tree* (the working tree is never touched): tracked and
untracked-but-not-ignored files plus the built C extensions. cosmic-ray is installed by
this script into its own virtual environment (data/mutate/venv); its mutants of the
Python statistics code (PYTHON_TARGETS) run with this interpreter's pytest. Exit status:
0 when every mutant was caught, 1 when some survived, 2 on a broken setup.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "data" / "mutate"
TREE = WORK / "tree"
COSMIC_RAY = "cosmic-ray==8.7.0"

MACRO = "dbt_project/macros/t_critical_95.sql"
STATS = "dbt_project/models/intermediate/int_spectrum_stats.sql"
GROUP_DELTA = "dbt_project/models/marts/behaviour/fct_group_perplexity_delta.sql"
GROUP = "dbt_project/models/marts/behaviour/fct_group_perplexity.sql"
WEIGHTS_YML = "dbt_project/models/marts/weights/_weights__models.yml"

QUICK = ("tests/test_statistics.py",)
MARTS = ("tests/test_statistics.py", "tests/test_statistics_marts.py")
NONFINITE = ("tests/faults/test_checkpoints.py", "-k", "nonfinite")


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest arguments


SQL_MUTANTS = [
    # (a 4th-order coefficient changed by a few units moves t by less than the
    # expansion's own error at every df: no reference can tell, so none is listed)
    Mutant("t_critical: a 4th-order coefficient", MACRO, "1482 *", "1382 *", QUICK),
    Mutant("t_critical: a 3rd-order coefficient", MACRO, "19 * {{ z }}^5",
           "18 * {{ z }}^5", QUICK),
    Mutant("t_critical: the 2nd-order denominator", MACRO, "(96 * ({{ df }})^2)",
           "(96 * ({{ df }})^3)", QUICK),
    Mutant("t_critical: the z quantile rounded", MACRO, '"(1.959963984540054::double)"',
           '"(1.96::double)"', QUICK),
    Mutant("t_critical: the expansion from df 32", MACRO, "when ({{ df }}) > 30",
           "when ({{ df }}) > 31", QUICK),
    Mutant("t_critical: first-order term", MACRO, "/ (4 * ({{ df }}))",
           "/ (4 * ({{ df }} + 1))", QUICK),
    Mutant("t_critical: df 30 to ten digits", MACRO, "2.0422724563012378",
           "2.042272456", QUICK),
    Mutant("t_critical: the table shifted by one", MACRO, "{{ loop.index }}",
           "{{ loop.index + 1 }}", QUICK),
    Mutant("t_critical: DECIMAL z", MACRO, '"(1.959963984540054::double)"',
           '"(1.959963984540054)"', QUICK),
    Mutant("group delta: population sd", GROUP_DELTA,
           "stddev_samp(delta_perplexity)", "stddev_pop(delta_perplexity)", MARTS),
    Mutant("group delta: mean for median", GROUP_DELTA, "median(delta_perplexity)",
           "avg(delta_perplexity)", MARTS),
    Mutant("group delta: ties counted as lower", GROUP_DELTA, "delta_perplexity < 0",
           "delta_perplexity <= 0", MARTS),
    Mutant("group delta: n - 1 in the standard error", GROUP_DELTA,
           "* sd_delta_perplexity / sqrt(n_posts) as ci95_low",
           "* sd_delta_perplexity / sqrt(n_posts - 1) as ci95_low", MARTS),
    Mutant("group delta: log-prob interval on the perplexity sd", GROUP_DELTA,
           "* sd_delta_mean_logprob / sqrt(n_posts) as ci95_high",
           "* sd_delta_perplexity / sqrt(n_posts) as ci95_high", MARTS),
    Mutant("group: population sd", GROUP, "stddev_samp(perplexity)",
           "stddev_pop(perplexity)", MARTS),
    Mutant("GD lambda: 14 beta", STATS, "14 * beta", "15 * beta", MARTS),
    Mutant("GD lambda: 8 beta", STATS, "+ 8 * beta", "+ 7 * beta", MARTS),
    Mutant("GD threshold: sqrt of the short side", STATS, "* sqrt(n_long) * noise_sigma",
           "* sqrt(n_short) * noise_sigma", MARTS),
    Mutant("GD beta: rows over columns", STATS,
           "least(n_rows, n_cols)::double / greatest(n_rows, n_cols)",
           "n_rows::double / n_cols", MARTS),
    Mutant("GD omega: cubic coefficient", STATS, "0.56 * beta ^ 3", "0.50 * beta ^ 3",
           MARTS),
    Mutant("GD omega: linear coefficient", STATS, "1.82 * beta", "1.85 * beta", MARTS),
    Mutant("GD unknown: mean for median", STATS, "median(s) over", "avg(s) over", MARTS),
    Mutant("MP edge: square root of the long side twice", STATS,
           "(sqrt(n_rows) + sqrt(n_cols))", "2 * sqrt(n_long)", MARTS),
    Mutant("signal rank: at or above", STATS, "r.s > t.gd_threshold",
           "r.s >= t.gd_threshold * 0.997", MARTS),
    Mutant("data test: a guard against non-finite spectra dropped", WEIGHTS_YML,
           'expression: "s_max >= s_min"\n            where_clause: "n_nonfinite = 0"',
           'expression: "s_max >= s_min"', NONFINITE),
]

# cosmic-ray: the Python metric and statistics code (module, the functions whose
# lines are mutated) and the few tests that guard it (seconds per mutant)
PYTHON_TARGETS = [
    ("compute/behaviour/scoring.py", ("plan_windows",),
     ("tests/test_behaviour.py", "-k", "plan_windows")),
    ("compute/linalg/spectra.py", ("_noise_from_sums",),
     ("tests/test_spectra_accuracy.py", "-k", "noise_sigma")),
    ("compute/behaviour/scoring.py", ("token_stats", "drift_sums"),
     ("tests/test_token_stats.py",)),
    ("compute/plan/shards.py", ("matrix_cost", "split", "peak_bytes", "dry_run"),
     ("tests/test_core_math.py", "-k", "shard")),
    ("compute/plan/vocab.py", ("align_pair", "_tie", "_embedding"),
     ("tests/test_core_math.py", "-k", "vocab")),
    ("compute/lora/recovery.py", ("post_rows", "update"),
     ("tests/test_core_math.py", "-k", "lora")),
    # the measures from the vectors: signs, overlap shares, principal angles,
    # intruders and their null, row changes (the rest of gram_directions, the
    # vectors themselves, is tests/test_directions.py's, tens of seconds a run)
    ("compute/linalg/directions.py", ("_inverse", "_cosines", "null_max_cos",
                               "gram_directions:frob_d = rows[2]"),
     ("tests/test_core_math.py", "-k", "directions")),
]
# a mutant that loops forever while it allocates stops here, not in the machine's
# memory (the time limit catches the others)
MEMORY_LIMIT = 4 << 30


def copy_tree() -> None:
    """The repository as git sees it (committed or not, ignored files left out) plus
    the compiled extensions, into TREE."""
    if TREE.exists():
        shutil.rmtree(TREE)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"],
                           cwd=ROOT, check=True, capture_output=True).stdout
    names = [n for n in files.decode().split("\0") if n]
    names += [str(p.relative_to(ROOT)) for d in ("ingest", "compute")
              for p in (ROOT / d).glob("*.so")]
    for name in names:
        src = ROOT / name
        if src.is_file():
            dst = TREE / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def memory_limit() -> list[str]:
    prlimit = shutil.which("prlimit")
    return [prlimit, f"--as={MEMORY_LIMIT}"] if prlimit else []


def pytest(args: tuple[str, ...], timeout: float, limit_memory: bool = False
           ) -> tuple[int, str]:
    """(exit status or -1 on timeout, the output's last line); `limit_memory`: for
    a mutant of Python code (DuckDB under dbt reserves more address space)."""
    env = dict(os.environ, PYTHONPATH=str(TREE), DBT_SEND_ANONYMOUS_USAGE_STATS="false")
    cmd = [*(memory_limit() if limit_memory else []), sys.executable, "-m", "pytest",
           "-x", "-q", "-p", "no:cacheprovider", *args]
    try:
        proc = subprocess.run(cmd, cwd=TREE, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return -1, "timeout"
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    return proc.returncode, tail[-1] if tail else ""


def run_sql(mutants: list[Mutant], timeout: float) -> list[tuple[Mutant, str]]:
    """(mutant, outcome) with outcome 'killed', 'survived', 'stale' (text not found
    once: the model changed, update the mutant) or 'timeout'."""
    for tests in sorted({m.tests for m in mutants}):
        rc, tail = pytest(tests, timeout)
        if rc != 0:
            sys.exit(f"the tests fail without any mutant ({' '.join(tests)}): {tail}")
    out = []
    for i, m in enumerate(mutants, 1):
        path = TREE / m.path
        text = path.read_text()
        if text.count(m.old) != 1:
            outcome = "stale"
        else:
            path.write_text(text.replace(m.old, m.new))
            t0 = time.monotonic()
            try:
                rc, tail = pytest(m.tests, timeout, m.path.endswith(".py"))
            finally:
                path.write_text(text)
            outcome = "timeout" if rc == -1 else "killed" if rc in (1, 2) else (
                "survived" if rc == 0 else f"error (pytest exit {rc}: {tail})")
            outcome += f" ({time.monotonic() - t0:.0f} s)"
        print(f"[{i}/{len(mutants)}] {m.name}: {outcome}", flush=True)
        out.append((m, outcome.split(" (")[0]))
    return out


def function_lines(path: Path, names: tuple[str, ...]) -> list[tuple[int, int]]:
    """The line spans of the named functions; "name:text" starts at the first line
    of the function that holds `text` (the rest of a long function)."""
    import ast

    source = path.read_text()
    lines = source.splitlines()
    wanted = dict(n.partition(":")[::2] for n in names)
    spans = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.name in wanted):
            start, text = node.lineno, wanted[node.name]
            if text:
                start = next((i for i in range(start, node.end_lineno + 1)
                              if text in lines[i - 1]), 0)
                if not start:
                    sys.exit(f"{path}: {node.name} has no line with {text!r}")
            spans.append((start, node.end_lineno))
    if len(spans) != len(names):
        sys.exit(f"{path}: cannot find all of {names}")
    return spans


# Runs in cosmic-ray's environment: the session's results as JSON (skipped items,
# those outside the selected lines, left out).
RESULTS = """
import json, sys
from cosmic_ray.work_db import use_db, WorkDB
from cosmic_ray.work_item import WorkerOutcome
out = []
with use_db(sys.argv[1], WorkDB.Mode.open) as db:
    for item, result in db.completed_work_items:
        if result.worker_outcome == WorkerOutcome.SKIPPED:
            continue
        m = item.mutations[0]
        out.append({"killed": bool(result.is_killed), "operator": m.operator_name,
                    "line": m.start_pos[0], "module": str(m.module_path),
                    "diff": result.diff or ""})
print(json.dumps(out))
"""


def cosmic_ray_env() -> Path:
    venv = WORK / "venv"
    bin_ = venv / "bin"
    if not (bin_ / "cosmic-ray").exists():
        print(f"installing {COSMIC_RAY} into {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(bin_ / "python"), "-m", "pip", "install", "-q", COSMIC_RAY],
                       check=True)
    return bin_


def session_results(bin_: Path, session: Path) -> list[dict]:
    return json.loads(subprocess.run(
        [str(bin_ / "python"), "-c", RESULTS, str(session)], cwd=TREE, check=True,
        capture_output=True, text=True).stdout)


def replay_survivors(bin_: Path, session: Path, module: str, tests: tuple[str, ...],
                     limit: float) -> list[dict]:
    """The last session's results with its survivors run again against today's
    tests: each survivor's diff (its removed lines -> its added lines) applied to
    the module as the tree holds it now, so lines that moved do not matter; a
    survivor whose lines are gone is 'stale' and counted as surviving."""
    results = session_results(bin_, session)
    mutants = []
    for r in results:
        if r["killed"]:
            continue
        lines = r["diff"].splitlines()
        hunk = lines[next((i for i, ln in enumerate(lines) if ln.startswith("@@")),
                          len(lines)) + 1:]  # context lines keep the text unique
        old = "\n".join(ln[1:] for ln in hunk if ln[:1] in " -")
        new = "\n".join(ln[1:] for ln in hunk if ln[:1] in " +")
        mutants.append((r, Mutant(f"{module}:{r['line']} {r['operator']}", module,
                                  old, new, tests)))
    print(f"{module}: {len(mutants)} survivors of the last session run again",
          flush=True)
    outcomes = run_sql([m for _, m in mutants], limit)
    for (r, _), (_, outcome) in zip(mutants, outcomes, strict=True):
        r["killed"] = outcome in ("killed", "timeout") or outcome.startswith("error")
    return results


def run_python(timeout: float, pick: str = "", rerun: bool = False
               ) -> tuple[int, int, list[str]]:
    """cosmic-ray on each PYTHON_TARGETS entry, only on the selected functions' lines
    (cr-filter-lines): (killed, total, survivor diffs). `rerun`: only the mutants
    that survived the target's last session (after new tests), the others kept
    (replay_survivors)."""
    bin_ = cosmic_ray_env()
    killed = total = 0
    survivors = []
    for module, functions, tests in PYTHON_TARGETS:
        if pick.lower() not in " ".join((module, *functions)).lower():
            continue
        spans = function_lines(TREE / module, functions)
        t0 = time.monotonic()
        rc, tail = pytest(tests, timeout)
        if rc != 0:
            sys.exit(f"the tests fail without any mutant ({' '.join(tests)}): {tail}")
        # a mutant that loops forever is caught by the time limit: a few baselines
        limit = min(timeout, max(30.0, 4 * (time.monotonic() - t0)))
        slug = (f"{module.replace('/', '_').removesuffix('.py')}_"
                f"{functions[0].partition(':')[0]}")
        config, session = WORK / f"{slug}.toml", WORK / f"{slug}.sqlite"
        test_command = " ".join([
            *memory_limit(), sys.executable, "-m", "pytest", "-x", "-q", "-p",
            "no:cacheprovider", *(f"'{t}'" for t in tests)])
        lines = ", ".join(f'"{a}-{b}"' for a, b in spans)
        config.write_text(
            "[cosmic-ray]\n"
            f'module-path = "{module}"\n'
            f"timeout = {limit:.0f}\n"
            "excluded-modules = []\n"
            f"test-command = {json.dumps(test_command)}\n"
            "[cosmic-ray.distributor]\n"
            'name = "local"\n'
            "[cosmic-ray.filters.line-filter]\n"
            f'lines = {{ "{module}" = [{lines}] }}\n')
        env = dict(os.environ, PYTHONPATH=str(TREE))
        if rerun and session.exists():
            results = replay_survivors(bin_, session, module, tests, limit)
        else:
            session.unlink(missing_ok=True)
            for step in (["cosmic-ray", "init", str(config), str(session)],
                         ["cr-filter-lines", "--config", str(config), str(session)],
                         ["cosmic-ray", "exec", str(config), str(session)]):
                print(f"{module}: {step[0]} {step[1]}", flush=True)
                subprocess.run([str(bin_ / step[0]), *step[1:]], cwd=TREE, env=env,
                               check=True)
            results = session_results(bin_, session)
        k = sum(r["killed"] for r in results)
        killed, total = killed + k, total + len(results)
        survivors += [f"{r['module']}:{r['line']} {r['operator']}\n{r['diff']}"
                      for r in results if not r["killed"]]
        print(f"{module} {', '.join(functions)}: {k} of {len(results)} killed in "
              f"{(time.monotonic() - t0) / 60:.0f} min (tests: {' '.join(tests)})",
              flush=True)
    return killed, total, survivors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sql", action="store_true", help="only the SQL/macro mutants")
    ap.add_argument("--python", action="store_true", help="only cosmic-ray")
    ap.add_argument("-k", default="", help="only the SQL mutants and Python targets "
                    "whose name contains this")
    ap.add_argument("--rerun-survivors", action="store_true",
                    help="cosmic-ray: run again only the last session's survivors")
    ap.add_argument("--list", action="store_true", help="list the mutants and stop")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per test run")
    args = ap.parse_args(argv)
    sql = [m for m in SQL_MUTANTS if args.k.lower() in m.name.lower()]
    if args.list:
        for m in sql:
            print(f"{m.name}: {m.path}: {m.old!r} -> {m.new!r}")
        for module, functions, tests in PYTHON_TARGETS:
            print(f"cosmic-ray: {module} {functions}: {' '.join(tests)}")
        return 0
    global TREE
    # one copy per kind of run, so a SQL and a Python run can go side by side
    TREE = WORK / ("tree-sql" if args.sql else "tree-python" if args.python else "tree")
    copy_tree()
    survived: list[str] = []
    stale: list[str] = []
    if not args.python:
        results = run_sql(sql, args.timeout)
        killed = sum(o == "killed" for _, o in results)
        survived += [f"SQL {m.name}: {m.path}: {m.old!r} -> {m.new!r}"
                     for m, o in results if o != "killed" and o != "stale"]
        stale += [f"{m.name} ({m.path})" for m, o in results if o == "stale"]
        print(f"SQL/macro mutants: {killed} of {len(results) - len(stale)} killed")
    if not args.sql:
        k, t, surv = run_python(args.timeout, args.k, args.rerun_survivors)
        survived += surv
        print(f"cosmic-ray mutants: {k} of {t} killed")
    for s in stale:
        print(f"STALE (text not found; update tools/mutate.py): {s}")
    for s in survived:
        print(f"SURVIVED: {s}")
    return 1 if survived else 2 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
