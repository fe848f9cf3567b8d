"""benchmarks/gpu.py: the smoke run writes complete results; missing packages are named or installed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def load_script() -> ModuleType:
    """benchmarks/gpu.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_package_is_named_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gpu = load_script()
    monkeypatch.setattr(gpu, "REQUIRED", {"numpy": "numpy", "no_such_module_xyz": "no-such-dist"})
    monkeypatch.setattr(gpu, "WHEELS", tmp_path)  # no wheels: nothing to install from
    with pytest.raises(SystemExit) as exit_info:
        gpu.ensure_dependencies()
    message = str(exit_info.value.code)
    assert message.startswith("missing Python packages: no-such-dist (") and "\n" not in message
    assert "numpy" not in message


def test_missing_package_is_installed_from_wheels_offline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gpu = load_script()
    (tmp_path / "no_such_dist-1.0-py3-none-any.whl").write_bytes(b"")
    monkeypatch.setattr(gpu, "REQUIRED", {"no_such_module_xyz": "no-such-dist"})
    monkeypatch.setattr(gpu, "WHEELS", tmp_path)
    calls: list[list[str]] = []
    monkeypatch.setattr(gpu.subprocess, "run", lambda command, check: calls.append(command))
    with pytest.raises(SystemExit, match="missing Python packages: no-such-dist"):
        gpu.ensure_dependencies()  # the fake install installs nothing, so it is still missing
    [command] = calls
    assert command[:3] == [sys.executable, "-m", "pip"] and command[-1] == "no-such-dist"
    assert "--no-index" in command and command[command.index("--find-links") + 1] == str(tmp_path)


@pytest.mark.slow
def test_quick_run_writes_complete_results(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--results-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_cpu_smoke.json").read_text())
    table = (tmp_path / "gpu_cpu_smoke.md").read_text()
    assert report["settings"]["quick"] and "tiny-model smoke run" in table
    tiny = report["models"]["tiny"]["dtypes"]
    assert set(tiny) == {"fp32", "bf16"}  # no fp16 on CPU
    for dtype, cell in tiny.items():
        model_only = cell["model_only"]
        for batch in ("8", "32"):
            result = model_only["batches"][batch]
            assert "error" not in result, result
            assert result["pairs_per_s"]["attribution"] > 0 and result["attribution_peak_mib"] > 0
            assert f"| tiny | {dtype} | {batch} |" in table
        assert model_only["largest_over_batch1"] > 0
        assert cell["interactions"]["ms_per_pair"] > 0
        assert cell["interactions"]["steps"] == 10
        assert cell["interactions"]["batch"] == 2 and cell["interactions"]["ms_per_pair_batch1"] > 0
        assert f"| tiny | {dtype} | 10 | gauss | 2 | 2 |" in table
        assert set(cell.get("end_to_end", {})) == ({"shards", "files"} if dtype == "bf16" else set())
        for run in cell.get("end_to_end", {}).values():
            assert "error" not in run, run
            assert run["pairs_per_s"] > 0 and run["over_model_only"] > 0
    agreement = tiny["bf16"]["agreement"]
    assert agreement["pairs"] == 64 and 0 <= agreement["identical_flags"] <= 1
    assert -1 <= agreement["mean_spearman"] <= 1
    assert "fp32" not in {k for k, v in tiny.items() if "agreement" in v}
