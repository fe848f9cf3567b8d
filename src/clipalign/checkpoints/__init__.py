"""Checkpoints that ship inside the package (installed with it as package data), found offline by path."""

from pathlib import Path

SYNTHETIC_CLIP: Path = Path(__file__).parent / "synthetic-clip"
"""The small CLIP trained on :mod:`clipalign.synthetic`: ``clipalign.load_model("synthetic")`` and
``--model synthetic`` load it, offline (``examples/synthetic/`` has scenes it understands). It also holds
the real CLIP tokenizer files (``vocab.json``, ``merges.txt``)."""
