"""Benchmark metrics against scikit-learn / scipy / hand-computed cases; the cached, resumable runner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from clipalign import CLIP4DM
from clipalign.datasets.base import MisalignmentItem
from clipalign.evaluation.cache import ResultCache, settings_key
from clipalign.evaluation.measures import (
    average_precision,
    correlations,
    localisation_hit,
    micro_prf,
    pointing_game,
    strict_hat_hit,
)
from clipalign.evaluation.report import backbone_of, headline, write_report
from clipalign.evaluation.runner import misalignment_metrics, score_misalignment, whitespace_index


def test_localisation_matches_multi_word_foils():
    caption = "a man hits a golf ball on the green."
    assert localisation_hit([4], caption, ["golf ball"])
    assert localisation_hit([5], caption, ["golf ball"])
    assert localisation_hit([4, 5], caption, ["golf ball"])
    assert not localisation_hit([3, 4], caption, ["golf ball"])
    assert not localisation_hit([1], caption, ["golf ball"])
    assert localisation_hit([8], caption, ["green"])  # "green." matches the phrase "green"
    assert not localisation_hit([], caption, ["green"])


def test_hat_strict():
    caption = "A street sign with a detour pointing in different directions."
    truth = ["pointing in different directions."]
    assert strict_hat_hit([6, 7, 8, 9], caption, truth)
    assert not strict_hat_hit([7, 8], caption, truth)
    assert not strict_hat_hit([], caption, truth)


def test_our_word_metrics_hold_for_any_word_unit():
    """Scores on the CLIP4DM unit ("." a word of its own) are compared on whitespace words."""
    caption = "A sign pointing in different directions."
    item = MisalignmentItem("h", Path("x.png"), caption, False, ("pointing in different directions.",),
                            word_labels=(False, False, True, True, True, True))  # fmt: skip
    words = ["A", "sign", "pointing", "in", "different", "directions", "."]
    flags = [False, False, False, True, True, True, False]
    record = {
        "id": "h",
        "error": None,
        "words": words,
        "word_misaligned": flags,
        "lowest_word": 5,
        "spans": [{"words": [3, 4, 5], "mean_score": -1.0}],
        "f_clipscore": -1.0,
        "clipscore": 0.5,
    }
    assert whitespace_index(caption, words) == [0, 1, 2, 3, 4, 5, 5]
    metrics = misalignment_metrics([item], [record])
    assert metrics["LA"] == 1.0 and metrics["LA_span_strict"] == 0.0  # the span misses "pointing"
    assert (metrics["word_PRF"]["tp"], metrics["word_PRF"]["fp"], metrics["word_PRF"]["fn"]) == (3, 0, 1)


def test_phrases_are_found_on_whitespace_words_after_a_comma():
    """A "," before the foil shifts CLIP4DM word indices but not the whitespace words the phrase runs use."""
    caption = "a dog, a red skirt"
    item = MisalignmentItem("c", Path("x.png"), caption, False, ("red skirt",))
    words = ["a", "dog", ",", "a", "red", "skirt"]
    record = {
        "id": "c",
        "error": None,
        "words": words,
        "word_misaligned": [False, False, False, False, True, True],
        "lowest_word": 4,
        "spans": [{"words": [4, 5], "mean_score": -1.0}],
        "f_clipscore": -1.0,
        "clipscore": 0.5,
    }
    metrics = misalignment_metrics([item], [record])
    assert metrics["LA"] == 1.0 and metrics["LA_span_strict"] == 1.0


def test_average_precision_both_conventions_against_sklearn():
    rng = np.random.default_rng(0)
    aligned = rng.random(200) < 0.5
    scores = rng.normal(size=200) + aligned
    assert average_precision(aligned, scores, "aligned") == pytest.approx(
        average_precision_score(aligned, scores)
    )
    assert average_precision(aligned, scores, "misaligned") == pytest.approx(
        average_precision_score(~aligned, -scores)
    )
    with pytest.raises(ValueError, match="positive"):
        average_precision(aligned, scores, "foil")


def test_micro_prf_against_sklearn():
    rng = np.random.default_rng(1)
    truth = [list(rng.random(n) < 0.3) for n in rng.integers(3, 12, size=40)]
    pred = [list(rng.random(len(t)) < 0.3) for t in truth]
    flat_t, flat_p = np.concatenate(truth), np.concatenate(pred)
    got = micro_prf(truth, pred)
    assert got.precision == pytest.approx(precision_score(flat_t, flat_p))
    assert got.recall == pytest.approx(recall_score(flat_t, flat_p))
    assert got.f1 == pytest.approx(f1_score(flat_t, flat_p))
    assert micro_prf([[False]], [[False]]).f1 == 0.0
    with pytest.raises(ValueError, match="word labels"):
        micro_prf([[True, False]], [[True]])


def test_correlations_against_scipy():
    x, y = [1.0, 2.0, 3.5, 4.0, 2.2], [0.1, 0.5, 0.4, 0.9, 0.3]
    got = correlations(x, y)
    assert got["pearson"] == pytest.approx(pearsonr(x, y).statistic)
    assert got["spearman"] == pytest.approx(spearmanr(x, y).statistic)


def test_pointing_game_by_hand():
    heat = np.zeros((10, 20))
    heat[2:4, 5:7] = 3.0  # the maximum, inside the box
    heat[8, 18] = 1.0  # positive mass outside
    heat[0, 0] = np.nan
    hit, energy = pointing_game(heat, [(4, 1, 4, 4)])
    assert hit and energy == pytest.approx(12 / 13)
    hit, energy = pointing_game(heat, [(15, 7, 5, 3)])
    assert not hit and energy == pytest.approx(1 / 13)
    assert pointing_game(-np.ones((4, 4)), [(0, 0, 2, 2)])[1] == 0.0


def test_report_columns_groups_and_failures(tmp_path):
    metrics = {
        "items": 4,
        "failed": 2,
        "LA": 0.5,
        "authors": {"LA": 0.25, "AP": {"F-CLIPScore": 0.6}},
        "authors_most_negative": {"LA": 0.3},
        "AP": {"misaligned-positive": {"F-CLIPScore": 0.7}},
        "groups": {
            "by": "domain",
            "rows": {"in-domain": {"items": 2, "failed": 0, "authors": {"LA": 0.5}, "LA": 1.0}},
        },
    }
    assert backbone_of("openai/clip-vit-base-patch32") == "B/32"
    assert backbone_of("laion/CLIP-ViT-H-14-laion2B-s32B-b79K") == "H/14"
    assert backbone_of("/tmp/tiny") is None
    assert headline("nocaps-foil", metrics) == {
        "authors' protocol": {"LA": 0.25, "AP": 0.6},
        "authors, most_negative": {"LA": 0.3, "AP": None},
        "ours": {"LA": 0.5, "AP": 0.7},
    }
    failures = [
        {"id": "a", "error": "cannot read image /x/a.jpg: truncated"},
        {"id": "b", "error": "record 3 (b.png): 8 labels but 2 prompt tokens in 'A dog'"},
    ]
    json_path, md_path = write_report(
        tmp_path,
        "nocaps-foil",
        metrics,
        {"model": "openai/clip-vit-base-patch32"},
        2.0,
        3,
        failures=failures,
        failures_path=tmp_path / "failures.jsonl",
    )
    report = json.loads(json_path.read_text())
    assert report["published"] == {"LA": 0.60, "AP": 0.69} and report["pairs_per_second"] == 1.5
    assert report["failures"] == {"corrupt image": 1, "label/token count mismatch": 1}
    md = md_path.read_text()
    assert "| metric | published (B/32) | authors' protocol | authors, most_negative | ours |" in md
    assert "| LA | 0.600 | 0.250 | 0.300 | 0.500 |" in md
    assert "| AP | 0.690 | 0.600 | — | 0.700 |" in md
    assert "| in-domain | 2 | 0 | 0.500 | 1.000 |" in md  # LA · authors, LA · ours
    assert "| label/token count mismatch | 1 | `b`: record 3" in md
    assert str(tmp_path / "failures.jsonl") in md


@pytest.fixture
def items(tmp_path) -> list[MisalignmentItem]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    (tmp_path / "3.png").write_bytes(b"corrupt")
    return [
        MisalignmentItem("a", paths[0], "a red ball on grass", True, references=("a red ball",)),
        MisalignmentItem("b", paths[1], "a blue ball on grass", False, ("blue",), references=("a red ball",)),
        MisalignmentItem("c", paths[2], "a dog hits a golf ball", False, ("golf ball",)),
        MisalignmentItem("d", paths[3], "a cat", True),
        MisalignmentItem("e", tmp_path / "missing.png", "a cow", False, ("cow",)),
        MisalignmentItem(
            "f", paths[5], "two men ride horses", False, ("horses",), word_labels=(False,) * 3 + (True,)
        ),
    ]


def test_runner_records_failures_and_resumes_without_recomputing(adapter, items, tmp_path, monkeypatch):
    settings = {"model": "tiny", "layers": 3}
    cache = ResultCache(tmp_path / "cache", settings)
    records = score_misalignment(items[:3], CLIP4DM(adapter, batch_size=2), cache, progress=False)
    assert [r["id"] for r in records] == ["a", "b", "c"]
    # an interrupted write leaves half a line: it is ignored and that item recomputed
    with cache.path.open("a") as f:
        f.write('\n{"id": "d", "err')
    calls = []
    attributor = CLIP4DM(adapter, batch_size=8)
    original = attributor.attribute

    def counting(images, captions, **kwargs):
        calls.append(list(captions))
        return original(images, captions, **kwargs)

    monkeypatch.setattr(attributor, "attribute", counting)
    records = score_misalignment(items, attributor, cache, progress=False)
    assert calls == [["a cat", "a cow", "two men ride horses"]]
    by_id = {r["id"]: r for r in records}
    assert "corrupt" in by_id["d"]["error"] or "cannot read" in by_id["d"]["error"]
    assert "missing.png" in by_id["e"]["error"]
    assert by_id["a"]["refclipscore"] is not None and by_id["c"]["refclipscore"] is None
    calls.clear()
    score_misalignment(items, attributor, cache, progress=False)
    assert calls == [[items[3].caption, items[4].caption]]  # only the unreadable images are tried again
    changed = ResultCache(tmp_path / "cache", {**settings, "layers": 2})
    assert changed.path != cache.path and changed.load() == {}
    assert settings_key(settings) == settings_key(dict(reversed(list(settings.items()))))

    metrics = misalignment_metrics(items, records, epsilon=-5e-5, protocol="lowest_word")
    assert metrics["items"] == 6 and metrics["failed"] == 2
    assert metrics["authors"]["positive"] == "aligned" and "AP" in metrics["authors"]
    assert by_id["a"]["refclipscore_clip4dm"] is not None
    foils = [r for r in records if r["id"] in ("b", "c", "f")]
    expected_la = np.mean(
        [
            localisation_hit([r["lowest_word"]], it.caption, it.misaligned_phrases)
            for it, r in zip([items[1], items[2], items[5]], foils, strict=True)
        ]
    )
    assert metrics["LA"] == pytest.approx(expected_la)
    ok = [(it, by_id[it.id]) for it in items if by_id[it.id]["error"] is None]
    aligned = [it.aligned for it, _ in ok]
    assert metrics["AP"]["aligned-positive"]["F-CLIPScore"] == pytest.approx(
        average_precision_score(aligned, [r["f_clipscore"] for _, r in ok])
    )
    assert metrics["word_PRF"]["tp"] + metrics["word_PRF"]["fn"] == 1


@pytest.fixture(scope="module")
def tiny_nli_dir(tmp_path_factory, tokenizer_dir):
    """A tiny random BART classifier with MNLI-style labels (the real tokenizer stands in for BART's)."""
    import torch
    from transformers import AutoTokenizer, BartConfig, BartForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})  # BART pools at EOS: padding must not be EOS
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        id2label={0: "contradiction", 1: "neutral", 2: "entailment"},
        label2id={"contradiction": 0, "neutral": 1, "entailment": 2},
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("nli")
    BartForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_nli_scorer_is_entailment_over_contradiction(tiny_nli_dir):
    import torch

    from clipalign.evaluation.nli import NLIScorer

    scorer = NLIScorer(str(tiny_nli_dir), device="cpu")
    premises = ["the dog is brown, not black", "two cats", "a red bus"]
    hypotheses = ["black dog", "", "red"]
    got = scorer(premises, hypotheses)
    assert got[1] == 0.0
    for i in (0, 2):
        enc = scorer.tokenizer(premises[i], hypotheses[i], return_tensors="pt")
        with torch.no_grad():
            logits = scorer.model(**enc).logits[0]
        expected = torch.softmax(logits[[0, 2]], dim=-1)[1].item()
        assert got[i] == pytest.approx(expected, abs=1e-5)
        assert 0.0 < got[i] < 1.0


