"""Helpers shared by the benchmarks in bench/ (generic: no sftscope logic here).

    from bench.common import machine, run_measured, report
    res = run_measured([sys.executable, "-m", "compute.run", ...], cwd=ROOT)
    # {"seconds": 12.3, "peak_rss_mb": 845.1, "rc": 0, "stdout_tail": "..."}
    report("spectra", results={...}, ratios={...})  # prints the shared JSON shape

Every benchmark prints one JSON object of the same shape:
{"bench": name, "machine": {...}, "results": {...}, "ratios": {...}}.
Each measured command runs in its own subprocess, so its peak RSS (ru_maxrss of that
process and the children it waited for, from os.wait4) is its own.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict:
    """What the figures were measured on."""
    info = {
        "cpu": _cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "mem_gb": _mem_total_gb(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "gpu": None,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS"):
        if os.environ.get(var):
            info[var] = os.environ[var]
    return info


# Runs the command and reports its rusage. Linux carries a process's peak RSS across
# fork and exec, so a child forked from a big benchmark process would inherit that
# peak: this small launcher (a fresh interpreter, ~10 MB) forks the command instead.
_LAUNCHER = """
import json, os, subprocess, sys
cmd, out = json.loads(sys.argv[1]), sys.argv[2]
proc = subprocess.Popen(cmd)
_, status, ru = os.wait4(proc.pid, 0)
proc.returncode = os.waitstatus_to_exitcode(status)
with open(out, "w") as fh:
    json.dump({"rc": proc.returncode, "maxrss": ru.ru_maxrss,
               "cpu": ru.ru_utime + ru.ru_stime}, fh)
"""


def run_measured(cmd: list[str], *, cwd: Path | str | None = None,
                 env: dict | None = None, timeout: float | None = None,
                 tail: int = 2000) -> dict:
    """Run `cmd` in a fresh process; wall and CPU seconds, peak RSS (MB), return code.

    Peak RSS is the command's own ru_maxrss (from os.wait4 in a small launcher), so
    each command measured this way is clean of the others and of this process. CPU
    seconds (user + system, with the children it waited for) say how much work was
    done even when other processes share the cores.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryDirectory() as tmp:
        usage_file = Path(tmp) / "usage.json"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _LAUNCHER, json.dumps(cmd),
                               str(usage_file)], cwd=cwd, env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=timeout, check=False)
        seconds = time.perf_counter() - t0
        out.seek(0)
        text = out.read().decode(errors="replace")
        try:
            usage = json.loads(usage_file.read_text())
        except (OSError, ValueError):
            usage = {"rc": proc.returncode, "maxrss": 0, "cpu": None}
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return {"seconds": round(seconds, 2),
            "cpu_seconds": None if usage["cpu"] is None else round(usage["cpu"], 2),
            "peak_rss_mb": round(usage["maxrss"] * scale / 2**20, 1),
            "rc": usage["rc"], "stdout_tail": text[-tail:]}


def ratio(slow: float | None, fast: float | None) -> float | None:
    """slow / fast, rounded; None when either is missing."""
    if not slow or not fast:
        return None
    return round(slow / fast, 2)


def report(name: str, results: dict, ratios: dict, *, extra: dict | None = None,
           out: Path | str | None = None) -> dict:
    """Print (and optionally save) the benchmark's JSON object; returns it."""
    doc = {"bench": name, "machine": machine(), "results": results, "ratios": ratios}
    if extra:
        doc |= extra
    text = json.dumps(doc, indent=2, default=str)
    print(text)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    return doc
