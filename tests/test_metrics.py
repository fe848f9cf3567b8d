"""CLIPScore against torchmetrics; RefCLIPScore and F-CLIPScore against their formulas written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.multimodal.clip_score import CLIPScore as TorchmetricsCLIPScore
from transformers import CLIPProcessor

from clipalign import CLIP4DM, CLIPScore, FCLIPScore, RefCLIPScore
from clipalign.metrics import (
    clip_score,
    f_clip_score,
    image_text_cosine,
    ref_clip_score,
    reference_cosines,
)


def images(n: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, 36 + 4 * i, 44), generator=gen, dtype=torch.uint8) for i in range(n)]


CAPTIONS = ["a dog on a couch", "two red apples.", "a snowboarder jumps", "an empty street at night"]


class _FeaturesAsTensors(torch.nn.Module):
    """transformers 5 returns output objects from get_*_features; torchmetrics 1.9 expects tensors."""

    def __init__(self, clip: torch.nn.Module) -> None:
        super().__init__()
        self.clip = clip
        self.config = clip.config

    def get_image_features(self, *args, **kwargs):
        return self.clip.get_image_features(*args, **kwargs).pooler_output

    def get_text_features(self, *args, **kwargs):
        return self.clip.get_text_features(*args, **kwargs).pooler_output


def test_clipscore_matches_torchmetrics(adapter):
    processor = CLIPProcessor(image_processor=adapter.image_processor, tokenizer=adapter.tokenizer)
    theirs = TorchmetricsCLIPScore(model_name_or_path=lambda: (_FeaturesAsTensors(adapter.model), processor))
    for image, caption in zip(images(4), CAPTIONS, strict=True):
        theirs.reset()
        theirs.update(image, caption)  # 100·max(cos, 0) on the raw caption
        ours = CLIPScore(adapter, template="")
        ours.update([image], [caption])
        assert float(ours.compute()) / 2.5 == pytest.approx(float(theirs.compute()) / 100, abs=1e-6)


def test_clipscore_is_the_mean_of_the_formula(adapter):
    imgs = images(4)
    cos = image_text_cosine(adapter, imgs, CAPTIONS)
    metric = CLIPScore(adapter)
    metric.update(imgs[:2], CAPTIONS[:2])
    metric.update(imgs[2:], CAPTIONS[2:])
    expected = np.mean([2.5 * max(float(c), 0.0) for c in cos])
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-6)
    [result] = CLIP4DM(adapter).attribute([imgs[0]], [CAPTIONS[0]])
    assert result.cosine == pytest.approx(float(cos[0]), abs=1e-6)


def harmonic(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def test_refclipscore_formula_hessel_and_clip4dm():
    cos = torch.tensor([0.30, -0.10, 0.25])
    refs = torch.tensor([[0.20, 0.60, 0.0], [0.90, 0.10, 0.0], [-0.3, -0.2, -0.5]])
    mask = torch.tensor([[True, True, False], [True, True, False], [True, True, True]])
    got = ref_clip_score(cos, refs, mask)
    expected = [harmonic(0.75, 0.60), harmonic(0.0, 0.90), harmonic(0.625, 0.0)]
    assert got.tolist() == pytest.approx(expected)
    got4dm = ref_clip_score(cos, refs, mask, convention="clip4dm")
    assert got4dm.tolist() == pytest.approx([harmonic(0.75, 0.5), harmonic(0.0, 2.25), harmonic(0.625, 0.0)])
    with pytest.raises(ValueError, match="convention"):
        ref_clip_score(cos, refs, mask, convention="other")


def test_refclipscore_padding_does_not_count():
    cos = torch.tensor([0.3])
    refs = torch.tensor([[0.1, 0.95]])
    assert float(ref_clip_score(cos, refs, torch.tensor([[True, False]]))) == pytest.approx(
        harmonic(0.75, 0.1)
    )


def test_refclipscore_uses_the_best_of_all_references(adapter):
    imgs = images(2)
    captions = CAPTIONS[:2]
    references = [["a dog lies on a sofa", "a cat", "a puppy on a couch"], ["apples"]]
    cos = image_text_cosine(adapter, imgs, captions)
    ref_cos, mask = reference_cosines(adapter, captions, references)
    assert ref_cos.shape == (2, 3) and mask.tolist() == [[True, True, True], [True, False, False]]
    # each reference cosine equals one computed pair by pair
    for i, refs in enumerate(references):
        for j, ref in enumerate(refs):
            single, _ = reference_cosines(adapter, [captions[i]], [[ref]])
            assert float(ref_cos[i, j]) == pytest.approx(float(single[0, 0]), abs=1e-6)
    metric = RefCLIPScore(adapter)
    metric.update(imgs, captions, references)
    expected = np.mean(
        [
            harmonic(2.5 * max(float(cos[i]), 0), max(max(float(x) for x in ref_cos[i, : len(r)]), 0))
            for i, r in enumerate(references)
        ]
    )
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="at least one reference"):
        metric.update(imgs[:1], captions[:1], [[]])


def test_f_clipscore_formula():
    cos = torch.tensor([0.4, -0.2])
    scores = torch.tensor([[-1e-4, 2e-4, -3e-4], [-5e-4, 0.0, 0.0]])
    misaligned = torch.tensor([[True, False, True], [False, False, False]])
    got = f_clip_score(cos, scores, misaligned)
    assert got.tolist() == pytest.approx([(1 - 0.4) * (-4e-4), 0.0])
    assert clip_score(cos).tolist() == pytest.approx([1.0, 0.0])


def test_f_clipscore_metric_is_mean_of_per_pair_results(adapter):
    imgs = images(4, seed=3)
    results = CLIP4DM(adapter, epsilon=0.0).attribute(imgs, CAPTIONS)
    expected = []
    for r in results:
        total = sum(w.score for w in r.words if w.misaligned)
        expected.append((1 - max(r.cosine, 0)) * total)
    assert any(e < 0 for e in expected)
    metric = FCLIPScore(adapter, epsilon=0.0)
    metric.update(imgs, CAPTIONS)
    assert float(metric.compute()) == pytest.approx(np.mean(expected), rel=1e-6)
    assert math.isfinite(float(metric.compute()))
