"""``clipalign sweep``: every cell equals a separate ``run_benchmark`` with its settings, ε is derived from
cached word scores without the model, the cache is ``clipalign eval``'s (shared both ways), a rerun makes
no model call, an interrupted sweep resumes, and the command writes its table, JSON and figures.

The shipped synthetic CLIP scores a small synthetic world (``clipalign.synthetic``); model calls are
counted on the adapter's two towers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score
from test_startup import heavy_modules_after, help_code

from clipalign import CLIP4DM, load_model
from clipalign.checkpoints import SYNTHETIC_CLIP
from clipalign.cli.main import main
from clipalign.datasets import load_synthetic
from clipalign.datasets.base import MisalignmentItem
from clipalign.evaluation.benchmark import run_benchmark
from clipalign.evaluation.sweep import SweepGrid, derive_records, run_sweep
from clipalign.results import word_row
from clipalign.settings import ModelSpec, WordSettings
from clipalign.synthetic import write_dataset
from clipalign.testing import example_image, save_random_siglip
from clipalign.text.alignment import DEFAULT_TEMPLATE

SPEC = ModelSpec(name=str(SYNTHETIC_CLIP), device="cpu")
GRID = SweepGrid(epsilon=(-1e-4, -5e-5, 0.0), layers=(1, 4), template=("", DEFAULT_TEMPLATE))
BATCH = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[MisalignmentItem]]:
    """Six held-out synthetic scenes: 30 pairs (true captions and one-word foils)."""
    annotations = write_dataset(tmp_path_factory.mktemp("world"), 6, seed=5)
    items = load_synthetic(annotations, annotations.parent / "images")
    return annotations, [it for it in items if isinstance(it, MisalignmentItem)]


@pytest.fixture(scope="module")
def model():
    return load_model(SYNTHETIC_CLIP, device="cpu")


@contextmanager
def counted(model, monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> Iterator[list[int]]:
    """Count the model's forward calls (text and image towers); with ``fail_at``, the text tower's call of
    that number raises KeyboardInterrupt, as a user stopping the run would."""
    calls = [0]

    def wrap(original: Callable, tower: str) -> Callable:
        def call(*args, **kwargs):
            calls[0] += 1
            if tower == "text" and fail_at is not None and calls[0] >= fail_at:
                raise KeyboardInterrupt
            return original(*args, **kwargs)

        return call

    with monkeypatch.context() as patch:
        patch.setattr(model, "text_embeddings", wrap(model.text_embeddings, "text"))
        patch.setattr(model, "image_embeddings", wrap(model.image_embeddings, "image"))
        yield calls


def sweep(items, model, out, grid=GRID, **words):
    return run_sweep(
        "synthetic",
        items,
        model,
        out,
        spec=SPEC,
        grid=grid,
        words=WordSettings(batch_size=BATCH, **words),
        progress=False,
    )


def cache_records(path: Path) -> dict[str, dict]:
    """A complete cache file's records by id."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["id"]: r for r in records}


def test_each_cell_equals_a_separate_run_benchmark(world, model, tmp_path):
    """The reference: ``run_benchmark`` at each cell's settings in its own folder, the model scoring every
    item at that ε. Metrics and every cached record are equal, and the cache files carry the same key."""
    _, items = world
    run = sweep(items, model, tmp_path / "sweep")
    assert len(run.cells) == GRID.size == 12
    assert run.scored == len(items) * 4 and run.derived == len(items) * 4 * 2
    for cell in run.cells:
        settings = WordSettings(layers=cell.layers, epsilon=cell.epsilon, template=cell.template)
        reference = run_benchmark(
            "synthetic", items, model, tmp_path / "ref", spec=SPEC, words=settings, progress=False
        )
        assert reference.newly_scored == len(items)
        assert cell.metrics == reference.metrics, (cell.layers, cell.template, cell.epsilon)
        [ref_cache] = [
            p for p in (tmp_path / "ref" / "synthetic" / "cache").glob("*.jsonl") if p.name == cell.cache.name
        ]
        assert cache_records(cell.cache) == cache_records(ref_cache)
    # the grid does move the metrics: ε changes the authors' LA or F-CLIPScore's AP somewhere
    assert len({json.dumps(c.headline, sort_keys=True) for c in run.cells}) > 4


