"""``clipalign eval pointing-* --method``: baselines and FIxLIP scored beside our interactions.

Each method's records are exactly what scoring that method alone gives (the pointing game of its own
heatmap per phrase), each is cached under its own key (interactions under the key it had before
``--method`` existed), and the report has one row per method.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import eval_pointing

from clipalign import load_model
from clipalign.attribution.baselines import get_baseline
from clipalign.cli.main import main
from clipalign.evaluation.benchmark import load_items
from clipalign.evaluation.measures import pointing_game


def test_methods_are_scored_side_by_side_and_each_equals_its_own_pointing_game(
    pointing_world, tiny_model_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    assert eval_pointing(pointing_world, tiny_model_dir, out, "--method", "interactions,maskclip,random") == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "pointing-synthetic" / "report.json").read_text())
    methods = report["metrics"]["methods"]
    assert list(methods) == ["interactions", "maskclip", "random"]
    assert report["metrics"]["accuracy"] == methods["interactions"]["accuracy"]  # the headline
    assert "## Methods" in (out / "pointing-synthetic" / "report.md").read_text()
    assert "maskclip" in printed

    # MaskCLIP's figures, recomputed plainly: its map of each phrase, the pointing game on it
    annotations, images = pointing_world
    items = load_items("pointing-synthetic", annotations, images)
    method = get_baseline("maskclip", load_model(tiny_model_dir, device="cpu"))
    hits, energies = [], []
    for item in items:
        [patch_map] = method.attribute([item.image], [item.caption], [(item.phrase_start, item.phrase_end)])
        hit, energy = pointing_game(patch_map.heatmap(), item.boxes)
        hits.append(hit)
        energies.append(energy)
    assert methods["maskclip"]["items"] == len(items)
    assert methods["maskclip"]["accuracy"] == pytest.approx(np.mean(hits))
    assert methods["maskclip"]["energy"] == pytest.approx(np.mean(energies))

    # interactions alone: same cache key as before --method, so nothing is recomputed
    caches = sorted((out / "pointing-synthetic" / "cache").glob("*.jsonl"))
    assert len(caches) == 3
    assert eval_pointing(pointing_world, tiny_model_dir, out) == 0
    alone = json.loads((out / "pointing-synthetic" / "report.json").read_text())
    assert alone["newly_scored"] == 0 and "methods" not in alone["metrics"]
    assert alone["metrics"]["accuracy"] == methods["interactions"]["accuracy"]


def test_fixlip_is_a_pointing_method(pointing_world, tiny_model_dir, tmp_path, monkeypatch):
    import clipalign.evaluation.benchmark as benchmark
    from clipalign.attribution.fixlip import FIxLIP

    # the authors' budget (2**20 game values) takes minutes per explanation on a CPU
    monkeypatch.setattr(benchmark, "FIxLIP", lambda model: FIxLIP(model, budget=2**10))
    out = tmp_path / "out"
    assert (
        eval_pointing(pointing_world, tiny_model_dir, out, "--method", "fixlip,interactions", "--limit", "2")
        == 0
    )
    report = json.loads((out / "pointing-synthetic" / "report.json").read_text())
    assert list(report["metrics"]["methods"]) == ["fixlip", "interactions"]
    assert report["settings"]["method"] == "fixlip"
    assert report["settings"]["budget"] == 2**10
    assert report["metrics"]["methods"]["fixlip"]["failed"] == 0


@pytest.mark.parametrize("method", ["nope", "interactions,interactions", ","])
def test_unknown_or_repeated_methods_are_refused_before_loading(pointing_world, tmp_path, method, capsys):
    assert eval_pointing(pointing_world, tmp_path / "no-model", tmp_path / "out", "--method", method) == 1
    assert "--method takes distinct names among" in capsys.readouterr().err


def test_method_is_refused_outside_pointing_games(pointing_world, capsys):
    annotations, images = pointing_world
    argv = ["eval", "synthetic", "--annotations", str(annotations), "--images", str(images)]
    assert main([*argv, "--method", "maskclip"]) == 1
    assert "apply to pointing-* only" in capsys.readouterr().err
