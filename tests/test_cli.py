"""The ``clipalign`` command end to end: a saved tiny model, real files, JSON output, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest
from PIL import Image

from clipalign import CLIP4DM
from clipalign.cli.main import main
from clipalign.metrics import ref_clip_score, reference_cosines


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
    assert [w["word"] for w in data["words"]] == ["a", "cup", "of", "coke,", "snowboarder!"]
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