def test_most_negative_mode_cells_equal_run_benchmark(world, model, tmp_path):
    _, items = world
    grid = SweepGrid(epsilon=(-5e-5, 0.0), layers=(3,), template=(DEFAULT_TEMPLATE,))
    run = sweep(items, model, tmp_path / "sweep", grid, mode="most_negative")
    for cell in run.cells:
        settings = WordSettings(layers=3, epsilon=cell.epsilon, mode="most_negative")
        reference = run_benchmark(
            "synthetic", items, model, tmp_path / "ref", spec=SPEC, words=settings, progress=False
        )
        assert cell.metrics == reference.metrics


@pytest.mark.filterwarnings("ignore::clipalign.CaptionTruncatedWarning")
@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_rethreshold_equals_scoring_at_that_epsilon(family, tmp_path):
    """Records derived from another ε and mode equal the model's own at every ε and mode: punctuation,
    words without a token of their own ("..." is one token), truncated captions, positive ε (which
    would flag every eligible word)."""
    model = load_model(
        SYNTHETIC_CLIP if family == "clip" else save_random_siglip(tmp_path / "siglip"), device="cpu"
    )
    captions = [
        "a red ball, on the grass...",
        "A dog . . . runs!",
        "two cats; one sleeps , one (not) eats",
        " ".join(["word"] * 120),
    ]
    images = [example_image()] * len(captions)
    items = [
        MisalignmentItem(id=str(i), image=Path("x.png"), caption=c, aligned=True)
        for i, c in enumerate(captions)
    ]
    base = WordSettings(layers=2, epsilon=-5e-5, unit="clip4dm")
    for unit in ("clip4dm", "whitespace"):
        source = [
            {"id": str(i), "error": None, **word_row(r), "refclipscore": None, "refclipscore_clip4dm": None}
            for i, r in enumerate(
                CLIP4DM(model, settings=base.replace(unit=unit)).attribute(images, captions, on_error="raise")
            )
        ]
        for mode in ("threshold", "most_negative"):
            for epsilon in (-1e-3, -1e-5, 0.0, 1.0):
                settings = base.replace(unit=unit, mode=mode, epsilon=epsilon)
                direct = CLIP4DM(model, settings=settings).attribute(images, captions, on_error="raise")
                expected = [
                    {
                        "id": str(i),
                        "error": None,
                        **word_row(r),
                        "refclipscore": None,
                        "refclipscore_clip4dm": None,
                    }
                    for i, r in enumerate(direct)
                ]
                assert derive_records(list(zip(items, source, strict=True)), model, settings) == expected
                if family == "clip" and unit == "clip4dm":  # the 2nd and 3rd "." of "..." have no token
                    assert [w.num_tokens for w in direct[0].words][-3:] == [1, 0, 0]


def test_epsilon_grid_costs_one_model_pass(world, model, tmp_path, monkeypatch):
    """Three ε at one (layers, template) cost the model calls of scoring the items once."""
    _, items = world
    grid = SweepGrid(epsilon=(-1e-4, -5e-5, 0.0), layers=(2,), template=(DEFAULT_TEMPLATE,))
    with counted(model, monkeypatch) as once:
        run_benchmark(
            "synthetic",
            items,
            model,
            tmp_path / "once",
            spec=SPEC,
            words=WordSettings(layers=2, batch_size=BATCH),
            progress=False,
        )
    with counted(model, monkeypatch) as calls:
        run = sweep(items, model, tmp_path / "sweep", grid)
    assert once[0] > 0 and calls[0] == once[0]
    assert (run.scored, run.derived) == (len(items), 2 * len(items))


