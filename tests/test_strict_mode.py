"""Strict mode (`GRIT_HF_STRICT_TESTS=1`, set by `.ci/run`): a skip for a missing dependency or data fails, whether it
happens in a test or while a module is collected; a GPU-only skip does not. Run on probe files in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PROBES = {
    "test_missing_package.py": "import pytest\npytest.importorskip('no_such_package_xyz')\n",
    "test_skips.py": (
        "import pytest\n\n\ndef test_data():\n    pytest.skip('needs the shared data folder')\n\n\n"
        "def test_gpu():\n    pytest.skip('needs CUDA')\n"
    ),
}


def test_strict_mode_fails_skips_in_tests_and_at_collection(tmp_path):
    for name, text in PROBES.items():
        (tmp_path / name).write_text(text)
    env = {**os.environ, "GRIT_HF_STRICT_TESTS": "1", "PYTHONPATH": str(TESTS)}
    command = [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q", "-rA", str(tmp_path)]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 1, result.stdout
    assert "1 failed" in summary and "1 skipped" in summary and "1 error" in summary, result.stdout
    assert "[NOT ALLOWED in strict mode] needs the shared data folder" in result.stdout
    assert "skips by reason" in result.stdout and "[allowed] needs CUDA" in result.stdout
