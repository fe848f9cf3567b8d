"""Checkpoints that ship inside the package (installed with it as package data), found offline by path."""

from pathlib import Path

SYNTHETIC_CLIP: Path = Path(__file__).parent / "synthetic-clip"
"""The small CLIP trained on :mod:`clipalign.synthetic`: ``clipalign.load_model("synthetic")`` and
``--model synthetic`` load it, offline (``examples/synthetic/`` has scenes it understands). It also holds
the real CLIP tokenizer files (``vocab.json``, ``merges.txt``)."""

SYNTHETIC_SIGLIP: Path = Path(__file__).parent / "synthetic-siglip"
"""The small SigLIP (``SiglipModel``, sigmoid loss) trained on the same world:
``clipalign.load_model("synthetic-siglip")`` and ``--model synthetic-siglip`` load it, offline. It holds
its own tokenizer (``tokenizer.json``, trained on the synthetic words; other words are spelled in bytes)."""
