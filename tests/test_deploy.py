"""The package deploys: the built wheel, installed into a fresh environment away from the source tree,
migrates an empty PostgreSQL database and serves; `keys create --embedded` writes where
`serve --embedded` reads; the Dockerfile and docker-compose.yml carry health checks, restart policies
and start order (checked with Debian's `docker-compose config`, which needs no Docker engine)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import httpx
import pytest
import yaml
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from app.core.migrate import alembic_config
from tests.service_fixtures import PG_ADMIN_URL

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ["CANDOR_BROKER_URL"]  # the test Redis database (conftest: CANDOR_TEST_REDIS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any CANDOR_ setting and without PYTHONPATH, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANDOR_") and k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)
    return env


def run(cmd: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{shlex.join(cmd)} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done


class Server:
    """`candor serve ...` as a subprocess; waits for GET /readyz to answer 200."""

    def __init__(self, cmd: list[str], *, env: dict[str, str], cwd: Path, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.log = cwd / f"serve-{port}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"candor serve exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                r = httpx.get(f"{self.base}/readyz", timeout=5)
                if r.status_code == 200:
                    return r
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        pytest.fail(f"/readyz not 200 within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def dockerfile_healthcheck() -> list[str]:
    """The exec-form command of the Dockerfile's HEALTHCHECK (the instruction may span lines)."""
    joined = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line for line in joined.splitlines() if line.startswith("HEALTHCHECK ")]
    assert len(lines) == 1, "the Dockerfile has exactly one HEALTHCHECK"
    return json.loads(lines[0].split(" CMD ", 1)[1])