def test_rerun_makes_no_model_call(world, model, tmp_path, monkeypatch):
    _, items = world
    first = sweep(items, model, tmp_path)
    with counted(model, monkeypatch) as calls:
        again = sweep(items, model, tmp_path)
    assert calls[0] == 0 and (again.scored, again.derived) == (0, 0)
    assert [c.metrics for c in again.cells] == [c.metrics for c in first.cells]


def test_eval_before_and_after_a_sweep_share_the_cache(world, model, tmp_path, monkeypatch):
    """An eval at an ε outside the grid feeds the sweep (its word scores are the same); an eval after the
    sweep at a grid ε finds every item cached."""
    _, items = world
    grid = SweepGrid(epsilon=(-1e-4, 0.0), layers=(4,), template=(DEFAULT_TEMPLATE,))
    before = run_benchmark(
        "synthetic",
        items,
        model,
        tmp_path,
        spec=SPEC,
        words=WordSettings(layers=4, epsilon=-3e-5),
        progress=False,
    )
    assert before.newly_scored == len(items)
    with counted(model, monkeypatch) as calls:
        run = sweep(items, model, tmp_path, grid)
        after = run_benchmark(
            "synthetic",
            items,
            model,
            tmp_path,
            spec=SPEC,
            words=WordSettings(layers=4, epsilon=0.0),
            progress=False,
        )
    assert calls[0] == 0 and run.scored == 0 and run.derived == 2 * len(items)
    assert after.newly_scored == 0 and after.metrics == run.cells[1].metrics


