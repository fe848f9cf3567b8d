"""The ``clipalign`` command end to end: a saved tiny model, real files, JSON output, one-line errors."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipalign import CLIP4DM, TokenPatchInteractions
from clipalign.attribution.fixlip import FIxLIP
from clipalign.cli.main import main
from clipalign.metrics import ref_clip_score, reference_cosines

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC_EXAMPLES = ROOT / "examples" / "synthetic"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clipalign", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("img") / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_console_script_is_declared():
    assert any(ep.name == "clipalign" for ep in entry_points(group="console_scripts"))


@pytest.mark.slow
def test_words_json_end_to_end(tiny_model_dir, photo, adapter):
    caption = "a cup of coke, snowboarder!"
    proc = run_cli("words", photo, caption, "--model", str(tiny_model_dir), "--json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    for key in ("caption", "cosine", "clipscore", "f_clipscore", "words", "spans", "truncated_words"):
        assert key in data
    assert [w["word"] for w in data["words"]] == [
        "a",
        "cup",
        "of",
        "coke",
        ",",
        "snowboarder!",
    ]  # authors' unit
    [expected] = CLIP4DM(adapter).attribute([photo], [caption])
    assert data["cosine"] == pytest.approx(expected.cosine, abs=1e-6)
    assert [w["misaligned"] for w in data["words"]] == [w.misaligned for w in expected.words]
    assert data["truncated_words"] == [] and data["model"] == str(tiny_model_dir)


@pytest.mark.slow
def test_score_json_with_references(tiny_model_dir, photo, adapter, capsys):
    refs = ["a dog lies on a sofa", "a puppy on a couch"]
    argv = ["score", photo, "a dog on a couch", "--model", str(tiny_model_dir), "--json"]
    assert main([*argv, "--reference", refs[0], "--reference", refs[1]]) == 0
    data = json.loads(capsys.readouterr().out)
    [result] = CLIP4DM(adapter).attribute([photo], ["a dog on a couch"])
    ref_cos, mask = reference_cosines(adapter, ["a dog on a couch"], [refs])
    import torch

    expected = float(ref_clip_score(torch.tensor([result.cosine]), ref_cos, mask)[0])
    assert data["refclipscore"] == pytest.approx(expected, abs=1e-6)
    assert data["clipscore"] == pytest.approx(2.5 * max(result.cosine, 0), abs=1e-6)
    assert data["f_clipscore"] == pytest.approx(result.f_clipscore, abs=1e-9)
    assert main([*argv]) == 0
    assert json.loads(capsys.readouterr().out)["refclipscore"] is None


def test_table_output(tiny_model_dir, photo, capsys):
    assert (
        main(["words", photo, "a red ball", "--model", str(tiny_model_dir), "--mode", "most_negative"]) == 0
    )
    out = capsys.readouterr().out
    assert "red" in out and "ball" in out and "CLIPScore" in out and "F-CLIPScore" in out
    assert out.count("✗") == 1


def test_long_caption_warns_and_reports(tiny_model_dir, photo, capsys):
    caption = " ".join(f"word{i}" for i in range(90))
    assert main(["words", photo, caption, "--model", str(tiny_model_dir), "--json"]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "dropped" in captured.err
    assert json.loads(captured.out)["truncated_words"][-1] == "word89"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["words", "{missing}", "a dog"], "missing.png: cannot read image: no such file"),
        (["words", "{photo}", "   "], "caption is empty"),
        (["score", "{photo}", "a dog", "--layers", "99"], "layers must be in 1..4"),
    ],
)
def test_errors_are_one_line(tiny_model_dir, photo, tmp_path, capsys, args, needle):
    args = [a.format(missing=tmp_path / "missing.png", photo=photo) for a in args]
    assert main([*args, "--model", str(tiny_model_dir)]) == 1
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_missing_local_model_says_what_to_do(tmp_path, photo, capsys):
    assert main(["words", photo, "a dog", "--model", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_hub_model_offline_gives_a_one_line_error(photo):
    proc = run_cli(
        "words", photo, "a dog", "--model", "someone/not-a-cached-clip", env={"HF_HUB_OFFLINE": "1"}
    )
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "--model DIR" in err and "someone/not-a-cached-clip" in err


def synthetic_examples() -> list[dict]:
    return json.loads((SYNTHETIC_EXAMPLES / "captions.json").read_text(encoding="utf-8"))


def test_synthetic_examples_are_what_the_script_renders():
    spec = importlib.util.spec_from_file_location("make_examples", ROOT / "tools" / "make_examples.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    examples = synthetic_examples()
    assert [e["file"] for e in examples] == [f"{name}.png" for name in script.SYNTHETIC_SCENES]
    for entry, name in zip(examples, script.SYNTHETIC_SCENES, strict=True):
        assert entry == script.synthetic_entry(name)
        index, _ = script.SYNTHETIC_SCENES[name]
        drawn = np.asarray(script.synthetic_scene(index).render())
        shipped = Image.open(SYNTHETIC_EXAMPLES / entry["file"]).convert("RGB")
        assert np.array_equal(drawn, np.asarray(shipped))
        right, wrong = entry["caption"].split(), entry["wrong_caption"].split()
        assert [i for i, (a, b) in enumerate(zip(right, wrong, strict=True)) if a != b] == [
            entry["wrong_word_index"]
        ]
        assert (right[entry["wrong_word_index"]], wrong[entry["wrong_word_index"]]) == (
            entry["right_word"],
            entry["wrong_word"],
        )
        assert (SYNTHETIC_EXAMPLES / entry["file"]).stat().st_size < 20_000


@pytest.mark.parametrize("entry", synthetic_examples(), ids=lambda e: e["file"])
def test_synthetic_model_flags_the_wrong_word_with_default_settings(entry, capsys):
    """README's first command: the bundled model flags the wrong word alone, none in the true caption."""
    image = str(SYNTHETIC_EXAMPLES / entry["file"])
    assert main(["words", image, entry["wrong_caption"], "--model", "synthetic", "--json"]) == 0
    words = json.loads(capsys.readouterr().out)["words"]
    assert [i for i, w in enumerate(words) if w["misaligned"]] == [entry["wrong_word_index"]]
    assert words[entry["wrong_word_index"]]["word"] == entry["wrong_word"]
    assert main(["words", image, entry["caption"], "--model", "synthetic", "--json"]) == 0
    assert not any(w["misaligned"] for w in json.loads(capsys.readouterr().out)["words"])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_unavailable_cuda_is_one_line(photo, capsys):
    import torch

    device = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    assert main(["words", photo, "a dog", "--model", "synthetic", "--device", device]) == 1
    err = one_error_line(capsys)
    assert f"device '{device}'" in err and ("CUDA is not available" in err or "CUDA device(s)" in err)


