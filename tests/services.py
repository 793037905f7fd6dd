"""Real servers for the scale-out tests, on 127.0.0.1 only: a throwaway PostgreSQL (the database
a tuning cluster shares its Optuna study in) and an `mlflow server` (where a team tracks runs).

Each is started the first time a test asks for it, once per pytest process (every pytest-xdist
worker has its own, on its own free port), and stopped when that process ends.
"""

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require, skip_or_fail

# Debian's `postgresql` package keeps initdb and pg_ctl off PATH, one folder per major version.
DEBIAN_POSTGRES = Path("/usr/lib/postgresql")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: PATH's, else Debian's newest version."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    found = sorted(DEBIAN_POSTGRES.glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def postgres_account() -> dict:
    """subprocess arguments that run PostgreSQL's tools as an ordinary user: the server refuses
    to run as root, so as root they run as Debian's `postgres` system user."""
    if os.geteuid() != 0:
        return {}
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        skip_or_fail("PostgreSQL will not run as root, and there is no `postgres` user to run it")
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL (`postgresql+psycopg2://postgres@127.0.0.1:<port>/pipeline`) of a fresh
    database on a PostgreSQL server of its own, which trusts loopback connections and no other.

    The data folder lives in the system's temp folder rather than pytest's, which only its owner
    may enter: as root the server runs as `postgres` and could not reach it.
    """
    psycopg2 = require("psycopg2", "track")
    bin_dir = postgres_bin()
    if bin_dir is None:
        skip_or_fail("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
    account = postgres_account()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="pytest-postgres-") as folder:
        data = Path(folder) / "data"
        data.mkdir(mode=0o700)
        if account:
            os.chown(folder, account["user"], account["group"])
            os.chown(data, account["user"], account["group"])

        def run(*command: str) -> None:
            done = subprocess.run(
                [str(bin_dir / command[0]), *command[1:]],
                cwd=folder,
                capture_output=True,
                text=True,
                check=False,
                **account,
            )
            if done.returncode != 0:
                log = data / "server.log"
                log_text = log.read_text() if log.exists() else ""
                pytest.fail(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}{log_text}")

        run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        # Loopback only, no unix socket; a throwaway server need not survive a power cut.
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )
        run("pg_ctl", "-D", str(data), "-l", str(data / "server.log"), "-w", "-t", "60", "start")
        try:
            admin = psycopg2.connect(
                host="127.0.0.1", port=port, user="postgres", dbname="postgres"
            )
            admin.autocommit = True  # CREATE DATABASE runs outside a transaction
            admin.cursor().execute("CREATE DATABASE pipeline")
            admin.close()
            yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/pipeline"
        finally:
            run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with its store and artifacts in `folder`. stop() and start()
    keep the port and the store: a tracking server that goes away and comes back."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen | None = None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def listening(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def start(self, timeout: float = 120) -> None:
        if self._process is not None:
            return
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--workers", "1"]
        command += ["--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}"]
        command += ["--artifacts-destination", str(self.folder / "artifacts")]
        log = self.folder / "server.log"
        with log.open("ab") as out:
            self._process = subprocess.Popen(
                command,
                cwd=self.folder,
                # No telemetry, and no job runner (a third process only GenAI features use).
                env={
                    **os.environ,
                    "MLFLOW_DISABLE_TELEMETRY": "true",
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                },
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its uvicorn worker goes down with it
            )
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"mlflow server did not answer on {self.url}:\n{log.read_text()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self._process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, sig)
            try:
                self._process.wait(timeout=15)
                break
            except subprocess.TimeoutExpired:
                continue
        self._process = None
        # Its uvicorn worker may outlive it by a moment; start() must not find the old one.
        deadline = time.monotonic() + 15
        while self.listening() and time.monotonic() < deadline:
            time.sleep(0.1)

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """The server is away inside the block and back after it, even if the block fails."""
        self.stop()
        try:
            yield
        finally:
            self.start()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[MlflowServer]:
    """A running MlflowServer; a test that stops it uses `with mlflow_server.stopped():`, so
    the tests after it find it running. Experiment names must be unique: the server is shared."""
    require("mlflow", "track")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
