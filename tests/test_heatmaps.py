"""Heatmap geometry against the real image processor, box weights, spans, figures and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clipalign.attribution.interactions import TokenPatchInteractions
from clipalign.cli.main import main
from clipalign.images.geometry import box_patch_weights, grid_to_image
from clipalign.results import Completeness, Interactions, TokenGroup
from clipalign.text import find_span, split_words


def patch_box_in_original(geometry, grid, row, col):
    """Original-image box (x, y, w, h) of one patch."""
    _, _, crop_w, crop_h = geometry.crop
    pw, ph = crop_w / grid[1], crop_h / grid[0]
    (x0, x1), (y0, y1) = geometry.to_original(
        np.array([col * pw, (col + 1) * pw]), np.array([row * ph, (row + 1) * ph])
    )
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


@pytest.mark.parametrize("size", [(64, 48), (48, 80), (301, 97), (32, 32)])
def test_geometry_matches_the_image_processor(adapter, size):
    """Paint the original region our geometry assigns to one patch; that patch alone turns red in the
    pixels the model receives."""
    grid = adapter.patch_grid
    row, col = 2, 1
    geometry = adapter.image_geometry(*size)
    x, y, w, h = patch_box_in_original(geometry, grid, row, col)
    image = Image.new("RGB", size, (0, 0, 255))
    pixels = np.asarray(image).copy()
    pixels[int(np.ceil(y)) : int(np.floor(y + h)), int(np.ceil(x)) : int(np.floor(x + w))] = (255, 0, 0)
    model_input = adapter.preprocess([Image.fromarray(pixels)])[0]  # normalised (3, H, W)
    red = (model_input[0] > model_input[2]).float()
    rows, cols = grid
    patch = red.reshape(rows, red.shape[0] // rows, cols, red.shape[1] // cols).mean(dim=(1, 3))
    assert patch[row, col] > 0.6
    patch[row, col] = 0
    assert patch.max() < 0.4


def fake_result(adapter, size, row, col) -> Interactions:
    """A result whose only non-zero interaction is word 0 × patch (row, col)."""
    rows, cols = adapter.patch_grid
    matrix = np.zeros((3, rows * cols))
    matrix[1, row * cols + col] = 1.0
    return Interactions(
        caption="red square",
        tokens=["<|startoftext|>", "red</w>", "square</w>", "<|endoftext|>"][:3],
        words=[TokenGroup("red", 0, 3, [1]), TokenGroup("square", 4, 10, [2])],
        grid=(rows, cols),
        matrix=matrix,
        cls=np.zeros(3),
        completeness=Completeness(1, 1, 0, 0, 0, 0, 0),
        geometry=adapter.image_geometry(*size),
        text_block=0,
        image_block=0,
        steps=1,
        rule="gauss",
        normalize="cosine",
    )


@pytest.mark.parametrize("size", [(640, 480), (300, 900), (97, 301)])
def test_forced_interaction_lands_on_its_patch_in_the_original(adapter, size):
    row, col = 1, 3
    result = fake_result(adapter, size, row, col)
    heat = result.span_heatmap("red")
    assert heat.shape == (size[1], size[0])
    x, y, w, h = patch_box_in_original(result.geometry, result.grid, row, col)
    ys, xs = np.nonzero(np.nan_to_num(heat) > 0)
    assert xs.min() >= np.floor(x) and xs.max() <= np.ceil(x + w)
    assert ys.min() >= np.floor(y) and ys.max() <= np.ceil(y + h)
    assert len(xs) >= 0.8 * w * h
    # outside the centre crop nothing is drawn
    cx, cy, cw, ch = result.geometry.crop_in_original()
    px, py = np.arange(size[0]) + 0.5, np.arange(size[1]) + 0.5
    inside = ((py >= cy) & (py < cy + ch))[:, None] & ((px >= cx) & (px < cx + cw))[None, :]
    assert np.isnan(heat[~inside]).all() and not np.isnan(heat[inside]).any()
    assert result.span_heatmap("square")[~np.isnan(heat)].max() == 0


def test_box_weights(adapter):
    size = (640, 480)
    geometry = adapter.image_geometry(*size)
    grid = adapter.patch_grid
    x, y, w, h = patch_box_in_original(geometry, grid, 1, 2)
    weights = box_patch_weights((x, y, w, h), geometry, grid)
    assert weights[1, 2] == pytest.approx(1.0) and weights.sum() == pytest.approx(1.0)
    half = box_patch_weights((x, y, w / 2, h), geometry, grid)
    assert half[1, 2] == pytest.approx(0.5) and half.sum() == pytest.approx(0.5)
    result = fake_result(adapter, size, 1, 2)
    assert result.box_word_scores((x, y, w, h)) == [("red", pytest.approx(1.0)), ("square", 0.0)]
    with pytest.raises(ValueError, match="outside the 640×480 image"):
        box_patch_weights((600, 0, 100, 10), geometry, grid)
    with pytest.raises(ValueError, match="empty"):
        box_patch_weights((0, 0, 0, 10), geometry, grid)
    with pytest.raises(ValueError, match="centre crop"):
        box_patch_weights((0, 0, 40, 40), geometry, grid)  # the left band is cropped away


def test_grid_to_image_square_identity():
    from clipalign.images.geometry import ImageGeometry

    values = np.arange(4.0).reshape(2, 2)
    heat = grid_to_image(values, ImageGeometry((4, 4), (4, 4), (0, 0, 4, 4)))
    np.testing.assert_array_equal(heat, np.kron(values, np.ones((2, 2))))


def test_find_span():
    words = split_words("A black dog and a Black dog, sleeping.")
    assert find_span(words, "black dog") == [[1, 2], [5, 6]]
    assert find_span(words, "black DOG", occurrence=2) == [[5, 6]]
    assert find_span(words, [3]) == [[3]]
    with pytest.raises(ValueError, match="not in the caption"):
        find_span(words, "white dog")
    with pytest.raises(ValueError, match="occurs 2 time"):
        find_span(words, "black dog", occurrence=3)
    with pytest.raises(ValueError, match="out of range"):
        find_span(words, [12])


def test_span_rows_of_a_real_result(adapter):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    [result] = TokenPatchInteractions(adapter).attribute(image, "a snowboarder and a black dog")
    assert result.span_rows("snowboarder") == [2, 3]  # snow + boarder
    np.testing.assert_allclose(result.span_grid("snowboarder").ravel(), result.matrix[[2, 3]].sum(0))
    assert result.span_rows("a") == [1, 5]


@pytest.mark.slow
def test_cli_interactions_json_png_and_grid(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "dogs.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(path)
    caption = "A white husky and a black dog running."
    out = tmp_path / "span.png"
    argv = ["interactions", str(path), caption, "--model", str(tiny_model_dir), "--json"]
    assert main([*argv, "--span", "black dog", "--out", str(out), "--box", "10,5,30,40", "--steps", "6"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("tokens", "words", "grid", "matrix", "cls", "completeness"):
        assert key in data
    assert data["grid"] == [4, 4] and len(data["matrix"][0]) == 16
    total = np.sum(data["matrix"]) + np.sum(data["cls"])
    assert total == pytest.approx(data["completeness"]["sum"], rel=1e-9)
    assert abs(data["completeness"]["residual"]) < 1e-4 * abs(data["completeness"]["target"])
    assert [w["word"] for w in data["box"]["words"]] == [*caption[:-1].split(), "."]  # "." a word of its own
    assert Image.open(out).format == "PNG"
    grid = tmp_path / "grid.png"
    assert (
        main(
            ["interactions", str(path), caption, "--model", str(tiny_model_dir), "--grid", "--out", str(grid)]
        )
        == 0
    )
    assert Image.open(grid).size[0] > 400
    capsys.readouterr()
    assert main(["interactions", str(path), caption, "--model", str(tiny_model_dir), "--span", "cat"]) == 1
    assert "not in the caption" in capsys.readouterr().err


@pytest.mark.slow
def test_importing_the_heatmaps_leaves_the_matplotlib_backend_alone():
    code = (
        "import matplotlib, clipalign.viz.heatmap as h; from PIL import Image; "
        "h.save(h.Figure(), '/dev/null'); print(matplotlib.get_backend())"
    )
    env = {**os.environ, "MPLBACKEND": "svg"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert proc.stdout.strip() == "svg"


@pytest.mark.parametrize("size", [(70, 50), (40, 64)])
def test_word_grid_colour_bar_spans_the_panels_and_a_long_caption_wraps(adapter, size):
    """The grid's colour bar runs from the lowest image to the top row of images (not a short bar in
    the middle of a tall grid), and the caption above is wrapped to the grid's width."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from clipalign.viz.heatmap import word_grid_figure

    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    caption = "a traffic light showing red under a blue sky with white clouds drifting by " * 3
    [result] = TokenPatchInteractions(adapter, steps=2).attribute(image, caption)
    fig = word_grid_figure(image, result)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    images = [ax.get_window_extent(renderer) for ax in fig.axes if ax.get_images()]
    [bar] = [ax.get_window_extent(renderer) for ax in fig.axes if not ax.get_images() and ax.axison]
    top, bottom = max(b.y1 for b in images), min(b.y0 for b in images)
    assert bar.y0 == pytest.approx(bottom, abs=3)
    assert top - 3 <= bar.y1 <= top + 0.05 * (top - bottom) + 30  # up to the top row's word titles
    title = fig._suptitle
    assert title is not None and "\n" in title.get_text()
    extent = title.get_window_extent(renderer)
    assert extent.x0 >= 0 and extent.x1 <= fig.bbox.width
