"""Every script in benchmarks/ imports: a renamed constant or function they share breaks them at once, and
README quotes their results, so a script that no longer runs must fail here, not on a user's machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_imports(script: str):
    proc = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.argv = ['{script}']; import {script}"],
        cwd=BENCHMARKS,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
