"""Embedded mode end to end, as `make demo` drives it: `candor keys create`, `candor serve --embedded`
(SQLite, in-process worker, no PostgreSQL or Redis), ZIP import, a job, labels and /predict."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from app.ml.datasets import FASHION_MNIST_DIR


@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="needs Debian dataset-fashion-mnist (make data)")
def test_demo_through_embedded_service(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANDOR_")}
    cmd = [sys.executable, "-m", "app.demo", "--dir", str(tmp_path), "--n", "40", "--backbone", "tiny",
           "--epochs", "2", "--predict", "8"]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "imports: 40 created, 0 unchanged" in out
    assert re.search(r"Candor \(proden \+ alignment\)\s+\d+ / 40", out)
    assert re.search(r"predict on 8 unseen test images: \d+/8", out)
    assert (tmp_path / "service" / "candor.sqlite").is_file()
    # a second run reuses the embedded database: images are deduplicated, features cached
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
