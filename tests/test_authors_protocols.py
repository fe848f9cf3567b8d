"""The CLIP4DM authors' evaluation protocol (naver-ai/clip4dm main.py, src/utils.py, src/dataset.py),
restated here in plain loops, against :mod:`clipalign.evaluation.authors` and the metrics runner.

What their code does, in our words:

- Word units: the templated caption is split on spaces, with "." and "," made words of their own; the
  template's words are dropped. In threshold mode (their default, also on FOIL/nocaps-FOIL) the units
  whose text is a substring of '.,!"?;:" ' (or blank) are dropped, the rest numbered 0, 1, ... in
  order; those scoring below ε become "number_word" strings, sorted by score (lowest first), joined by
  spaces and lower-cased; their scores are listed in the same order and summed.
- FOIL / nocaps-FOIL: the first of those strings, the part after its last "_", must equal the foil
  word (stripped, lower-cased); with no string at all their code crashes (we count a miss).
- HAT: the strings are re-sorted by number; consecutive numbers join one span (words joined by a
  space, score = mean); the span of lowest mean (first on ties) replaces the sum; a hit when its text is
  a substring of the hallucinated grounding words (without "." and ","), joined by spaces.
- SeeTRUE-Feedback: the spans, in caption order, joined by ", " form the hypothesis; the premise is
  caption_misalignment stripped and lower-cased; no span → NLI 0; NLI = mean over all rows.
- Rich-HF: "number_token" of misaligned prompt tokens (split on each of ,.?!":; and space) against the
  predicted "number_word" strings: each truth found in the predictions (removed once used) is a TP,
  else FN; the predictions left over are FPs.
- calculate_metrics: F-CLIPScore = sum_negative_attribution · (1 − pair_score / 2.5), pair_score =
  2.5·max(cos, 0); LA = hits / foils; AP with originals positive ranked by the score (FOIL, nocaps-FOIL,
  SeeTRUE, and every per-group table) or foils positive ranked by −score (HAT, Rich-HF).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, require
from sklearn.metrics import average_precision_score

from clipalign.datasets import (
    MisalignmentItem,
    load_hat,
    load_nocaps_foil,
    load_richhf,
    load_seetrue_feedback,
)
from clipalign.evaluation.authors import authors_item, lowest_word_most_negative, merge_spans, units
from clipalign.evaluation.runner import misalignment_metrics

HAT = SHARED / "annotations" / "hat-trainval.json"
NOCAPS = SHARED / "annotations" / "nocaps-val-foil.json"
EPS = -5e-5
THEIR_PUNCTUATION = '.,!"?;:" '


# -------------------- their procedures, restated


def their_units(caption: str) -> list[str]:
    """Split on spaces with "." and "," as units of their own (their word splitter)."""
    out, current = [], ""
    for ch in caption:
        if ch == " ":
            if current:
                out.append(current)
            current = ""
        elif ch in ".,":
            if current:
                out.append(current)
            current = ""
            out.append(ch)
        else:
            current += ch
    if current:
        out.append(current)
    return out


def their_negatives(words: list[str], scores: list[float], eps: float) -> tuple[str, list[float]]:
    """The "number_word" string of words below ε (lowest first, lower-cased) and their scores."""
    kept = []
    for word, score in zip(words, scores, strict=True):
        if word in THEIR_PUNCTUATION or not word.strip():
            continue
        kept.append((word, score))
    below = []
    for number, (word, score) in enumerate(kept):
        if score < eps:
            below.append((f"{number}_{word}", score))
    below.sort(key=lambda pair: pair[1])
    return " ".join(name for name, _ in below).strip().lower(), [score for _, score in below]


def their_spans(negative: str, scores: list[float]) -> list[tuple[str, float]]:
    """Re-sort by number and join consecutive numbers: (words, mean score) per span."""
    if not negative:
        return []
    parts = sorted(zip(negative.split(" "), scores, strict=True), key=lambda p: int(p[0].split("_")[0]))
    spans: list[tuple[str, float]] = []
    words: list[str] = []
    values: list[float] = []
    last = -1
    for part, score in parts:
        number, word = part.split("_")
        if int(number) == last + 1:
            words.append(word)
            values.append(score)
        else:
            if words:
                spans.append((" ".join(words), sum(values) / len(values)))
            words, values = [word], [score]
        last = int(number)
    if words:
        spans.append((" ".join(words), sum(values) / len(values)))
    return spans


def their_row(kind: str, words: list[str], scores: list[float], target: str, eps: float = EPS) -> dict:
    """One sample as their main loop leaves it: the prediction, whether it hits, the summed term."""
    negative, values = their_negatives(words, scores, eps)
    total = sum(values) if values else 0
    if kind == "foil":
        if not negative:  # their code raises IndexError here; we count a miss
            return {"prediction": "", "hit": False, "negative": total}
        word = negative.split()[0].split("_")[-1]
        return {"prediction": word, "hit": word == target, "negative": total}
    if kind == "hat":
        if not negative:
            return {"prediction": "", "hit": False, "negative": total}
        text, mean = sorted(their_spans(negative, values), key=lambda s: s[1])[0]
        return {"prediction": text, "hit": text in target, "negative": mean}
    if kind == "seetrue":
        return {"prediction": ", ".join(t for t, _ in their_spans(negative, values)), "negative": total}
    assert kind == "richhf"
    predicted = negative.split()
    tp = fn = 0
    for wanted in target.split():
        if wanted in predicted:
            tp += 1
            predicted.remove(wanted)
        else:
            fn += 1
    return {"counts": (tp, len(predicted), fn), "hit": tp > 0, "negative": total}


def their_metrics(rows: list[dict], targets: list[str], cosines: list[float], foil_is_positive: bool) -> dict:
    """calculate_metrics: LA = hits / foils; AP of F-CLIPScore and CLIPScore in their orientation."""
    labels = [t if t.strip() else "orig" for t in targets]
    is_foil = np.array([t != "orig" for t in labels])
    pair = np.array([max(c, 0.0) * 2.5 for c in cosines])
    fclip = np.array([r["negative"] for r in rows]) * (1 - pair / 2.5)
    out = {"LA": sum(r.get("hit", False) for r in rows) / is_foil.sum()}
    if foil_is_positive:
        out["AP"] = average_precision_score(~is_foil, fclip)
        out["AP_clipscore"] = average_precision_score(~is_foil, pair)
    else:
        out["AP"] = average_precision_score(is_foil, -fclip)
        out["AP_clipscore"] = average_precision_score(is_foil, -pair)
    return out


# -------------------- synthetic records


def _records(captions: list[str], rng: np.random.Generator) -> list[dict]:
    """Records as the runner stores them for the CLIP4DM word unit ("." and "," words of their own)."""
    records = []
    for i, caption in enumerate(captions):
        words = their_units(caption)
        scores = list(rng.normal(0, 1e-4, len(words)))
        cos = float(rng.uniform(-0.1, 0.4))
        records.append(
            {
                "id": str(i),
                "error": None,
                "words": words,
                "word_scores": scores,
                "cosine": cos,
                "clipscore": 2.5 * max(cos, 0.0),
                "f_clipscore": 0.0,
                "lowest_word": None,
                "spans": [],
                "word_misaligned": [False] * len(words),
            }
        )
    return records


def test_units_numbering_and_spans_by_hand():
    words = ["A", "Dog", ",", "a", '"', "Red", "hat", "."]
    kept = units(words, [0.0, -1.0, -9.0, 0.0, -9.0, -3.0, -2.0, -9.0])
    assert [(u.index, u.text) for u in kept] == [(0, "a"), (1, "dog"), (2, "a"), (3, "red"), (4, "hat")]
    below = [u for u in kept if u.score < -0.5]
    assert merge_spans(below) == [("dog", -1.0), ("red hat", -2.5)]
    # whitespace words keep attached "." and ","; their splitter would have cut them off
    assert [u.text for u in units(["grass.", "dog,", ".,"], [0.0, 0.0, 0.0])] == ["grass", "dog"]


@pytest.mark.parametrize("kind", ["foil", "hat", "seetrue"])
def test_synthetic_rows_match_restatement(kind):
    rng = np.random.default_rng(3)
    captions = [
        "A man hits a golf ball, on the green.",
        "Two dogs play. A cat, a red hat and a box",
        'The sign reads "welcome" in red!',
        "a b c d e f g",
    ] * 10
    records = _records(captions, rng)
    targets = ["golf", "red hat", "welcome", "orig"] * 10
    protocol = {"foil": "lowest_word", "hat": "lowest_span", "seetrue": "spans"}[kind]
    for caption, record, target in zip(captions, records, targets, strict=True):
        item = MisalignmentItem(
            "x", Path("x.png"), caption, target == "orig", meta={"clip4dm_target": target}
        )
        got = authors_item(item, record, EPS, protocol)
        want = their_row(kind, record["words"], record["word_scores"], target)
        assert got.prediction == want["prediction"]
        assert got.negative == pytest.approx(want["negative"], abs=1e-15)
        if kind != "seetrue":
            assert got.hit == want["hit"]


def test_most_negative_variant_matches_restatement():
    """sorted_by="most_negative": every unit after the template (punctuation too), the lowest first."""
    rng = np.random.default_rng(4)
    for record in _records(["A man hits a golf ball, on the green."] * 20, rng):
        pairs = sorted(zip(record["words"], record["word_scores"], strict=True), key=lambda p: p[1])
        word, score = pairs[0]
        expected = word.strip().lower().split()[0].split("_")[-1]
        got_word, got_score = lowest_word_most_negative(record)
        assert got_score == score
        assert got_word == (expected if expected not in ".," else "")  # "." or "," never equals a foil


def test_multi_word_foils_never_hit_and_no_prediction_is_a_miss():
    record = _records(["a man hits a golf ball"], np.random.default_rng(0))[0]
    record["word_scores"] = [0.0, 0.0, 0.0, 0.0, -2e-4, -1e-4]
    item = MisalignmentItem("x", Path("x.png"), "a man hits a golf ball", False, ("golf ball",))
    row = authors_item(item, record, EPS, "lowest_word")
    assert row.prediction == "golf" and not row.hit  # "golf" != "golf ball"
    record["word_scores"] = [0.0] * 6
    row = authors_item(item, record, EPS, "lowest_word")
    assert row.empty and not row.hit and row.negative == 0.0


# -------------------- the real annotation files


def _their_hat_targets(path: Path) -> list[str]:
    targets = []
    for entry in json.loads(path.read_text()):
        words = [token.replace(".", "").replace(",", "") for token, bad in entry["grounding"] if bad]
        targets.append(" ".join(words).strip().lower())
    return targets


def test_real_hat_matches_restatement():
    path = require(HAT)
    items = load_hat(path, "images")
    targets = _their_hat_targets(path)
    assert [it.meta["clip4dm_target"] for it in items] == targets
    rng = np.random.default_rng(7)
    records = _records([it.caption for it in items], rng)
    # make many hits possible: push the hallucinated words' scores down
    for item, record in zip(items, records, strict=True):
        bad = {w.replace(".", "").replace(",", "").lower() for w in item.meta["clip4dm_target"].split()}
        record["word_scores"] = [
            s - 2e-4 if w.lower() in bad else s
            for w, s in zip(record["words"], record["word_scores"], strict=True)
        ]
    metrics = misalignment_metrics(items, records, epsilon=EPS, protocol="lowest_span")
    rows = [their_row("hat", r["words"], r["word_scores"], t) for r, t in zip(records, targets, strict=True)]
    want = their_metrics(rows, targets, [r["cosine"] for r in records], foil_is_positive=False)
    authors = metrics["authors"]
    assert 0.1 < authors["LA"] < 1.0
    assert authors["LA"] == pytest.approx(want["LA"])
    assert authors["AP"]["F-CLIPScore"] == pytest.approx(want["AP"])
    assert authors["AP"]["CLIPScore"] == pytest.approx(want["AP_clipscore"])
    assert authors["positive"] == "misaligned"


def test_real_nocaps_matches_restatement_overall_and_per_domain():
    path = require(NOCAPS)
    items = load_nocaps_foil(path, "images")
    entries = json.loads(path.read_text())
    # their dataset: per entry the foil, then the baseline with replacement ["", ""] ("orig")
    theirs = {}
    for entry in entries:
        stem = Path(entry["image_path"]).stem
        same = entry["replacement"][0] == entry["replacement"][1]
        theirs[f"{stem}-foil"] = ("orig" if same else entry["replacement"][1]).strip().lower()
        theirs[f"{stem}-baseline"] = "orig"
    assert {it.id: it.meta["clip4dm_target"] for it in items} == theirs
    rng = np.random.default_rng(11)
    records = _records([it.caption.strip() for it in items], rng)
    for item, record in zip(items, records, strict=True):
        foil = item.meta["clip4dm_target"]
        record["word_scores"] = [
            s - 1.5e-4 if w.lower() in foil.split() else s
            for w, s in zip(record["words"], record["word_scores"], strict=True)
        ]
    metrics = misalignment_metrics(items, records, epsilon=EPS, protocol="lowest_word", group_by="domain")
    targets = [it.meta["clip4dm_target"] for it in items]
    rows = [their_row("foil", r["words"], r["word_scores"], t) for r, t in zip(records, targets, strict=True)]
    cosines = [r["cosine"] for r in records]
    want = their_metrics(rows, targets, cosines, foil_is_positive=True)
    assert 0.2 < metrics["authors"]["LA"] < 0.95
    assert metrics["authors"]["LA"] == pytest.approx(want["LA"])
    assert metrics["authors"]["AP"]["F-CLIPScore"] == pytest.approx(want["AP"])
    assert metrics["authors"]["AP"]["CLIPScore"] == pytest.approx(want["AP_clipscore"])
    multi = [i for i, t in enumerate(targets) if " " in t]
    assert len(multi) == 285 and not any(rows[i]["hit"] for i in multi)
    groups = metrics["groups"]
    assert groups["by"] == "domain" and set(groups["rows"]) == {"in-domain", "near-domain", "out-domain"}
    for domain, row in groups["rows"].items():
        at = [i for i, it in enumerate(items) if it.meta["domain"] == domain]
        expected = their_metrics(
            [rows[i] for i in at], [targets[i] for i in at], [cosines[i] for i in at], foil_is_positive=True
        )
        assert row["items"] == len(at)
        assert row["authors"]["LA"] == pytest.approx(expected["LA"])
        assert row["authors"]["AP"]["F-CLIPScore"] == pytest.approx(expected["AP"])


# -------------------- SeeTRUE-Feedback NLI and Rich-HF matching


def test_seetrue_premise_hypothesis_and_groups(tmp_path):
    rows = [
        {"image": "a.png", "image_caption": "A red bus, parked near a Tree.",
         "caption_misalignment": " Red Bus ", "dataset_source": "DrawBench", "id_in_source_dataset": 1},
        {"image": "b.png", "image_caption": "Two cats on a sofa", "caption_misalignment": '"two cats"',
         "dataset_source": "COCO", "id_in_source_dataset": 2},
        {"image": "c.png", "image_caption": "A dog", "caption_misalignment": "dog",
         "dataset_source": "COCO", "id_in_source_dataset": 3},
    ]  # fmt: skip
    path = tmp_path / "seetrue.json"
    path.write_text(json.dumps(rows))
    items = load_seetrue_feedback(path, tmp_path)
    records = _records([it.caption for it in items], np.random.default_rng(0))
    records[0]["word_scores"] = [
        -1e-4,
        -2e-4,
        -3e-4,
        0.0,
        0.0,
        0.0,
        -1e-4,
        -1e-4,
        0.0,
    ]  # A red bus , parked ...
    records[1]["word_scores"] = [0.0, -1e-4, 0.0, 0.0, -1e-4]
    records[2]["word_scores"] = [0.0, 0.0]
    seen = {}

    def nli(premises, hypotheses):
        seen["premises"], seen["hypotheses"] = premises, hypotheses
        return [0.0 if not h else 0.5 + 0.1 * i for i, h in enumerate(hypotheses)]

    metrics = misalignment_metrics(
        items, records, nli, epsilon=EPS, protocol="spans", group_by="dataset_source"
    )
    want = [their_row("seetrue", r["words"], r["word_scores"], "") for r in records]
    assert seen["premises"] == [r["caption_misalignment"].strip().lower() for r in rows]
    assert seen["hypotheses"] == [w["prediction"] for w in want] == ["a red bus, a tree", "cats, sofa", ""]
    assert metrics["authors"]["NLI"] == pytest.approx((0.5 + 0.6 + 0.0) / 3)
    groups = metrics["groups"]["rows"]
    assert groups["COCO"]["authors"]["NLI"] == pytest.approx(0.3)
    assert groups["DrawBench"]["authors"]["NLI"] == pytest.approx(0.5)


def _richhf_items(tmp_path):
    from test_datasets import PROMPTS, _richhf_file

    return load_richhf(_richhf_file(tmp_path), tmp_path, prompts=PROMPTS)


def test_richhf_index_matching(tmp_path):
    items = _richhf_items(tmp_path)
    # u1: 'A dog, a "red" cat; and a hat.' with dog red cat misaligned (labels 1 0 1 0 0 1 1 1)
    assert items[0].meta["clip4dm_target"] == "1_dog 3_red 4_cat"
    records = _records([it.caption for it in items], np.random.default_rng(0))
    # their units of u1: A dog , a "red" cat; and a hat .  → numbered A0 dog1 a2 "red"3 cat;4 and5 a6 hat7
    records[0]["word_scores"] = [0.0, -1e-4, 0.0, 0.0, -2e-4, -3e-4, 0.0, 0.0, -1e-4, 0.0]
    records[1]["word_scores"] = [-1e-4] + [0.0] * (len(records[1]["words"]) - 1)
    metrics = misalignment_metrics(items, records, epsilon=EPS, protocol="tokens")
    counts = [
        their_row("richhf", r["words"], r["word_scores"], it.meta["clip4dm_target"])["counts"]
        for it, r in zip(items, records, strict=True)
    ]
    # "dog" matches; '"red"' and "cat;" keep their punctuation in their units, so they never match
    assert counts == [(1, 3, 2), (0, 1, 0)]
    tp, fp, fn = (sum(c[k] for c in counts) for k in range(3))
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    prf = metrics["authors"]["PRF"]
    assert (prf["tp"], prf["fp"], prf["fn"]) == (tp, fp, fn)
    assert prf["f1"] == pytest.approx(2 * precision * recall / (precision + recall))


def test_ap_orientation_per_protocol():
    rng = np.random.default_rng(5)
    captions = ["a red ball on the grass"] * 40
    records = _records(captions, rng)
    targets = ["red" if i % 2 else "orig" for i in range(40)]
    items = [
        MisalignmentItem(str(i), Path("x.png"), c, t == "orig", ("red",) if t != "orig" else (),
                         meta={"clip4dm_target": t if t != "orig" else ""})
        for i, (c, t) in enumerate(zip(captions, targets, strict=True))
    ]  # fmt: skip
    cosines = [r["cosine"] for r in records]
    for protocol, kind, foil_is_positive in (
        ("lowest_word", "foil", True),
        ("lowest_span", "hat", False),
    ):
        rows = [
            their_row(kind, r["words"], r["word_scores"], t) for r, t in zip(records, targets, strict=True)
        ]
        want = their_metrics(rows, targets, cosines, foil_is_positive)
        got = misalignment_metrics(items, records, epsilon=EPS, protocol=protocol)["authors"]
        assert got["AP"]["F-CLIPScore"] == pytest.approx(want["AP"])
        assert got["AP"]["CLIPScore"] == pytest.approx(want["AP_clipscore"])
        assert got["positive"] == ("aligned" if foil_is_positive else "misaligned")


def test_a_group_whose_items_all_failed_keeps_its_row():
    captions = ["a red ball", "a blue ball", "a cat"]
    records = _records(captions, np.random.default_rng(0))
    records[2] = {"id": "2", "error": "cannot read image: no such file"}
    items = [
        MisalignmentItem(str(i), Path("x.png"), c, i == 0, () if i == 0 else ("blue",), meta={"domain": d})
        for i, (c, d) in enumerate(zip(captions, ["in", "in", "out"], strict=True))
    ]
    groups = misalignment_metrics(items, records, epsilon=EPS, protocol="lowest_word", group_by="domain")
    assert groups["groups"]["rows"]["out"] == {"items": 1, "failed": 1}
    assert groups["groups"]["rows"]["in"]["items"] == 2 and "authors" in groups["groups"]["rows"]["in"]
