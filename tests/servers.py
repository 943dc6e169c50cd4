"""Private PostgreSQL and Redis servers for tests that stop, kill or restart them.

The machine's shared servers are never touched: each helper starts a server of its own on a free
loopback port, in a temporary folder that it removes at the end.

    with PrivatePostgres() as pg:          # initdb + start; .url is a SQLAlchemy URL
        engine = create_engine(pg.url)
        pg.stop(); pg.start()              # clean shutdown and start, same port and data
        pg.kill(); pg.start()              # SIGKILL of every server process, then crash recovery

    with PrivateRedis() as redis:          # no persistence: a restart empties it
        redis.url; redis.restart(); redis.kill(); redis.start()

Both are also pytest fixtures (``private_postgres``, ``private_redis``): import them into a test
module. PostgreSQL refuses to run as root, so as root its programs run as the ``postgres`` user
(``runuser``), in a folder owned by that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, up: bool, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not go {'up' if up else 'down'} within {timeout} s")


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


class PrivatePostgres:
    """A throwaway PostgreSQL cluster (trust auth, user ``postgres``, database ``dbname``)."""

    def __init__(self, port: int | None = None, dbname: str = "candor"):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin")
        self.bin = Path(bins[-1]).parent
        self.port = port or free_port()
        self.dbname = dbname
        self.root = Path(tempfile.mkdtemp(prefix="candor-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._created = False

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.dbname}"

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr or done.stdout}")
        return done

    def _options(self) -> str:
        return f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"

    def start(self, timeout: float = 60) -> PrivatePostgres:
        """Start the cluster (initdb on first use) and wait until it accepts connections."""
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        self._run("pg_ctl", "start", "-w", "-t", str(int(timeout)), "-D", str(self.data), "-l", str(self.log),
                  "-o", self._options())  # fmt: skip
        if not self._created:
            self._run("createdb", "-h", str(self.root), "-p", str(self.port), "-U", "postgres", self.dbname)
            self._created = True
        return self

    def stop(self) -> None:
        """A fast shutdown (clients disconnected); the data stays."""
        self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data), check=False)
        _wait_port(self.port, up=False, timeout=30)

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend (what the OOM killer or a power cut does)."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return
        pid = int(pid_file.read_text().split()[0])
        procs = [pid, *_children(pid)]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        # A killed postmaster may linger as a zombie where nothing reaps orphans (a container's
        # PID 1); PostgreSQL would take it for a live server, so its lock files go too.
        pid_file.unlink(missing_ok=True)
        (self.root / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)
        _wait_port(self.port, up=False, timeout=30)

    def close(self) -> None:
        """Stop the cluster and delete its folder."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class PrivateRedis:
    """A throwaway redis-server without persistence (a restart or kill loses every key)."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="candor-redis-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> PrivateRedis:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(self.root), "--logfile", str(self.root / "server.log")]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, up=True, timeout=timeout)
        return self

    def stop(self) -> None:
        """SIGTERM and wait (no save: persistence is off)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None
        _wait_port(self.port, up=False, timeout=30)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None
        _wait_port(self.port, up=False, timeout=30)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.fixture
def private_postgres():
    """A started :class:`PrivatePostgres`, closed after the test."""
    with PrivatePostgres() as pg:
        yield pg


@pytest.fixture
def private_redis():
    """A started :class:`PrivateRedis`, closed after the test."""
    with PrivateRedis() as redis:
        yield redis
