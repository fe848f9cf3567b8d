"""The ``>>>`` examples in the public verbs' docstrings run, on tiny models from ``clipalign.testing``."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "clipalign.settings",
    "clipalign.text.alignment",
    "clipalign.metrics.functional",
    "clipalign.metrics.scores",
    "clipalign.attribution.words",
    "clipalign.attribution.interactions",
    "clipalign.testing",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no >>> examples"
    assert result.failed == 0
