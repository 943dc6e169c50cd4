"""Virtual environments under build/ for tools whose pins clash with Candor's (FiftyOne, label-studio-sdk), built
on first use and driven by subprocess. A test module skips only when the package index cannot be
reached to build one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
FIFTYONE = "fiftyone==1.22.1"


def venv(name: str, requirement: str, probe: str) -> Path:
    """The python of build/<name>-venv with ``requirement`` installed (``probe`` imports it)."""
    env_dir = BUILD / f"{name}-venv"
    python = env_dir / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", f"import {probe}"], capture_output=True).returncode == 0:
        return python
    BUILD.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", env_dir], check=True)
    done = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", requirement],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        if (
            "No matching distribution" in done.stderr
            or "Could not fetch" in done.stderr
            or "NewConnection" in done.stderr
        ):
            pytest.skip(f"the package index is unreachable to install {requirement}", allow_module_level=True)
        raise RuntimeError(f"pip install {requirement} failed:\n{done.stderr[-4000:]}")
    return python


def _mongods(db_dir: Path) -> list[int]:
    """Pids of the MongoDB servers FiftyOne started on ``db_dir``."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"mongod") and str(db_dir).encode() in b" ".join(cmd):
            out.append(int(proc.name))
    return out


def stop_mongod(db_dir: Path, grace: float = 10.0) -> None:
    """Stop the MongoDB server FiftyOne left running on ``db_dir`` (by pid), if any."""
    pids = _mongods(db_dir)
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.2)
        pids = [p for p in pids if Path(f"/proc/{p}").exists()]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def run_fiftyone(python: Path, home: Path, command: dict) -> dict:
    """Run tests/fiftyone_tool.py with ``command`` in the FiftyOne environment; its JSON answer.
    The tool opens no fo.Dataset, so FiftyOne starts no MongoDB; should a change make it start one,
    its database lives under ``home`` and the server is stopped afterwards all the same."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "FIFTYONE_DATABASE_DIR": str(home / "db"),
        "FIFTYONE_DEFAULT_DATASET_DIR": str(home / "datasets"),
        "FIFTYONE_DO_NOT_TRACK": "true",
        "FIFTYONE_SHOW_PROGRESS_BARS": "false",
        "HOME": str(home),
    }
    env.pop("PYTHONPATH", None)
    try:
        done = subprocess.run(
            [python, str(ROOT / "tests" / "fiftyone_tool.py")],
            input=json.dumps(command),
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
    finally:
        stop_mongod(home / "db")
    if done.returncode != 0:
        raise RuntimeError(f"fiftyone_tool failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
