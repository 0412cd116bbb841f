"""PostgreSQL fixtures (a pytest plugin, loaded by ``conftest.py``).

``postgres_url`` is one throw-away PostgreSQL cluster for the whole session: ``initdb`` into a
temporary folder, ``pg_ctl start`` on a free loopback port (and a Unix socket in that folder),
password authentication (SCRAM), and a database made for the tests; the fixture yields its
SQLAlchemy URL (``postgresql+psycopg://...``) and stops and removes the cluster at the end.
``postgres_database`` gives one test an empty database of its own on that cluster and drops
it afterwards. Where PostgreSQL or its driver is not installed they skip locally and fail in
CI (``need``).

PostgreSQL refuses to run as root, so under root the cluster's folder belongs to the
``postgres`` user and every server command runs through ``runuser -u postgres --``.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from services import need

START_S = 60.0  # a cold start on a loaded CI machine may be slow
STOP_S = 30.0
SUPERUSER = "elic"
DATABASE = "elic_hub"
DRIVER = "postgresql+psycopg"  # psycopg 3; SQLAlchemy 2.1's plain ``postgresql://`` too


def find_bin_dir() -> Path | None:
    """The folder of the newest installed ``initdb``/``pg_ctl``, or ``None``.

    Debian keeps them off ``PATH`` in ``/usr/lib/postgresql/<major>/bin``; elsewhere they are
    usually on ``PATH``.
    """
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    if found:
        return max(found, key=lambda p: _major(p.parent.name))
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("pg_ctl") is not None:
        return Path(initdb).parent
    return None


def _major(name: str) -> int:
    return int(name) if name.isdigit() else -1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """A PostgreSQL cluster in its own folder: ``data/``, the socket, the log, the password."""

    bin_dir: Path
    root: Path
    owner: str | None  # run server commands as this user (``None``: as ourselves)
    password: str = ""
    port: int = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = DATABASE) -> str:
        """The SQLAlchemy URL of ``database`` on this cluster (TCP on loopback)."""
        return f"{DRIVER}://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def run(self, *args: str, timeout: float = START_S) -> subprocess.CompletedProcess[str]:
        """Run one of the cluster's programs as its owner; never raises for an exit code."""
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.owner is not None:
            command = ["runuser", "-u", self.owner, "--", *command]
        return subprocess.run(
            command, cwd=self.root, capture_output=True, text=True, timeout=timeout, check=False
        )

    def init(self) -> None:
        """``initdb`` with a generated superuser password (UTF-8, C collation, no fsync)."""
        self.password = secrets.token_hex(16)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._own(pwfile)
        done = self.run(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "--pwfile", str(pwfile),
            "-A", "scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        if done.returncode != 0:
            pytest.fail(f"initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def start(self, tries: int = 3) -> None:
        """Start on a free port (another if that one was taken meanwhile), until it is ready."""
        for _ in range(tries):
            self.port = free_port()
            options = " ".join(
                [
                    f"-k {shlex.quote(str(self.root))}",  # the Unix socket lives here
                    f"-p {self.port}",
                    "-c listen_addresses=127.0.0.1",
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                    "-c max_connections=50",
                ]
            )
            done = self.run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(int(START_S)),
                "-o", options, "start", timeout=START_S + 10,
            )  # fmt: skip
            if done.returncode == 0:
                wait_ready(self.url("postgres"), START_S, self.log)
                return
            if "already in use" not in self.tail():
                break
        pytest.fail(f"PostgreSQL did not start:\n{done.stdout}{done.stderr}\n{self.tail()}")

    def stop(self) -> None:
        """Stop the server (fast, then immediate), then remove the folder."""
        try:
            if (self.data / "postmaster.pid").exists():
                done = self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w",
                                "-t", str(int(STOP_S)), "stop", timeout=STOP_S + 10)  # fmt: skip
                if done.returncode != 0:
                    self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def tail(self, lines: int = 30) -> str:
        """The end of the server log, for failure messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _own(self, path: Path) -> None:
        if self.owner is not None:
            user = pwd.getpwnam(self.owner)
            os.chown(path, user.pw_uid, user.pw_gid)
        path.chmod(0o700 if path.is_dir() else 0o600)


def wait_ready(url: str, timeout: float, log: Path | None = None) -> None:
    """Connect to ``url`` until the server answers ``SELECT 1``; fail the test at the deadline."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, connect_args={"connect_timeout": 2}, poolclass=NullPool)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                return
            except OperationalError as e:
                if time.monotonic() > deadline:
                    where = f"\n{log.read_text(errors='replace')[-3000:]}" if log else ""
                    pytest.fail(f"PostgreSQL not ready within {timeout:g} s: {e.orig}{where}")
                time.sleep(0.05)
    finally:
        engine.dispose()


def admin(url: str, statement: str) -> None:
    """Run one statement outside a transaction (``CREATE``/``DROP DATABASE`` need that)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()


def _owner() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        need("running as root and there is no `postgres` user to own the test cluster")
    if shutil.which("runuser") is None:
        need("running as root and `runuser` (util-linux) is missing")
    return "postgres"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The SQLAlchemy URL of an empty database on a throw-away PostgreSQL cluster."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        need("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        need("the PostgreSQL driver is not installed (pip install 'psycopg[binary]')")
    assert bin_dir is not None
    owner = _owner()
    # A short path in /tmp (world-traversable): the socket path must stay under 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="elic-pg-", dir="/tmp" if Path("/tmp").is_dir() else None))
    cluster = Cluster(bin_dir, root, owner)
    try:
        cluster._own(root)
        cluster.init()
        cluster.start()
        admin(cluster.url("postgres"), f"CREATE DATABASE {DATABASE}")
        yield cluster.url()
    finally:
        cluster.stop()


_NAME = re.compile(r"[^a-z0-9_]")


@pytest.fixture
def postgres_database(postgres_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a new, empty database for this test alone (dropped afterwards)."""
    from sqlalchemy.engine import make_url

    name = "t_" + _NAME.sub("_", request.node.name.lower())[:40] + "_" + secrets.token_hex(4)
    server = make_url(postgres_url)
    maintenance = server.set(database="postgres").render_as_string(hide_password=False)
    admin(maintenance, f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        admin(maintenance, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
