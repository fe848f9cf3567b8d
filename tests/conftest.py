"""Shared fixtures: the real CLIP tokenizer (shipped with the package) and tiny seeded random CLIPs.

The tokenizer files come from the packaged synthetic checkpoint, byte-identical to
``../shared/data/clip-tokenizer``, so these tests run in a plain clone; only annotation files and
photos are read from ``../shared`` (tests that need them skip with the path when it is absent).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from clipalign.checkpoints import SYNTHETIC_CLIP

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TOKENIZER_DIR = SYNTHETIC_CLIP
IMAGES_DIR = SHARED / "images"


def require(path: Path) -> Path:
    """Skip the calling test, saying which shared file is missing, when ``path`` is absent."""
    if not path.exists():
        pytest.skip(
            f"benchmark annotation file not found: {path}; put hat-trainval.json and nocaps-val-foil.json "
            "from the data/ folder of the ALOHa authors' repository (arXiv 2404.02904) there"
        )
    return path


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    """The real 49,408-token CLIP tokenizer (vocab.json, merges.txt, tokenizer_config.json)."""
    return TOKENIZER_DIR


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A seeded random 4-layer CLIP with the real tokenizer, saved with ``save_pretrained``."""
    from clipalign.testing import save_random_clip, tiny_clip_config

    return save_random_clip(tmp_path_factory.mktemp("tiny-clip"), tiny_clip_config(), tokenizer_dir, seed=0)


@pytest.fixture(scope="session")
def adapter(tiny_model_dir: Path):
    from clipalign import load_model

    return load_model(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def pointing_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A synthetic world of eight scenes (annotations file, images folder), written once per module: its
    pointing game (``pointing-synthetic``) and its word benchmark (``synthetic``) read the same files."""
    from clipalign.synthetic import write_dataset

    annotations = write_dataset(tmp_path_factory.mktemp("synthetic"), 8, seed=1)
    return annotations, annotations.parent / "images"


def eval_pointing(world: tuple[Path, Path], model_dir: Path, out: Path, *extra: str) -> int:
    """``clipalign eval pointing-synthetic`` on ``world`` with a 2-node quadrature; the exit status."""
    from clipalign.cli.main import main

    annotations, images = world
    argv = ["eval", "pointing-synthetic", "--annotations", str(annotations), "--images", str(images)]
    argv += ["--model", str(model_dir), "--out", str(out), "--no-progress", "--steps", "2", *extra]
    return main(argv)


def assert_close(x, y, where: str) -> None:
    """Nested rows (floats, lists, dicts) equal, floats to 1e-6: what two scans of the same input write."""
    if isinstance(x, float) and isinstance(y, float):
        assert math.isclose(x, y, abs_tol=1e-6), where
    elif isinstance(x, list) and isinstance(y, list):
        assert len(x) == len(y), where
        for u, v in zip(x, y, strict=True):
            assert_close(u, v, where)
    elif isinstance(x, dict) and isinstance(y, dict):
        assert x.keys() == y.keys(), where
        for k in x:
            assert_close(x[k], y[k], where)
    else:
        assert x == y, where


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: on a busy 2-core machine two threads can be 20× slower for tiny models."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
