"""Geometry between an original image, the model's resized-and-cropped input, and its patch grid."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Box = tuple[float, float, float, float]
"""(x, y, width, height) in original-image pixels."""


@dataclass(frozen=True)
class ImageGeometry:
    """How the preprocessor maps an original image to the model's input: resize, then a centre crop.

    ``original`` and ``resized`` are (width, height); ``crop`` is (left, top, width, height) in the
    resized image. The crop is the model input, split into the patch grid.
    """

    original: tuple[int, int]
    resized: tuple[int, int]
    crop: tuple[int, int, int, int]

    def to_input(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Original-image pixel coordinates → model-input pixel coordinates (may fall outside the crop)."""
        left, top, _, _ = self.crop
        sx, sy = self.resized[0] / self.original[0], self.resized[1] / self.original[1]
        return np.asarray(x) * sx - left, np.asarray(y) * sy - top

    def to_original(self, u: np.ndarray | float, v: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Model-input pixel coordinates → original-image pixel coordinates."""
        left, top, _, _ = self.crop
        sx, sy = self.original[0] / self.resized[0], self.original[1] / self.resized[1]
        return (np.asarray(u) + left) * sx, (np.asarray(v) + top) * sy

    def crop_in_original(self) -> Box:
        """The region of the original image the model sees, as (x, y, width, height)."""
        _, _, w, h = self.crop
        (x0, x1), (y0, y1) = self.to_original(np.array([0.0, w]), np.array([0.0, h]))
        return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


def grid_to_image(values: np.ndarray, geometry: ImageGeometry) -> np.ndarray:
    """Spread per-patch values (rows, cols) over the original image's pixels (H, W).

    Each original pixel takes the value of the patch its centre falls in; pixels outside the centre
    crop the model sees are NaN.
    """
    rows, cols = values.shape
    width, height = geometry.original
    _, _, crop_w, crop_h = geometry.crop
    u, _ = geometry.to_input(np.arange(width) + 0.5, 0.0)
    _, v = geometry.to_input(0.0, np.arange(height) + 0.5)
    col = np.floor(u / (crop_w / cols)).astype(np.int64)
    row = np.floor(v / (crop_h / rows)).astype(np.int64)
    valid = (row[:, None] >= 0) & (row[:, None] < rows) & (col[None, :] >= 0) & (col[None, :] < cols)
    out = values[np.clip(row, 0, rows - 1)[:, None], np.clip(col, 0, cols - 1)[None, :]].astype(np.float64)
    out[~valid] = np.nan
    return out


def box_patch_weights(box: Box, geometry: ImageGeometry, grid: tuple[int, int]) -> np.ndarray:
    """Fraction of each patch (rows, cols) covered by an original-image box, after resize and crop.

    Raises ValueError when the box is empty, leaves the image, or misses the crop the model sees.
    """
    x, y, w, h = box
    width, height = geometry.original
    if not all(math.isfinite(v) for v in box):
        raise ValueError(f"box {box} must be four finite numbers (x, y, w, h)")
    if w <= 0 or h <= 0:
        raise ValueError(f"box {box} is empty: width and height must be > 0")
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"box {box} (x, y, w, h) is outside the {width}×{height} image")
    rows, cols = grid
    _, _, crop_w, crop_h = geometry.crop
    (u0, u1), (v0, v1) = geometry.to_input(np.array([x, x + w]), np.array([y, y + h]))
    pw, ph = crop_w / cols, crop_h / rows
    col_lo, row_lo = np.arange(cols) * pw, np.arange(rows) * ph
    overlap_u = np.clip(np.minimum(u1, col_lo + pw) - np.maximum(u0, col_lo), 0, None)
    overlap_v = np.clip(np.minimum(v1, row_lo + ph) - np.maximum(v0, row_lo), 0, None)
    weights = np.outer(overlap_v / ph, overlap_u / pw)
    if not weights.any():
        raise ValueError(
            f"box {box} lies outside the centre crop the model sees ({geometry.crop_in_original()})"
        )
    return weights
