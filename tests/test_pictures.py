"""Pictures of word alignments (HTML and PNG), their colours, the CLI options, and the shipped examples."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import re
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
