"""Integrated Gradients on the image pixels (Sundararajan et al., 2017), computed with captum.

The attributed function is the cosine between the image embedding and the (fixed) text embedding; the
baseline is the all-zero image after normalisation (the processor's mean colour), the same image
reference as our interactions. Pixel attributions are summed over colour channels and over each patch's
pixels, so the patch map keeps IG's completeness: its sum is cos(x) − cos(baseline) up to captum's
convergence delta, which every result reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from clipalign.attribution.baselines.base import BaselineSettings, FirstOrderMethod, Prepared

IGRule = Literal["gausslegendre", "riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid"]


@dataclass(frozen=True, kw_only=True)
class IGSettings(BaselineSettings):
    """``steps`` points on the path from the baseline, placed by captum's ``method`` (Gauss–Legendre by
    default); ``internal_batch_size`` bounds how many path points go through the model at once."""

    steps: int = 20
    method: IGRule = "gausslegendre"
    internal_batch_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {self.steps}")

    def to_dict(self) -> dict[str, object]:
        out = super().to_dict()
        out.pop("internal_batch_size")
        return out


def pool_to_patches(pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Sum (B, C, H, W) pixel values over channels and over each of rows × cols patches → (B, rows·cols)."""
    batch, _, height, width = pixels.shape
    rows, cols = grid
    if height % rows or width % cols:
        raise ValueError(f"a {height}×{width} input does not split into a {rows}×{cols} patch grid")
    per_pixel = pixels.sum(1).reshape(batch, rows, height // rows, cols, width // cols)
    return per_pixel.sum((2, 4)).reshape(batch, rows * cols)


class IntegratedGradients(FirstOrderMethod):
    """IG of cos(image, text) with respect to the pixels, pooled to patches (needs the ``analysis`` extra).

    Example:
        >>> from clipalign.testing import tiny_model, example_image
        >>> method = IntegratedGradients(tiny_model(layers=2), steps=8)
        >>> [m] = method.attribute([example_image()], ["a red ball"])
        >>> bool(abs(m.values.sum() - m.details["target"]) <= abs(m.details["delta"]) + 1e-6)
        True
    """

    name = "ig"
    settings_class = IGSettings
    settings: IGSettings

    def _maps(self, group: Sequence[Prepared]) -> list[tuple[np.ndarray, dict[str, float]]]:
        from captum.attr import IntegratedGradients as CaptumIG

        model = self.model
        pixels = self._pixels(group).float()
        directions = self._directions(group)

        def cosine(inputs: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            return (torch.nn.functional.normalize(model.image_embeddings(inputs), dim=-1) * text).sum(-1)

        baseline = torch.zeros_like(pixels)
        with torch.enable_grad():
            attributions, delta = CaptumIG(cosine).attribute(
                pixels,
                baselines=baseline,
                additional_forward_args=(directions,),
                n_steps=self.settings.steps,
                method=self.settings.method,
                internal_batch_size=self.settings.internal_batch_size,
                return_convergence_delta=True,
            )
        with torch.no_grad():
            target = cosine(pixels, directions) - cosine(baseline, directions)
        patches = pool_to_patches(attributions.detach().double(), model.patch_grid)
        return [
            (grid, {"sum": float(grid.sum()), "target": float(t), "delta": float(d)})
            for grid, t, d in zip(self._grids(patches), target.tolist(), delta.tolist(), strict=True)
        ]
