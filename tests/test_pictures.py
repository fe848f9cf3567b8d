"""Pictures of word alignments (HTML and PNG), their colours, the CLI options, and the shipped examples."""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import io
import json
import re
import warnings
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.colors import to_hex, to_rgb
from PIL import Image

from clipalign import CLIP4DM
from clipalign.cli.main import main
from clipalign.results import WordAlignment
from clipalign.viz.heatmap import CMAP, save
from clipalign.viz.html import page_html
from clipalign.viz.palette import score_colours, score_norm
from clipalign.viz.words_png import words_figure

ROOT = Path(__file__).resolve().parents[1]
CAPTION = 'a <script>alert("x")</script> & green apple'


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.open(ROOT / "examples" / "apple_and_cup.png").convert("RGB")


@pytest.fixture(scope="module")
def result(adapter, image) -> WordAlignment:
    """A real alignment whose lower half of the words is flagged (ε at the median score)."""
    [scored] = CLIP4DM(adapter).attribute([image], [CAPTION])
    epsilon = float(np.median([w.score for w in scored.words]))
    [flagged] = CLIP4DM(adapter, epsilon=epsilon).attribute([image], [CAPTION])
    assert 0 < len(flagged.misaligned_words) < len(flagged.words)
    return flagged


def test_colours_diverge_around_zero_like_the_heatmaps():
    colours = score_colours([-2.0, -1.0, 0.0, 1.0, 2.0])
    cmap = colormaps[CMAP]
    assert colours[0] == to_hex(cmap(0.0)) and colours[-1] == to_hex(cmap(1.0))
    assert colours[2] == to_hex(cmap(0.5))
    (r0, g0, _), (r4, g4, _) = to_rgb(colours[0]), to_rgb(colours[-1])
    assert r0 > g0 and g4 > r4  # magenta contradicts, green supports
    assert score_norm([-0.5, 2.0]).vmin == -2.0  # symmetric: the largest |score| sets both ends
    assert score_colours([]) == []


def test_html_page_is_self_contained_escaped_and_marks_misaligned_words(result, image):
    html = page_html(image, result, model="tiny")
    assert "<script" not in html and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html) and "<link" not in html
    [url] = re.findall(r'src="(data:image/jpeg;base64,[^"]+)"', html)
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == image.size
    assert html.count('class="ca-word ca-misaligned"') == len(result.misaligned_words)
    assert html.count('class="ca-word') == len(result.words)
    for colour, word in zip(score_colours([w.score for w in result.words]), result.words, strict=True):
        assert f'data-score="{word.score:.6g}" style="background:{colour};' in html
    for text in (f"{result.cosine:.4f}", f"{result.clipscore:.4f}", f"{result.f_clipscore:.3e}", "tiny"):
        assert text in html


def test_html_strikes_out_words_cut_at_the_context(adapter, image):
    caption = " ".join(["apple"] * 90)
    with pytest.warns(UserWarning, match="dropped"):
        [cut] = CLIP4DM(adapter).attribute([image], [caption])
    html = page_html(image, cut)
    assert html.count('class="ca-word') == len(cut.words) and 'class="ca-cut"' in html


def test_png_picture_paints_each_word_in_its_colour(result, image, tmp_path):
    path = save(words_figure(image, result), tmp_path / "words.png")
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape[1] > 600 and picture.shape[0] > 500
    colours = score_colours([w.score for w in result.words])
    for colour in (colours[int(np.argmin([w.score for w in result.words]))], colours[-1]):
        rgb = np.round(np.array(to_rgb(colour)) * 255)
        assert (np.abs(picture.astype(int) - rgb).max(axis=-1) <= 1).sum() > 50, colour


def test_png_picture_of_a_portrait_image_with_cut_words(adapter, tmp_path):
    portrait = Image.open(files("clipalign") / "examples" / "traffic_light.png").convert("RGB")
    with pytest.warns(UserWarning, match="dropped"):
        [cut] = CLIP4DM(adapter).attribute([portrait], [" ".join(["light"] * 90)])
    fig = words_figure(portrait, cut)
    assert any("words cut at the context limit" in t.get_text() for t in fig.texts)
    width, height = Image.open(save(fig, tmp_path / "cut.png")).size
    assert height > width