def test_nli_metric_uses_spans_as_hypotheses(tiny_nli_dir, items, adapter):
    from clipalign.evaluation.nli import NLIScorer

    item = MisalignmentItem(
        "s", items[0].image, "a Blue ball on grass", False, meta={"clip4dm_target": "blue ball"}
    )
    [record] = score_misalignment(
        [item], CLIP4DM(adapter, epsilon=1.0), ResultCache(items[0].image.parent / "c", {}), progress=False
    )
    seen = {}

    def nli(premises, hypotheses):
        seen["args"] = (premises, hypotheses)
        return NLIScorer(str(tiny_nli_dir), device="cpu")(premises, hypotheses)

    metrics = misalignment_metrics([item], [record], nli, epsilon=1.0, protocol="spans")
    assert seen["args"] == (["blue ball"], ["a blue ball on grass"])  # every word below ε = 1, lower-cased
    assert 0.0 <= metrics["authors"]["NLI"] <= 1.0


@pytest.mark.slow
def test_cli_eval_on_real_hat_annotations(tiny_model_dir, tmp_path, capsys):
    """The real HAT file with generated stand-in images: report, failures counted, resume from cache."""
    from conftest import SHARED, require

    from clipalign.cli.main import main
    from clipalign.datasets import load_hat

    hat = require(SHARED / "annotations" / "hat-trainval.json")
    images = tmp_path / "images"
    images.mkdir()
    items = load_hat(hat, images, limit=6)
    rng = np.random.default_rng(0)
    for item in items[1:]:
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(item.image, format="JPEG")
    argv = ["eval", "hat", "--annotations", str(hat), "--images", str(images), "--model", str(tiny_model_dir)]
    argv += ["--limit", "6", "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "out" / "hat" / "report.json").read_text())
    assert report["metrics"]["items"] == 6 and report["metrics"]["failed"] == 1
    assert set(report["headline"]) == {"authors' protocol", "ours", "ours, lowest word"}
    assert set(report["headline"]["authors' protocol"]) == {"LA", "AP"}
    assert report["newly_scored"] == 5  # the missing image is not a result: it is tried again next time
    assert report["failures"] == {"missing file": 1}
    assert report["settings"]["epsilon"] == -5e-5 and report["pairs_per_second"] > 0
    assert (tmp_path / "out" / "hat" / "report.md").read_text().startswith("# hat")
    capsys.readouterr()
    assert main(argv) == 0
    assert json.loads((tmp_path / "out" / "hat" / "report.json").read_text())["newly_scored"] == 0
    assert (
        main([*argv[:-5], "--layers", "2", "--limit", "6", "--out", str(tmp_path / "out"), "--no-progress"])
        == 0
    )
    assert json.loads((tmp_path / "out" / "hat" / "report.json").read_text())["newly_scored"] == 5


def test_cli_eval_errors(tiny_model_dir, tmp_path, capsys):
    from clipalign.cli.main import main

    annotations = tmp_path / "hat.json"
    annotations.write_text("[]")
    base = ["eval", "hat", "--annotations", str(annotations), "--model", str(tiny_model_dir)]
    assert main([*base, "--images", str(tmp_path / "nowhere")]) == 1
    assert "images directory not found" in capsys.readouterr().err
    assert main([*base, "--images", str(tmp_path), "--prompts", "p.json"]) == 1
    assert "--prompts does not apply to hat" in capsys.readouterr().err


def test_cli_eval_prints_tables_and_names_the_failure_list(tiny_model_dir, tmp_path, capsys):
    from clipalign.cli.main import main

    entries = [
        {
            "sample_id": f"s{i}",
            "caption": caption,
            "grounding": [[w, w in bad] for w in caption.split()],
            "contains_hallucination": bool(bad),
            "image_path": f"{i}.png",
        }
        for i, (caption, bad) in enumerate(
            [("a red ball on grass.", {"red"}), ("a cat on a mat", set()), ("two dogs", {"two"})]
        )
    ]
    annotations = tmp_path / "hat.json"
    annotations.write_text(json.dumps(entries))
    rng = np.random.default_rng(0)
    for i in (0, 1):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    out = tmp_path / "out"
    argv = ["eval", "hat", "--annotations", str(annotations), "--images", str(tmp_path)]
    argv += ["--model", str(tiny_model_dir), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    failures = out / "hat" / "failures.jsonl"
    assert "authors' protocol" in captured.out and "published" in captured.out and "{" not in captured.out
    assert f"1 item(s) failed (1 missing file); list: {failures}" in captured.err
    [row] = [json.loads(line) for line in failures.read_text().splitlines()]
    assert row["id"] == "s2" and "2.png" in row["error"]
    assert "| missing file | 1 | `s2`:" in (out / "hat" / "report.md").read_text()
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "2.png")
    shutil.rmtree(out / "hat" / "cache")  # failed items are cached too: start again to score the image
    assert main(argv) == 0
    assert not failures.exists()  # the stale list goes when nothing fails any more


def test_items_with_a_problem_are_failures_not_scored(adapter, items, tmp_path):
    broken = MisalignmentItem("p", items[0].image, "A dog", False, problem="8 labels but 2 prompt tokens")
    cache = ResultCache(tmp_path / "cache", {})
    records = score_misalignment([items[0], broken], CLIP4DM(adapter), cache, progress=False)
    assert records[1] == {"id": "p", "error": "8 labels but 2 prompt tokens"}
    assert set(cache.load()) == {"a"}  # not cached: fixed annotations are scored on the next run
    metrics = misalignment_metrics([items[0], broken], records)
    assert metrics["items"] == 2 and metrics["failed"] == 1