def test_an_interrupted_sweep_resumes(world, model, tmp_path, monkeypatch):
    """Stopped by the user in the model, or with cache files cut or removed mid-derivation, a rerun
    completes what is missing and gives the uninterrupted sweep's results."""
    _, items = world
    reference = sweep(items, model, tmp_path / "reference")
    with counted(model, monkeypatch, fail_at=9), pytest.raises(KeyboardInterrupt):
        sweep(items, model, tmp_path / "stopped")
    with counted(model, monkeypatch) as calls:
        resumed = sweep(items, model, tmp_path / "stopped")
    with counted(model, monkeypatch) as full:
        sweep(items, model, tmp_path / "fresh")
    assert 0 < calls[0] < full[0] and resumed.scored < reference.scored
    assert [c.metrics for c in resumed.cells] == [c.metrics for c in reference.cells]

    cut, gone = resumed.cells[1].cache, resumed.cells[2].cache
    lines = cut.read_text().splitlines()
    cut.write_text("\n".join(lines[:10]) + "\n" + lines[10][: len(lines[10]) // 2])  # a line cut mid-write
    gone.unlink()
    with counted(model, monkeypatch) as calls:
        repaired = sweep(items, model, tmp_path / "stopped")
    assert calls[0] == 0 and repaired.derived == 2 * len(items) - 10
    assert [c.metrics for c in repaired.cells] == [c.metrics for c in reference.cells]


def test_the_command_end_to_end(world, model, tmp_path, monkeypatch, capsys):
    """``clipalign eval`` then ``clipalign sweep`` then the same sweep again: the sweep reuses the eval's
    cell and its rerun calls no model; table, JSON and figures are written, the table printed."""
    annotations, items = world
    monkeypatch.setattr("clipalign.cli.sweep.open_model", lambda spec: model)
    monkeypatch.setattr("clipalign.cli.evaluate.open_model", lambda spec: model)
    common = ["--annotations", str(annotations), "--images", str(annotations.parent / "images")]
    common += ["--model", str(SYNTHETIC_CLIP), "--out", str(tmp_path), "--no-progress", "--device", "cpu"]
    grid = ["--epsilon=-1e-4,0", "--layers", "1,4", "--template", ",A photo depicts "]
    assert main(["eval", "synthetic", *common, "--layers", "4", "--epsilon=0"]) == 0
    with counted(model, monkeypatch) as calls:
        assert main(["sweep", "synthetic", *common, *grid]) == 0
    assert calls[0] > 0
    out = capsys.readouterr().out
    assert f"{len(items) * 3} items scored by the model" in out  # (1, none), (4, none), (1, theirs)
    assert "template (none)" in out and 'template "A photo depicts "' in out and "★" in out
    with counted(model, monkeypatch) as calls:
        assert main(["sweep", "synthetic", *common, *grid]) == 0
    assert calls[0] == 0 and "0 items scored by the model, 0 records derived" in capsys.readouterr().out

    folder = tmp_path / "sweep-synthetic"
    report = json.loads((folder / "sweep.json").read_text())
    assert report["grid"] == {"epsilon": [-1e-4, 0.0], "layers": [1, 4], "template": ["", DEFAULT_TEMPLATE]}
    assert [(c["template"], c["layers"], c["epsilon"]) for c in report["cells"]] == [
        (t, n, e) for t in ("", DEFAULT_TEMPLATE) for n in (1, 4) for e in (-1e-4, 0.0)
    ]
    eval_report = json.loads((tmp_path / "synthetic" / "report.json").read_text())
    [same] = [
        c for c in report["cells"] if (c["template"], c["layers"], c["epsilon"]) == (DEFAULT_TEMPLATE, 4, 0.0)
    ]
    assert same["metrics"] == eval_report["metrics"]
    for cell in report["cells"]:
        assert set(cell["headline"]) == {
            "LA, ours",
            "LA, authors'",
            "AP F-CLIPScore, ours",
            "AP F-CLIPScore, authors'",
            "AP CLIPScore",
        }
        assert (tmp_path / cell["cache"]).is_file()
    best = report["best"]["LA, authors'"]
    assert best["value"] == max(c["headline"]["LA, authors'"] for c in report["cells"])
    markdown = (folder / "sweep.md").read_text()
    assert markdown.count("\n| ") == 1 + 8 and f"**{best['value']:.3f}** ★" in markdown
    for name in ("heatmap.png", "pr_curves.png"):
        with Image.open(folder / name) as png:
            assert png.format == "PNG" and png.width > 400


def test_pr_curves_integrate_to_the_tabled_ap(world, model, tmp_path):
    """Each F-CLIPScore curve is the cell's AP task at the PR ε: its step integral is the table's AP."""
    _, items = world
    run = sweep(items, model, tmp_path)
    for title, curves in run.curves.items():
        template = DEFAULT_TEMPLATE if "A photo" in title else ""
        for layers, curve in zip(GRID.layers, curves, strict=False):
            [cell] = [c for c in run.cells if (c.template, c.layers, c.epsilon) == (template, layers, -5e-5)]
            area = float(-np.sum(np.diff(curve.recall) * curve.precision[:-1]))
            assert area == pytest.approx(cell.headline["AP F-CLIPScore, ours"], abs=1e-12)
        clip = curves[-1]
        area = float(-np.sum(np.diff(clip.recall) * clip.precision[:-1]))
        assert clip.dashed and area == pytest.approx(cell.headline["AP CLIPScore"], abs=1e-12)
        aligned = [it.aligned for it in items]
        scores = [r["clipscore"] for r in cache_records(cell.cache).values()]
        assert area == pytest.approx(average_precision_score(aligned, scores), abs=1e-12)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--epsilon=abc"], "--epsilon: 'abc' is not a number"),
        (["--epsilon=-1e-4,nan"], "--epsilon: every ε must be a finite number"),
        (["--epsilon="], "--epsilon: '' is not a number"),
        (["--layers", "0,2"], "--layers: every count must be ≥ 1"),
        (["--layers", "2,2"], "--layers: '2' given more than once"),
        (["--layers", "2.5"], "--layers: '2.5' is not a whole number"),
        (["--layers", "2,6"], "--layers [6]: the model has 4 text layers"),
        (["--template", "x,x"], "--template: 'x' given more than once"),
    ],
)
def test_bad_grid_values_are_one_line_errors(world, model, tmp_path, monkeypatch, capsys, option, message):
    annotations, _ = world
    monkeypatch.setattr("clipalign.cli.sweep.open_model", lambda spec: model)
    args = [
        "sweep",
        "synthetic",
        "--annotations",
        str(annotations),
        "--images",
        str(annotations.parent / "images"),
    ]
    assert main([*args, "--out", str(tmp_path), "--no-progress", *option]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and message in err
    assert not (tmp_path / "sweep-synthetic").exists()


def test_pointing_games_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "pointing-synthetic", "--annotations", "a.json", "--images", "."])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_help_is_light():
    assert heavy_modules_after(help_code("sweep")) == []