def test_dockerfile_checks_readyz_as_a_non_root_user_and_installs_only_the_wheel():
    text_ = (ROOT / "Dockerfile").read_text()
    check = dockerfile_healthcheck()
    assert check[:2] == ["python", "-c"] and "/readyz" in check[2]
    users = [line.split()[1] for line in text_.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the final image runs as a non-root user"
    final_stage = text_.rsplit("\nFROM ", 1)[1]
    assert "COPY app" not in final_stage and "COPY worker" not in final_stage, "the image ships no source tree"
    copies = [line for line in text_.splitlines() if line.startswith("COPY ")]
    assert not [line for line in copies if "migrations" in line], "migrations come inside the package"


def test_the_wheel_migrates_and_serves_from_a_fresh_environment(tmp_path):
    """Build the wheel from a copy of the sources (what the image's build stage does), install it
    non-editable into a new virtual environment whose only other content is this environment's
    third-party packages, delete the sources, then `candor db upgrade` an empty database and
    `candor serve` from a folder outside the source tree until /readyz answers 200."""
    src, dist, venv, work = (tmp_path / n for n in ("src", "dist", "venv", "work"))
    src.mkdir()
    work.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in ("app", "worker", "candor"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dist), str(src)], env=clean_env(),
        cwd=work)  # fmt: skip
    (wheel,) = dist.glob("candor-*.whl")
    shutil.rmtree(src)
    # Alembic runs without its .ini (script_location is set in code), so check the wheel's content itself.
    shipped = set(zipfile.ZipFile(wheel).namelist())
    migrations = ROOT / "app" / "migrations"
    wanted = {"alembic.ini", "env.py", "script.py.mako"} | {
        f"versions/{p.name}" for p in migrations.glob("versions/*.py")
    }
    assert {f"app/migrations/{name}" for name in wanted} <= shipped
    assert {"candor/__init__.py", "candor/client.py", "candor/cli.py"} <= shipped  # the client, and `candor remote`

    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], env=clean_env(), cwd=work)
    vpy = venv / "bin" / "python"
    run([*pip, "--python", str(vpy), "install", "--no-deps", "--no-index", str(wheel)], env=clean_env(), cwd=work)
    site = Path(run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    env=clean_env(), cwd=work).stdout.strip())  # fmt: skip
    # The dependencies (torch & co.) come from this environment's site-packages as a plain path entry: its
    # .pth files, among them the editable install's finder that maps `app` to the source tree, stay unread.
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "candor-dependencies.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))

    env = clean_env()
    where = json.loads(run([str(vpy), "-c", (
        "import json, app, worker, app.core.migrate as m; "
        "print(json.dumps([app.__file__, worker.__file__, str(m.MIGRATIONS)]))"
    )], env=env, cwd=work).stdout)  # fmt: skip
    for path in where:
        assert Path(path).is_relative_to(site), f"{path} is not inside the new environment"
        assert not Path(path).is_relative_to(ROOT)

    db_name = f"candor_deploy_{os.getpid()}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{db_name}"'))
    db_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{db_name}"
    env = clean_env(CANDOR_DATABASE_URL=db_url, CANDOR_BROKER_URL=REDIS_URL, HOME=str(work))
    candor = str(venv / "bin" / "candor")
    server = None
    try:
        upgraded = run([candor, "db", "upgrade"], env=env, cwd=work)
        assert f"{db_name} is at the latest migration" in upgraded.stderr
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        migrated = create_engine(db_url)
        with migrated.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head
            assert conn.execute(text("SELECT count(*) FROM tenants")).scalar_one() == 0
        migrated.dispose()

        key = run([candor, "keys", "create", "--tenant", "deploy"], env=env, cwd=work).stdout.strip()
        port = free_port()
        # What the image runs (migrations at start are a no-op now), from the new environment's script.
        server = Server([candor, "serve", "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=work, port=port)
        ready = server.wait_ready()
        assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
        r = httpx.get(f"{server.base}/v1/datasets", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert r.status_code == 200, r.text
        # the web UI's templates and static files ship inside the wheel
        page = httpx.get(f"{server.base}/ui/login", timeout=10)
        assert page.status_code == 200 and 'id="key"' in page.text, page.text
        assert httpx.get(f"{server.base}/ui/static/review.js", timeout=10).status_code == 200

        # The image's HEALTHCHECK command, aimed at this server: exit 0 while ready, non-zero once it is gone.
        check = [str(vpy) if a == "python" else a.replace(":8000/", f":{port}/") for a in dockerfile_healthcheck()]
        assert subprocess.run(check, env=env, cwd=work, timeout=30).returncode == 0
        server.stop()
        assert subprocess.run(check, env=env, cwd=work, capture_output=True, timeout=30).returncode != 0
    finally:
        if server is not None:
            server.stop()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()


def test_keys_create_embedded_writes_where_serve_embedded_reads(tmp_path):
    data = tmp_path / "data"
    # Only CANDOR_DATA_DIR is set; the PostgreSQL default must not be touched.
    env = clean_env(CANDOR_DATA_DIR=str(data), HOME=str(tmp_path))
    created = run([sys.executable, "-m", "app.cli", "keys", "create", "--embedded", "--tenant", "acme"], env=env,
                  cwd=tmp_path)  # fmt: skip
    key = created.stdout.strip()
    assert key.startswith("cnd_")
    assert f"SQLite {data / 'candor.sqlite'}" in created.stderr
    assert (data / "candor.sqlite").is_file()

    port = free_port()
    server = Server([sys.executable, "-m", "app.cli", "serve", "--embedded", "--port", str(port)], env=env,
                    cwd=tmp_path, port=port)  # fmt: skip
    try:
        assert server.wait_ready().json()["checks"]["broker"] == "embedded"
        ok = httpx.get(f"{server.base}/v1/datasets", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert ok.status_code == 200, ok.text
        wrong = httpx.get(f"{server.base}/v1/datasets", headers={"Authorization": "Bearer cnd_x"}, timeout=10)
        assert wrong.status_code == 401
    finally:
        server.stop()


def test_database_label_never_shows_a_password():
    from app.cli import database_label

    assert (
        database_label("postgresql+psycopg://candor:s3cret@db:5432/candor")
        == "postgresql+psycopg://candor@db:5432/candor"
    )
    assert database_label("sqlite:////var/lib/candor/candor.sqlite") == "SQLite /var/lib/candor/candor.sqlite"


@pytest.fixture(scope="module")
def compose() -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("needs Debian's docker-compose (make compose-cli)")
    done = subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)["services"]


def test_compose_services_have_healthchecks_restart_policies_and_start_order(compose):
    assert {"postgres", "redis", "api", "worker-cpu", "worker-gpu", "beat"} <= set(compose)
    api = compose["api"]
    assert api["command"][:2] == ["candor", "serve"]
    assert api["healthcheck"]["test"][0] == "CMD" and "/readyz" in " ".join(api["healthcheck"]["test"])
    assert api["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    for name in ("api", "worker-cpu", "worker-gpu", "beat", "postgres", "redis"):
        assert compose[name].get("restart") in ("unless-stopped", "on-failure", "always"), name
    for name in ("worker-cpu", "worker-gpu", "beat"):
        # The api applies the migrations before it is healthy: nothing that uses the tables starts earlier.
        conditions = {dep: spec["condition"] for dep, spec in compose[name]["depends_on"].items()}
        assert conditions == {"postgres": "service_healthy", "redis": "service_healthy", "api": "service_healthy"}
    beat = compose["beat"]
    assert beat["command"] == ["candor", "beat"]
    assert "deploy" not in beat or beat["deploy"].get("replicas", 1) == 1
    for name in ("worker-gpu", "beat"):  # nothing answers the image's /readyz check in these containers
        assert compose[name]["healthcheck"]["test"] == ["NONE"], name
    for name in ("postgres", "redis"):
        assert compose[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
    redis_cmd = compose["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"


def test_compose_worker_healthcheck_pings_a_live_worker(compose, tmp_path):
    """The CPU worker's healthcheck command, run as Docker runs it (HOSTNAME = the container's host
    name): 0 against a running `candor worker`, non-zero when no worker has that name."""
    check = compose["worker-cpu"]["healthcheck"]["test"]
    assert check[0] == "CMD-SHELL"
    command = check[1].replace("$$", "$")  # `config` keeps the compose escape; the container's shell sees one $
    bin_dir = str(Path(sys.executable).parent)
    env = clean_env(CANDOR_BROKER_URL=REDIS_URL, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--queues", "cpu", "--concurrency", "1"],
                              env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        host = socket.gethostname()
        deadline = time.monotonic() + 90
        while True:
            done = subprocess.run(["sh", "-c", command], env={**env, "HOSTNAME": host}, capture_output=True,
                                  text=True, timeout=60)  # fmt: skip
            if done.returncode == 0:
                break
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, done.stdout + done.stderr
        assert "pong" in done.stdout
        other = subprocess.run(["sh", "-c", command], env={**env, "HOSTNAME": f"not-{host}"}, capture_output=True,
                               timeout=60)  # fmt: skip
        assert other.returncode != 0
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
