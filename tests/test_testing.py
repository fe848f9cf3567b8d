"""clipalign.testing: the one-call tiny model builds offline and is seeded (its examples run in
test_doctests.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from clipalign.models import ClipAdapter
from clipalign.testing import tiny_model
from clipalign.text.alignment import DEFAULT_TEMPLATE


def _embedding(model: ClipAdapter) -> torch.Tensor:
    """The text embedding of one caption (the tokenizer must still work after its folder is gone)."""
    inputs = model.collate(model.encode_captions(["a red circle on the left"], DEFAULT_TEMPLATE))
    return model.text_embeddings(inputs).embeds


def test_tiny_model_is_seeded_and_keeps_a_given_directory(tmp_path: Path) -> None:
    kept = tiny_model(tmp_path / "kept", seed=1, layers=2)
    assert (tmp_path / "kept" / "model.safetensors").exists()
    assert kept.num_text_layers == 2
    again, other = tiny_model(seed=1, layers=2), tiny_model(seed=2, layers=2)
    assert not Path(again.name).exists()
    assert torch.equal(_embedding(kept), _embedding(again))
    assert not torch.equal(_embedding(kept), _embedding(other))