@pytest.mark.parametrize("option", ["--dtype", "--mode"])
def test_choices_are_checked_by_argparse(photo, option, capsys):
    with pytest.raises(SystemExit) as info:
        main(["words", photo, "a dog", option, "foo"])
    assert info.value.code == 2
    assert f"argument {option}: invalid choice: 'foo'" in capsys.readouterr().err


def test_model_path_errors_name_the_path(photo, tmp_path, monkeypatch, capsys):
    assert main(["words", photo, "a dog", "--model", str(tmp_path / "nope")]) == 1
    err = one_error_line(capsys)
    assert f"the path '{tmp_path / 'nope'}' does not exist" in err and "Hub" not in err
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert main(["words", photo, "a dog", "--model", "models"]) == 1
    err = one_error_line(capsys)
    assert "the folder 'models' has no config.json" in err and "hf download" not in err


def test_demo_without_its_extra_says_how_to_install_it(monkeypatch, capsys):
    """The hint keeps its brackets: rich would read ``[demo]`` as markup and print ``.``."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "starlette" else find_spec(name, *a)
    )
    assert main(["demo", "--model", "synthetic"]) == 1
    assert "the demo needs starlette: pip install -e '.[demo]' in the clipalign checkout" in one_error_line(
        capsys
    )


def test_help_shows_defaults_and_ascii_numbers(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps at hyphens, splitting the model name
    for command in ("words", "score", "interactions", "eval", "scan", "demo"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "\u2212" not in out, command
        assert "(default: 'A photo depicts ')" in out or command == "interactions"
        assert "(default: fp32)" in out and "(default: openai/clip-vit-base-patch32)" in out
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: -5e-05," in out and "foil, hat, hnc, nocaps-foil" in out
    with pytest.raises(SystemExit):
        main(["interactions", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for default in ("(default: gauss)", "(default: cosine)", "(default: '', none", "(default: 10)"):
        assert default in out
    with pytest.raises(SystemExit):
        main(["scan", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 32)", "(default: 4096)", "(default: 4)"):
        assert default in out


def test_readme_first_command_uses_a_shipped_example():
    """The Set-up section's command names a shipped scene and its one-wrong-word caption (tested above)."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = readme[readme.index("## Set-up") : readme.index("## Command line")]
    command = re.search(r'clipalign words examples/synthetic/(\S+) "([^"]+)" --model synthetic\n', setup)
    assert command is not None
    assert {"file": command[1], "wrong_caption": command[2]}.items() <= next(
        e for e in synthetic_examples() if e["file"] == command[1]
    ).items()


