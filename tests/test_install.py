"""``pip install .`` into a fresh virtual environment outside the source tree, then
``from_pretrained`` on the repository's weights folder (scripts/check_install.py; ~10 s, no network:
the fresh environment sees this Python's installed dependencies)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_installed_package_loads_the_repository_weights(tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "check_install.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "install check passed" in res.stdout
    assert "/venv/lib/" in res.stdout and str(REPO) not in res.stdout.splitlines()[0].split(";")[0]
