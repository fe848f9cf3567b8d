"""Model-free reference maps: seeded random patch values and a centred Gaussian (the centre bias)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clipalign.attribution.baselines.base import BaselineSettings, FirstOrderMethod, Prepared


@dataclass(frozen=True, kw_only=True)
class RandomSettings(BaselineSettings):
    """``seed``: with the pair's caption, span and image size it decides the values, so a pair gets the
    same map alone or in any batch."""

    seed: int = 0


class RandomMap(FirstOrderMethod):
    """Standard-normal patch values, reproducible by seed: the floor any method must beat.

    Example:
        >>> from clipalign.testing import tiny_model, example_image
        >>> method = RandomMap(tiny_model(layers=2), seed=3)
        >>> [a], [b] = (method.attribute([example_image()], ["a red ball"]) for _ in range(2))
        >>> bool((a.values == b.values).all())
        True
    """

    name = "random"
    settings_class = RandomSettings
    settings: RandomSettings

    def _maps(self, group: Sequence[Prepared]) -> list[tuple[np.ndarray, dict[str, float]]]:
        grid = self.model.patch_grid
        out: list[tuple[np.ndarray, dict[str, float]]] = []
        for item in group:
            key = f"{item.caption}\0{item.span}\0{item.image.size}".encode()
            rng = np.random.default_rng([self.settings.seed, zlib.crc32(key)])
            out.append((rng.standard_normal(grid), {}))
        return out


@dataclass(frozen=True, kw_only=True)
class CentreSettings(BaselineSettings):
    """``sigma``: the Gaussian's standard deviation as a fraction of the grid's longer side."""

    sigma: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")


def centred_gaussian(grid: tuple[int, int], sigma: float) -> np.ndarray:
    """exp(−d² / 2s²) of each patch centre's distance d to the grid's centre, s = sigma · longer side."""
    rows, cols = grid
    y, x = np.arange(rows) - (rows - 1) / 2, np.arange(cols) - (cols - 1) / 2
    scale = sigma * max(rows, cols)
    return np.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * scale**2))


class CentreMap(FirstOrderMethod):
    """The same centred Gaussian for every pair: what a photographer's centre bias alone scores.

    Example:
        >>> from clipalign.testing import tiny_model, example_image
        >>> [m] = CentreMap(tiny_model(layers=2)).attribute([example_image()], ["a red ball"])
        >>> bool((m.values == m.values[::-1, ::-1]).all())
        True
    """

    name = "centre"
    settings_class = CentreSettings
    settings: CentreSettings

    def _maps(self, group: Sequence[Prepared]) -> list[tuple[np.ndarray, dict[str, float]]]:
        values = centred_gaussian(self.model.patch_grid, self.settings.sigma)
        return [(values.copy(), {}) for _ in group]