def test_a_sweep_on_real_hat_annotations(tiny_model_dir, tmp_path):
    """HAT (the authors' lowest-span protocol, hallucinated captions positive) from its real annotation
    file with stand-in images, one missing: every cell equals ``run_benchmark``, the failure included."""
    from conftest import SHARED, require

    from clipalign.datasets import load_hat

    hat = require(SHARED / "annotations" / "hat-trainval.json")
    items = load_hat(hat, tmp_path, limit=12)
    for item in items[1:]:  # the first image stays missing
        example_image().convert("RGB").save(item.image, format="JPEG")
    model = load_model(tiny_model_dir, device="cpu")
    spec = ModelSpec(name=str(tiny_model_dir), device="cpu")
    grid = SweepGrid(epsilon=(-1e-3, 0.0), layers=(1, 2), template=(DEFAULT_TEMPLATE,))
    run = run_sweep("hat", items, model, tmp_path / "sweep", spec=spec, grid=grid, progress=False)
    assert run.scored == run.derived == 2 * 12  # the missing image is tried once per (layers, template)
    for cell in run.cells:
        settings = WordSettings(layers=cell.layers, epsilon=cell.epsilon)
        reference = run_benchmark(
            "hat", items, model, tmp_path / "ref", spec=spec, words=settings, progress=False
        )
        assert cell.metrics == reference.metrics and cell.metrics["failed"] == 1
        assert cell.metrics["authors"]["positive"] == "misaligned"
    report = json.loads(run.json_path.read_text())
    assert report["positive"] == "misaligned" and [p.name for p in run.figures] == [
        "heatmap.png",
        "pr_curves.png",
    ]


def test_a_sweep_with_prompts_shares_evals_cache(world, model, tmp_path, monkeypatch, capsys):
    """``eval --prompts`` then ``sweep --prompts``: the loader options enter both cache keys alike, so the
    sweep finds eval's cell scored; a sweep without them keys its cells apart and scores them again."""
    annotations, items = world
    prompts = tmp_path / "prompts.json"
    prompts.write_text("{}")
    monkeypatch.setattr("clipalign.cli.sweep.open_model", lambda spec: model)
    monkeypatch.setattr("clipalign.cli.evaluate.open_model", lambda spec: model)
    monkeypatch.setattr("clipalign.evaluation.benchmark.load_items", lambda *args, **options: items)
    common = ["--annotations", str(annotations), "--images", str(annotations.parent / "images")]
    common += ["--model", str(SYNTHETIC_CLIP), "--out", str(tmp_path), "--no-progress", "--device", "cpu"]
    grid = ["--epsilon=-1e-4,0", "--layers", "4", "--template", "A photo depicts "]
    assert (
        main(["eval", "synthetic", *common, "--layers", "4", "--epsilon=0", "--prompts", str(prompts)]) == 0
    )
    capsys.readouterr()
    with counted(model, monkeypatch) as calls:
        assert main(["sweep", "synthetic", *common, *grid, "--prompts", str(prompts)]) == 0
    assert calls[0] == 0 and "0 items scored by the model" in capsys.readouterr().out
    report = json.loads((tmp_path / "sweep-synthetic" / "sweep.json").read_text())
    for cell in report["cells"]:
        settings = json.loads((tmp_path / cell["cache"]).with_suffix(".settings.json").read_text())
        assert settings["loader"] == {"prompts": str(prompts.resolve())}
    with counted(model, monkeypatch) as calls:
        assert main(["sweep", "synthetic", *common, *grid]) == 0
    assert calls[0] > 0 and f"{len(items)} items scored by the model" in capsys.readouterr().out
