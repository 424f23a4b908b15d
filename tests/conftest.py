"""Shared fixtures: tiny pairs and a warehouse built by the real pipeline; an S3 API
(moto's server on localhost) for results under an object-store URI."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Real Stack Exchange dump files (CC BY-SA; samples/stackexchange/SOURCES.md)
SE_SAMPLES = ROOT / "samples" / "stackexchange"
DBT_DIR = ROOT / "dbt_project"
# Fewer prompts than `make demo` scores, so the session fixture stays quick.
DEMO_VARS = "{prompt_per_group: 12}"


def env_for(db: Path | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    env["PYTHONPATH"] = str(ROOT)
    if db is not None:
        env["SFTSCOPE_DB"] = str(db)
    env.update(extra)
    return env


def run_py(*args: str, db: Path | None = None, check: bool = True, cwd: Path = ROOT,
           timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """`python -m ...` as a user runs it, in a subprocess."""
    proc = subprocess.run([sys.executable, *args], check=False, cwd=cwd,
                          env=env_for(db, **env), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\n{proc.stdout}\n"
                             f"{proc.stderr}")
    return proc


def query(db: Path, sql: str, params=None) -> list[tuple]:
    """Rows of `sql` from a short-lived read-only connection to `db`."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def run_dbt(db: Path, *args: str, check: bool = True,
            **env: str) -> subprocess.CompletedProcess:
    dbt = Path(sys.executable).with_name("dbt")
    proc = subprocess.run([str(dbt), *args], check=False, cwd=DBT_DIR,
                          env=env_for(db, **env), capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"dbt {' '.join(args)} failed\n{proc.stdout[-6000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def shared_dir(tmp_path_factory) -> Path:
    """The folder every process of this test run shares: under pytest-xdist (make
    test) each worker's temporary folder is a subfolder of the run's."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(folder: Path, build: Callable[[Path], object]) -> Path:
    """`folder`, made by `build(folder)` once per test run: the first process to ask
    builds it under a file lock, the others wait for it. A build that fails leaves
    no folder behind (the next to ask builds it again, and fails the same way)."""
    from filelock import FileLock

    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            try:
                build(folder)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            (folder / ".built").touch()
    return folder


def build_demo_pair(out: Path) -> None:
    from compute.fixtures.planted import build_pair

    build_pair(out)


def build_demo_warehouse(work: Path, pair: Path) -> None:
    """A warehouse built as `make demo` builds it (sample site, prompts, spectra,
    behaviour, the shipped demo pair's training log, dbt build), on the planted pair
    `pair` (named 'planted'), as `work/warehouse.duckdb`; demo_series_warehouse adds
    make demo's series."""
    db = work / "warehouse.duckdb"
    have_site = (ROOT / "ingest" / "demo_site.py").exists()
    if have_site:
        run_py("-m", "ingest.demo_site", str(work / "site"))
        run_py("-m", "ingest.stackexchange", str(work / "site"), "--site",
               "physics.demo", db=db)
    # the demo pair's log and training threads: the prompts leave those threads out
    run_py("-m", "ingest.training_log", str(ROOT / "models" / "demo"), "--pair",
           "demo", db=db)
    if have_site:
        run_dbt(db, "build", "--quiet", "--select", "+prompts", "--vars", DEMO_VARS)
    run_py("-m", "compute.run", "--base", str(pair / "base"), "--sft",
           str(pair / "sft"), "--name", "planted", "--out", str(work / "runs"),
           "--no-progress", "--traps",
           *([] if have_site else ["--skip-behaviour"]), db=db)
    run_dbt(db, "build", "--quiet", "--vars", DEMO_VARS)


def build_shared(shared: Path) -> None:
    """The demo pair and warehouse into `shared` (what the session fixtures read),
    each unless another process of the run built it already."""
    pair = built_once(shared / "demo_pair", build_demo_pair)
    built_once(shared / "demo_warehouse", lambda w: build_demo_warehouse(w, pair))


def pytest_collection_finish(session) -> None:
    """Under pytest-xdist, the first worker starts building the demo warehouse in a
    process of its own as soon as the tests are collected, so that no worker sits
    waiting for it when it reaches the first test that reads it (the modules that
    read it run last: pytest_collection_modifyitems)."""
    if os.environ.get("PYTEST_XDIST_WORKER") != "gw0" or not any(
            "demo_warehouse" in getattr(item, "fixturenames", ())
            for item in session.items):
        return
    shared = shared_dir(session.config._tmp_path_factory)
    with open(shared / "demo_warehouse.build.log", "w") as log:
        session.config._demo_builder = subprocess.Popen(
            [sys.executable, "-c", "import sys; from pathlib import Path; from "
             "tests.conftest import build_shared; build_shared(Path(sys.argv[1]))",
             str(shared)], cwd=ROOT, env=env_for(), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)


def pytest_sessionfinish(session, exitstatus) -> None:
    """The first worker waits for its builder (another worker may be waiting for
    the warehouse), or stops it with its subprocesses where the run was stopped."""
    builder = getattr(session.config, "_demo_builder", None)
    if builder is None or builder.poll() is not None:
        return
    if exitstatus == pytest.ExitCode.INTERRUPTED or session.shouldstop:
        os.killpg(builder.pid, signal.SIGKILL)
    builder.wait()


def pytest_addoption(parser) -> None:
    parser.addoption("--family-tail", action="store_true",
                     help="also run the family_tail tests (make test-families)")


def pytest_collection_modifyitems(config, items) -> None:
    """The modules that read the demo warehouse last (a stable sort: every module
    keeps its own order), so that its build overlaps the other modules' tests.
    The family_tail tests are deselected without --family-tail."""
    if not config.getoption("--family-tail"):
        tail = [item for item in items if item.get_closest_marker("family_tail")]
        if tail:
            config.hook.pytest_deselected(items=tail)
            items[:] = [item for item in items if item not in tail]
    readers = {item.module.__name__ for item in items
               if "demo_warehouse" in getattr(item, "fixturenames", ())
               and getattr(item, "module", None) is not None}
    items.sort(key=lambda item: getattr(item, "module", None) is not None
               and item.module.__name__ in readers)


def demo_series_argv() -> list[str]:
    """make demo's `compute.run --trajectory` line, read from the Makefile (so the
    tests run what make demo runs), its models/ paths made absolute."""
    lines = [line for line in (ROOT / "Makefile").read_text().splitlines()
             if "-m compute.run" in line and "--trajectory models/" in line]
    assert len(lines) == 1, "make demo runs one shipped series"
    args = lines[0].split("-m compute.run", 1)[1].split()
    return [str(ROOT / a) if a.startswith("models/") else a for a in args]


def build_demo_series_warehouse(work: Path, demo: Path) -> None:
    """The demo warehouse (`demo`) with make demo's series of the shipped demo SFT's
    checkpoints (models/demo-steps) run, loaded and built, as
    `work/warehouse.duckdb`."""
    db = work / "warehouse.duckdb"
    shutil.copyfile(demo / "warehouse.duckdb", db)
    run_py("-m", "compute.run", *demo_series_argv(), "--out", str(work / "runs"),
           "--no-progress", db=db)
    run_dbt(db, "build", "--quiet", "--vars", DEMO_VARS)


@pytest.fixture(scope="session")
def demo_series_warehouse(tmp_path_factory, demo_warehouse) -> Path:
    """The demo warehouse with make demo's trajectory (`demo-steps`; see
    build_demo_series_warehouse), once per test run; each process gets a copy."""
    shared = shared_dir(tmp_path_factory)
    built = built_once(shared / "demo_series_warehouse", lambda w: (
        build_demo_series_warehouse(w, shared / "demo_warehouse")))
    mine = tmp_path_factory.mktemp("demo_series_warehouse")
    shutil.copyfile(built / "warehouse.duckdb", mine / "warehouse.duckdb")
    if (built / "warehouse.duckdb.snapshots").exists():
        shutil.copytree(built / "warehouse.duckdb.snapshots",
                        mine / "warehouse.duckdb.snapshots", symlinks=True)
    return mine / "warehouse.duckdb"


@pytest.fixture(scope="session")
def demo_pair(tmp_path_factory) -> Path:
    """The planted pair (base/, sft/, planted.json; `--pair planted`), built once per
    test run. Read-only for tests."""
    return built_once(shared_dir(tmp_path_factory) / "demo_pair", build_demo_pair)


@pytest.fixture(scope="session")
def demo_warehouse(tmp_path_factory, demo_pair) -> Path:
    """A warehouse built as `make demo` builds it (build_demo_warehouse), once per test
    run; each process gets a copy of its own (the file and its published snapshot).
    Read-only for tests: copy it to change it."""
    built = built_once(shared_dir(tmp_path_factory) / "demo_warehouse",
                       lambda w: build_demo_warehouse(w, demo_pair))
    mine = tmp_path_factory.mktemp("demo_warehouse")
    shutil.copyfile(built / "warehouse.duckdb", mine / "warehouse.duckdb")
    if (built / "warehouse.duckdb.snapshots").exists():
        shutil.copytree(built / "warehouse.duckdb.snapshots",
                        mine / "warehouse.duckdb.snapshots", symlinks=True)
    return mine / "warehouse.duckdb"


class S3:
    """moto's S3 server on localhost and the URI options that reach it."""

    def __init__(self, port: int):
        import pyarrow.fs as pafs

        self.query = f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
        self.fs, _ = pafs.FileSystem.from_uri(
            f"s3://bkt?{self.query}&allow_bucket_creation=true")

    def root(self, prefix: str) -> str:
        return f"s3://bkt/{prefix}?{self.query}"

    def keys(self, prefix: str) -> dict[str, int]:
        """key -> size of every object under bkt/prefix."""
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(
            f"bkt/{prefix}", recursive=True, allow_not_found=True))
        return {i.path: i.size for i in infos if i.type == pafs.FileType.File}


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server in a process of its own on localhost (a bucket 'bkt'; dummy
    credentials), for one test module; tests using it are marked s3."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_EC2_METADATA_DISABLED": "true"}.items():
            mp.setenv(key, value)
        try:
            for _ in range(300):  # the server starts in a second or two
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                time.sleep(0.1)
            store = S3(port)
            store.fs.create_dir("bkt")
            yield store
        finally:
            server.terminate()
            server.wait(timeout=30)


def machine(monkeypatch, tmp_path, name: str) -> None:
    """The next run works in a staging folder of its own, as on another machine."""
    monkeypatch.setenv("SFTSCOPE_STAGING", str(tmp_path / "machines" / name))