def test_words_cli_writes_html_and_png(tiny_model_dir, tmp_path, capsys):
    photo = str(ROOT / "examples" / "apple_and_cup.png")
    html, png = tmp_path / "out.html", tmp_path / "out.png"
    argv = ["words", photo, CAPTION, "--model", str(tiny_model_dir), "--json", "--html", str(html)]
    assert main([*argv, "--png", str(png)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["caption"] == CAPTION
    assert f"wrote {html}" in captured.err and f"wrote {png}" in captured.err
    assert "&lt;script&gt;" in html.read_text(encoding="utf-8")
    assert Image.open(png).format == "PNG"


def test_words_cli_refuses_an_output_in_a_missing_directory(tiny_model_dir, tmp_path, capsys):
    photo = str(ROOT / "examples" / "apple_and_cup.png")
    out = tmp_path / "missing" / "out.html"
    assert main(["words", photo, "a cup", "--model", str(tiny_model_dir), "--html", str(out)]) == 1
    assert "directory does not exist" in capsys.readouterr().err


def test_shipped_examples_are_what_the_script_renders():
    spec = importlib.util.spec_from_file_location("make_examples", ROOT / "tools" / "make_examples.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    shipped = files("clipalign") / "examples"
    index = json.loads((shipped / "examples.json").read_text(encoding="utf-8"))
    assert [e["name"] for e in index] == list(script.SCENES)
    assert len(index) >= 3
    for entry in index:
        render, title, caption = script.SCENES[entry["name"]]
        assert (entry["title"], entry["caption"]) == (title, caption)
        drawn = np.asarray(render())
        assert np.array_equal(drawn, np.asarray(Image.open(shipped / entry["file"]).convert("RGB")))
    readme_example = np.asarray(Image.open(ROOT / "examples" / "apple_and_cup.png").convert("RGB"))
    assert np.array_equal(readme_example, np.asarray(script.apple_and_cup()))


# --- Layout: every text inside the canvas, small images scaled up, decorations whole ---------------


def drawn_texts(fig) -> list[tuple[str, float, float]]:
    """(text, left, right) in pixels of every figure text as drawn, its box and outline included."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    spans = []
    for text in fig.texts:
        patch = text.get_bbox_patch()
        if patch is None:
            extent, edge = text.get_window_extent(renderer), 0.0
        else:
            extent, edge = patch.get_window_extent(renderer), patch.get_linewidth() * fig.dpi / 72
        spans.append((text.get_text(), extent.x0 - edge / 2, extent.x1 + edge / 2))
    return spans


def white_border(path: Path) -> bool:
    """Whether the outermost pixel rows and columns of a saved picture are all white (nothing cut)."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    edges = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return bool((edges >= 250).all())


LONG_WORD = "supercalifragilistic-expialidocious-antidisestablishmentarianism-with-no-spaces-green"


@pytest.mark.parametrize(
    ("scene", "caption"),
    [
        (
            "traffic_light.png",
            "the quick brown fox jumps over the lazy dog while a green bird watches the tall trees",
        ),
        ("traffic_light.png", f"a {LONG_WORD} light"),
        ("apple_and_cup.png", " ".join(["apple green"] * 45)),
    ],
    ids=["wrapped-lines", "word-wider-than-a-line", "cut-at-the-context"],
)
def test_png_caption_is_laid_out_inside_the_canvas(adapter, scene, caption, tmp_path):
    """Every word box lies inside the canvas (a word too long for a line is broken, not cut), the words
    read in order, and the saved picture has blank edges: nothing touches them."""
    image = Image.open(files("clipalign") / "examples" / scene).convert("RGB").resize((40, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the context cut, tested above
        [scored] = CLIP4DM(adapter).attribute([image], [caption])
    epsilon = float(np.median([w.score for w in scored.words]))
    result = dataclasses.replace(
        scored, words=[dataclasses.replace(w, misaligned=w.score <= epsilon) for w in scored.words]
    )
    fig = words_figure(image, result)
    width = fig.bbox.width
    texts = drawn_texts(fig)
    for text, left, right in texts:
        assert left >= 0 and right <= width, (text, left, right, width)
    words = "".join(w.word for w in result.words)
    assert words in "".join(text for text, _, _ in texts)  # all there, in order (long words in parts)
    path = save(fig, tmp_path / "words.png")
    assert white_border(path)
    short_side = min(Image.open(path).size)
    assert short_side >= 384


def test_png_shows_a_tiny_image_large_and_pixel_sharp(adapter, tmp_path):
    tiny = Image.open(ROOT / "examples" / "apple_and_cup.png").convert("RGB").resize((64, 48), Image.NEAREST)
    [result] = CLIP4DM(adapter).attribute([tiny], ["a green apple"])
    fig = words_figure(tiny, result)
    [ax] = fig.axes[:1]
    drawn_texts(fig)  # draws
    box = ax.get_window_extent()
    assert min(box.width, box.height) >= 384
    assert ax.get_images()[0].get_interpolation() == "nearest"


def test_span_heatmap_caption_wraps_inside_and_its_colour_bar_is_as_tall_as_the_image(adapter, tmp_path):
    from clipalign import TokenPatchInteractions
    from clipalign.viz.heatmap import span_figure

    portrait = Image.open(files("clipalign") / "examples" / "traffic_light.png").convert("RGB")
    caption = "a traffic light showing red under a blue sky with three small white clouds drifting past " * 2
    [inter] = TokenPatchInteractions(adapter, steps=2).attribute(
        [portrait], [caption.strip()], on_error="raise"
    )
    fig = span_figure(portrait, inter, "red")
    texts = drawn_texts(fig)
    assert len(texts) == len(inter.words) and len({round(top) for top in _text_tops(fig)}) >= 2
    for text, left, right in texts:
        assert left >= 0 and right <= fig.bbox.width, text
    image_ax, bar_ax = fig.axes
    image_box, bar_box = image_ax.get_window_extent(), bar_ax.get_window_extent()
    assert bar_box.y0 == pytest.approx(image_box.y0, abs=1) and bar_box.y1 == pytest.approx(
        image_box.y1, abs=1
    )
    assert white_border(save(fig, tmp_path / "span.png"))


def _text_tops(fig) -> list[float]:
    return [text.get_window_extent().y1 for text in fig.texts]


def test_html_page_shows_small_images_enlarged_by_a_whole_factor(result):
    from clipalign.viz.html import display_size

    assert display_size(64, 48) == (512, 384) and display_size(40, 64) == (400, 640)
    assert display_size(640, 480) == (640, 480) and display_size(4000, 3000) == (1024, 768)
    assert display_size(8, 1000) == (8, 1000)  # enlarging would pass the longest side allowed
    small = Image.open(ROOT / "examples" / "apple_and_cup.png").convert("RGB").resize((64, 48))
    html = page_html(small, result)
    [url] = re.findall(r'src="(data:image/png;base64,[^"]+)" width="512" height="384"', html)
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (64, 48)
    assert 'class="ca-enlarged"' in html and "image-rendering: pixelated" in html
