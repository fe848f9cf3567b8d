"""Start-up stays light: ``import clipalign`` and ``--help`` load no torch, transformers, torchmetrics,
matplotlib, pyarrow or ray (they take seconds); each command imports them only when it runs.

Checked by what a fresh interpreter has imported, not by wall time, which depends on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import clipalign

HEAVY = ("torch", "transformers", "torchmetrics", "matplotlib", "pyarrow", "ray")
COMMANDS = (
    "words",
    "score",
    "interactions",
    "eval",
    "scan",
    "report",
    "demo",
    "download",
    "models",
    "sweep",
    "finetune",
)
"""Every command, whose --help must stay light."""


def heavy_modules_after(code: str) -> list[str]:
    """The heavy top-level modules a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def help_code(*argv: str) -> str:
    """Python that prints ``clipalign ARGV --help`` as the console script would, and checks it exits 0."""
    return (
        "from clipalign.cli.main import main\n"
        "try:\n"
        f"    main([*{list(argv)!r}, '--help'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
    )


@pytest.mark.slow
def test_importing_the_package_and_the_cli_is_light():
    assert heavy_modules_after("import clipalign, clipalign.cli.main, clipalign.models") == []


@pytest.mark.slow
def test_top_level_help_is_light():
    assert heavy_modules_after(help_code()) == []


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_is_light(command):
    assert heavy_modules_after(help_code(command)) == []


@pytest.mark.slow
def test_a_public_name_loads_its_module_on_first_use():
    code = "import clipalign\nassert clipalign.CLIP4DM.__name__ == 'CLIP4DM'"
    assert "torch" in heavy_modules_after(code)


def test_lazy_exports_match_all():
    """Every name in ``__all__`` resolves, and nothing else is exported lazily."""
    assert set(clipalign.__all__) == {*clipalign._EXPORTS, "__version__"}
    for name in clipalign.__all__:
        assert getattr(clipalign, name) is not None
    assert set(dir(clipalign)) >= set(clipalign.__all__)
    from clipalign import CLIP4DM, ModelLoadError, load_model
    from clipalign.attribution import CLIP4DM as defined
    from clipalign.models.errors import ModelLoadError as error

    assert CLIP4DM is defined and ModelLoadError is error and callable(load_model)


def test_models_lazy_exports_match_all():
    import clipalign.models as models

    assert set(models.__all__) == set(models._EXPORTS)
    assert all(getattr(models, name) is not None for name in models.__all__)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        clipalign.nope  # noqa: B018


def test_the_benchmark_names_the_cli_lists_are_the_loaders():
    from clipalign.datasets import BENCHMARK_NAMES, BENCHMARKS

    assert tuple(sorted(BENCHMARKS)) == BENCHMARK_NAMES


@pytest.mark.slow
def test_models_command_is_light(tmp_path):
    """``clipalign models`` lists the families and reads the cache's config.json files without torch."""
    code = (
        "from clipalign.cli.main import main\n"
        f"assert main(['models', '--json', '--cache-dir', {str(tmp_path)!r}]) == 0\n"
    )
    assert heavy_modules_after(code) == []
