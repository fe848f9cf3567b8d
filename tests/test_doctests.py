"""The ``>>>`` examples in the public verbs' docstrings run, on tiny models from ``clipalign.testing``."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

import clipalign

MODULES = [
    "clipalign.settings",
    "clipalign.text.alignment",
    "clipalign.metrics.functional",
    "clipalign.metrics.scores",
    "clipalign.attribution.words",
    "clipalign.attribution.interactions",
    "clipalign.attribution.fixlip",
    "clipalign.evaluation.sweep",
    "clipalign.testing",
]

ELSEWHERE = {
    f"clipalign.attribution.baselines.{name}"
    for name in ("maskclip", "gradeclip", "ig", "clipsurgery", "reference")
}
"""Modules whose examples run in their own test file (tests/test_baselines.py)."""


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no >>> examples"
    assert result.failed == 0


def test_every_module_with_examples_is_run():
    """A module given ``>>>`` examples later is listed here, or its examples would never run."""
    root = Path(clipalign.__file__).parent
    with_examples = {
        ".".join(path.relative_to(root.parent).with_suffix("").parts)
        for path in root.rglob("*.py")
        if ">>> " in path.read_text(encoding="utf-8")
    }
    assert with_examples == set(MODULES) | ELSEWHERE