# --- Output without colour or width: piped, NO_COLOR, 80 columns ------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def grid7_model_dir(tmp_path_factory, tokenizer_dir):
    """A tiny random CLIP on a 7×7 patch grid, as wide as ViT-B/32's."""
    from clipalign.testing import save_random_clip, tiny_clip_config

    return save_random_clip(tmp_path_factory.mktemp("grid7"), tiny_clip_config(image_size=56), tokenizer_dir)


def cli_text(monkeypatch, capsys, argv: list[str], **env: str) -> str:
    """Stdout of one in-process command (stdout is captured: not a terminal), with ``env`` set."""
    monkeypatch.setenv("COLUMNS", "80")
    for key in ("NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(argv) == 0
    return capsys.readouterr().out


def colour_codes(text: str) -> set[str]:
    """The foreground/background colour codes among the ANSI styles of ``text`` (bold etc. left out)."""
    codes = {code for style in re.findall(r"\x1b\[([0-9;]*)m", text) for code in style.split(";")}
    return {c for c in codes if c[:1] in ("3", "4", "9") or c.startswith("10")}


def assert_uncut(out: str, width: int = 80) -> None:
    assert "…" not in out and "\x1b" not in out
    assert max(len(line) for line in out.splitlines()) <= width


def test_piped_words_and_score_print_signed_scores_and_mark_misaligned_words(
    tiny_model_dir, photo, adapter, monkeypatch, capsys
):
    caption = "a green apple next to a blue cup"
    [scored] = CLIP4DM(adapter).attribute([photo], [caption])
    epsilon = float(np.median([w.score for w in scored.words]))
    [result] = CLIP4DM(adapter, epsilon=epsilon).attribute([photo], [caption])
    flagged = [w for w in result.words if w.misaligned]
    assert 0 < len(flagged) < len(result.words)
    argv = [photo, caption, "--model", str(tiny_model_dir), "--epsilon", repr(epsilon)]
    out = cli_text(monkeypatch, capsys, ["words", *argv])
    assert_uncut(out)
    marked = " ".join(f"[{w.word}]" if w.misaligned else w.word for w in result.words)
    assert out.splitlines()[0] == marked
    rows = [line.split("│") for line in out.splitlines() if line.count("│") == 3]
    assert [r[1].strip() for r in rows] == [w.word for w in result.words]
    assert [r[2].strip() for r in rows] == [f"{w.score:+.3e}" for w in result.words]
    assert [r[3].strip() == "✗" for r in rows] == [w.misaligned for w in result.words]
    assert f"F-CLIPScore {result.f_clipscore:+.3e}" in out
    # colour, where shown, only repeats the text: the same output with colour forced, codes removed
    coloured = cli_text(monkeypatch, capsys, ["words", *argv], FORCE_COLOR="1")
    assert "\x1b[" in coloured and ANSI.sub("", coloured) == out
    plain = cli_text(monkeypatch, capsys, ["words", *argv], FORCE_COLOR="1", NO_COLOR="1")
    assert ANSI.sub("", plain) == out and colour_codes(plain) == set() and colour_codes(coloured)
    scores = cli_text(monkeypatch, capsys, ["score", *argv])
    assert_uncut(scores)
    assert scores.splitlines()[0] == marked and f"{result.f_clipscore:+.3e}" in scores


def printed_grid(lines: list[str], rows: int) -> list[list[str]]:
    """The patch grid as printed: column blocks (a header of column numbers, then one numbered line per
    row) put side by side again; the column numbers must run 0, 1, ... across the blocks."""
    grid: list[list[str]] = [[] for _ in range(rows)]
    columns: list[int] = []
    for i, line in enumerate(lines):
        if "patch grid" in line:
            columns += [int(c) for c in lines[i + 1].split()]
            for r, row in enumerate(lines[i + 2 : i + 2 + rows]):
                label, *values = row.split()
                assert int(label) == r
                grid[r] += values
    assert columns == list(range(len(grid[0])))
    return grid


def test_piped_interactions_grid_wider_than_the_terminal_comes_in_whole_column_blocks(
    tokenizer_dir, photo, tmp_path, monkeypatch, capsys
):
    """A 14×14 grid (ViT-B/16's) at 80 columns: every number whole, in blocks of columns."""
    from clipalign.testing import save_random_clip, tiny_clip_config

    model = save_random_clip(tmp_path / "grid14", tiny_clip_config(image_size=112), tokenizer_dir)
    argv = ["interactions", photo, "a black dog", "--model", str(model), "--steps", "2", "--span", "dog"]
    monkeypatch.setenv("COLUMNS", "80")
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["grid"] == [14, 14]
    out = cli_text(monkeypatch, capsys, argv)
    assert_uncut(out)
    assert printed_grid(out.splitlines(), 14) == [
        [f"{v:+.2e}" for v in row] for row in data["span"]["grid_values"]
    ]


def test_piped_interactions_print_every_grid_value_and_mark_the_span_at_80_columns(
    grid7_model_dir, photo, monkeypatch, capsys
):
    caption = "a white husky and a black dog running in a snow covered forest"
    argv = ["interactions", photo, caption, "--model", str(grid7_model_dir), "--steps", "2"]
    monkeypatch.setenv("COLUMNS", "80")
    assert main([*argv, "--json", "--span", "black dog", "--box", "10,5,40,40"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["grid"] == [7, 7]
    out = cli_text(monkeypatch, capsys, [*argv, "--span", "black dog", "--box", "10,5,40,40"])
    assert_uncut(out)
    lines = out.splitlines()
    assert printed_grid(lines, 7) == [[f"{v:+.2e}" for v in row] for row in data["span"]["grid_values"]]
    rows = [line.split("│") for line in lines if line.count("│") == 4]
    assert [r[1].strip() for r in rows] == [w["word"] for w in data["words"]]
    matrix = np.asarray(data["matrix"])
    whole = [f"{matrix[w['tokens']].sum():+.3e}" for w in data["words"]]
    assert [r[2].strip() for r in rows] == whole
    assert [r[3].strip() for r in rows] == [f"{w['score']:+.3e}" for w in data["box"]["words"]]
    assert [r[4].strip() for r in rows] == [
        "*" if w["word"] in ("black", "dog") else "" for w in data["words"]
    ]


def test_report_table_keeps_every_header_and_number_whole_when_narrow(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(image)
    pairs = tmp_path / "p.jsonl"
    rows = [{"image": "a.png", "caption": f"a red ball {i}"} for i in range(4)]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "s.parquet"
    argv = ["scan", str(pairs), "--out", str(out), "--model", str(tiny_model_dir), "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["report", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    for width in (80, 40, 24):
        text = cli_text(monkeypatch, capsys, ["report", str(out)], COLUMNS=str(width))
        assert_uncut(text, width)  # at 24 columns cells fold onto more lines, still whole
        if width >= 40:
            assert " F-CLIPScore " in text and " CLIPScore " in text
            for stat in ("mean", "p5", "p50", "p95"):
                assert f"{summary['f_clipscore'][stat]:.4g}" in text


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The names of the image files read from now on (each decode reads its file once)."""
    import clipalign.images.loading as loading

    names: list[str] = []
    original = loading._read_file

    def counted(path, name, *args, **kwargs):
        names.append(name)
        return original(path, name, *args, **kwargs)

    monkeypatch.setattr(loading, "_read_file", counted)
    return names


@pytest.mark.parametrize("command", [["words", "--png", "{png}", "--json"], ["score", "--json"]])
def test_the_image_file_is_decoded_once(
    tiny_model_dir, photo, adapter, tmp_path, monkeypatch, capsys, reads, command
):
    """``words`` (with a picture) and ``score`` read the image file once: the model scores the decoded
    image, the picture draws it, and the output still names the file and equals scoring the path."""
    name, *options = (part.format(png=tmp_path / "w.png") for part in command)
    assert main([name, photo, "a dog on a couch", "--model", str(tiny_model_dir), *options]) == 0
    assert reads == [photo]
    data = json.loads(capsys.readouterr().out)
    monkeypatch.undo()
    [expected] = CLIP4DM(adapter).attribute([photo], ["a dog on a couch"])
    assert data["cosine"] == pytest.approx(expected.cosine, abs=1e-6)
    if name == "words":
        assert data["source"] == photo and data["words"] == [w.to_dict() for w in expected.words]


@pytest.mark.parametrize("method", ["interactions", "fixlip"])
def test_interactions_decode_the_image_file_once(
    tiny_model_dir, photo, adapter, tmp_path, monkeypatch, capsys, reads, method
):
    """``interactions`` with a picture reads the image file once: the model attributes the decoded image,
    the picture draws it, and the output names the file and equals attributing the path."""
    argv = ["interactions", photo, "a dog on a couch", "--model", str(tiny_model_dir), "--span", "dog"]
    argv += ["--method", method, "--out", str(tmp_path / "i.png"), "--json"]
    argv += ["--steps", "2"] if method == "interactions" else ["--budget", "64"]
    assert main(argv) == 0
    assert reads == [photo]
    data = json.loads(capsys.readouterr().out)
    monkeypatch.undo()
    if method == "interactions":
        [expected] = TokenPatchInteractions(adapter, steps=2).attribute([photo], ["a dog on a couch"])
    else:
        [expected] = FIxLIP(adapter, budget=64).attribute([photo], ["a dog on a couch"])
    assert data["source"] == photo == expected.source
    assert np.allclose(data["matrix"], expected.matrix, atol=1e-6)
