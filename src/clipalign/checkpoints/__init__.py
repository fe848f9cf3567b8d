"""Checkpoints that ship inside the package (installed with it as package data), found offline by path."""

from pathlib import Path

SYNTHETIC_CLIP: Path = Path(__file__).parent / "synthetic-clip"
"""The small CLIP trained on :mod:`clipalign.synthetic` (load it with ``clipalign.load_model``); it also
holds the real CLIP tokenizer files (``vocab.json``, ``merges.txt``)."""
