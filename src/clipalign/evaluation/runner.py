"""Score benchmark items in batches with a cache on disk, then compute the benchmark's metrics.

A missing or corrupt image becomes a failed record with its reason and the run goes on; an
interrupted run resumes from the cache; ``limit`` takes the first N items for a quick look.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from clipalign.attribution.baselines import FirstOrderMethod, PatchMap
from clipalign.attribution.fixlip import FIxLIP
from clipalign.attribution.interactions import TokenPatchInteractions
from clipalign.attribution.words import CLIP4DM
from clipalign.datasets.base import MisalignmentItem, PointingItem
from clipalign.evaluation.authors import (
    AUTHORS_POSITIVE,
    AuthorsItem,
    Protocol,
    authors_item,
    is_foil,
    lowest_word_most_negative,
    target_of,
)
from clipalign.evaluation.cache import ResultCache
from clipalign.evaluation.measures import (
    PositiveClass,
    average_precision,
    correlations,
    localisation_hit,
    micro_prf,
    pointing_game,
    strict_hat_hit,
)
from clipalign.metrics.cosines import reference_cosines
from clipalign.metrics.functional import ref_clip_score
from clipalign.results import Interactions, ItemError, WordAlignment, word_row
from clipalign.text.alignment import split_words

Record = dict[str, Any]


LEGACY_KEYS = {"scores": "word_scores", "misaligned": "word_misaligned"}
"""Record keys written by clipalign 0.1.0 → their names in :func:`clipalign.results.word_row`."""


def _upgrade(record: Record) -> Record:
    """A cached record under today's key names (records written by 0.1.0 are read, not recomputed)."""
    return {LEGACY_KEYS.get(k, k): v for k, v in record.items()}


def _word_record(
    item: MisalignmentItem, result: WordAlignment | ItemError, refclip: tuple[float, float] | None
) -> Record:
    if isinstance(result, ItemError):
        return {"id": item.id, "error": result.error}
    hessel, clip4dm = refclip if refclip is not None else (None, None)
    return {
        "id": item.id,
        "error": None,
        **word_row(result),
        "refclipscore": hessel,
        "refclipscore_clip4dm": clip4dm,
    }


def score_misalignment(
    items: Sequence[MisalignmentItem], attributor: CLIP4DM, cache: ResultCache, *, progress: bool = True
) -> list[Record]:
    """Per-item records (cached): word scores, spans, cosine, CLIPScore, F-CLIPScore, RefCLIPScore.

    Items are scored ``attributor.settings.batch_size`` at a time, each batch appended to the cache.
    An item with a ``problem`` (unusable annotations) is not scored: its record is a failure with that
    reason, not cached, so fixed annotations are scored on the next run.
    """
    done = {key: _upgrade(record) for key, record in cache.load().items()}
    for item in items:
        if item.problem is not None:
            done[item.id] = {"id": item.id, "error": item.problem}
    todo = [it for it in items if it.id not in done]
    batch_size = attributor.settings.batch_size
    bar = tqdm(
        total=len(items), initial=len(items) - len(todo), desc="scoring", unit="pair", disable=not progress
    )
    for lo in range(0, len(todo), batch_size):
        batch = todo[lo : lo + batch_size]
        results = attributor.attribute([it.image for it in batch], [it.caption for it in batch])
        refclip = _refclipscores(attributor, batch, results)
        records = [_word_record(it, r, rc) for it, r, rc in zip(batch, results, refclip, strict=True)]
        cache.append(records)
        done.update((r["id"], r) for r in records)
        bar.update(len(batch))
    bar.close()
    return [done[it.id] for it in items]


def _refclipscores(
    attributor: CLIP4DM, batch: Sequence[MisalignmentItem], results: Sequence[WordAlignment | ItemError]
) -> list[tuple[float, float] | None]:
    """RefCLIPScore (Hessel's, and the authors' first-reference variant) for the scored items that have
    references; None elsewhere."""
    scored = [
        (i, r)
        for i, (it, r) in enumerate(zip(batch, results, strict=True))
        if it.references and isinstance(r, WordAlignment)
    ]
    out: list[tuple[float, float] | None] = [None] * len(batch)
    if not scored:
        return out
    rows = [i for i, _ in scored]
    captions = [batch[i].caption for i in rows]
    ref_cos, mask = reference_cosines(
        attributor.model, captions, [list(batch[i].references) for i in rows], attributor.settings.template
    )
    cos = torch.tensor([r.cosine for _, r in scored])  # only the rows with references
    hessel = ref_clip_score(cos, ref_cos, mask).tolist()
    clip4dm = ref_clip_score(cos, ref_cos, mask, convention="clip4dm").tolist()
    for i, pair in zip(rows, zip(hessel, clip4dm, strict=True), strict=True):
        out[i] = pair
    return out


def _mean(values: Sequence[float | bool]) -> float:
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def whitespace_index(caption: str, words: Sequence[str]) -> list[int]:
    """For each scored word (any word unit, in caption order), the whitespace-delimited caption word it
    lies in: annotations label whitespace words, and "directions" + "." both belong to "directions."."""
    spaces = split_words(caption, "whitespace")
    out: list[int] = []
    cursor = k = 0
    for word in words:
        start = caption.find(word, cursor)
        if start < 0:
            raise ValueError(f"word {word!r} is not in the caption {caption!r} after character {cursor}")
        cursor = start + len(word)
        while spaces[k].end <= start:
            k += 1
        out.append(k)
    return out


def _on_whitespace(item: MisalignmentItem, record: Record, indices: Sequence[int]) -> list[int]:
    """Scored-word indices → the sorted whitespace-word indices they cover."""
    ws = whitespace_index(item.caption, record["words"])
    return sorted({ws[i] for i in indices})


def _whitespace_flags(item: MisalignmentItem, record: Record) -> list[bool]:
    """Per whitespace word of the caption: whether any scored word inside it is misaligned."""
    flags = [False] * len(split_words(item.caption, "whitespace"))
    for k, flag in zip(
        whitespace_index(item.caption, record["words"]), record["word_misaligned"], strict=True
    ):
        flags[k] = flags[k] or bool(flag)
    return flags


def our_metrics(pairs: Sequence[tuple[MisalignmentItem, Record]]) -> dict[str, Any]:
    """Our conventions: LA by phrase membership, strict span LA, AP both ways, word P/R/F1, correlations.

    Word-level comparisons are made on the caption's whitespace words (the annotations' unit), so they
    hold for any word unit the scores were computed in.
    """
    out: dict[str, Any] = {}
    foils = [(it, r) for it, r in pairs if not it.aligned]
    if foils:
        out["LA"] = _mean(
            [
                r["lowest_word"] is not None
                and localisation_hit(
                    _on_whitespace(it, r, [r["lowest_word"]]), it.caption, it.misaligned_phrases
                )
                for it, r in foils
            ]
        )
        lowest_spans = [
            min(r["spans"], key=lambda s: s["mean_score"]) if r["spans"] else None for _, r in foils
        ]
        out["LA_span_strict"] = _mean(
            [
                s is not None
                and strict_hat_hit(_on_whitespace(it, r, s["words"]), it.caption, it.misaligned_phrases)
                for (it, r), s in zip(foils, lowest_spans, strict=True)
            ]
        )
    aligned = [it.aligned for it, _ in pairs]
    if 0 < sum(aligned) < len(aligned):
        scores = {
            "F-CLIPScore": [r["f_clipscore"] for _, r in pairs],
            "CLIPScore": [r["clipscore"] for _, r in pairs],
        }
        if all(r.get("refclipscore") is not None for _, r in pairs):
            scores["RefCLIPScore"] = [r["refclipscore"] for _, r in pairs]
        out["AP"] = {
            f"{positive}-positive": {
                name: average_precision(aligned, s, positive) for name, s in scores.items()
            }
            for positive in ("aligned", "misaligned")
        }
    labelled = [(it, r) for it, r in pairs if it.word_labels is not None]
    if labelled:
        prf = micro_prf(
            [it.word_labels or () for it, _ in labelled], [_whitespace_flags(it, r) for it, r in labelled]
        )
        out["word_PRF"] = asdict(prf)
    rated = [(it.misalignment_score, r) for it, r in pairs if it.misalignment_score is not None]
    if len(rated) > 2:
        truth = [score for score, _ in rated]
        out["correlation"] = {
            "F-CLIPScore": correlations([r["f_clipscore"] for _, r in rated], truth),
            "CLIPScore": correlations([r["clipscore"] for _, r in rated], truth),
        }
    return out


def _authors_ap(
    records: Sequence[Record], aligned: Sequence[bool], negatives: Sequence[float], positive: PositiveClass
) -> dict[str, float] | None:
    """Their AP of F-CLIPScore = (1 − cos⁺)·negative, of CLIPScore and of their RefCLIPScore."""
    if not 0 < sum(aligned) < len(aligned):
        return None
    scores = {
        "F-CLIPScore": [(1 - max(r["cosine"], 0.0)) * n for r, n in zip(records, negatives, strict=True)],
        "CLIPScore": [r["clipscore"] for r in records],
    }
    if all(r.get("refclipscore_clip4dm") is not None for r in records):
        scores["RefCLIPScore"] = [r["refclipscore_clip4dm"] for r in records]
    return {name: average_precision(aligned, s, positive) for name, s in scores.items()}


def authors_metrics(
    records: Sequence[Record],
    rows: Sequence[AuthorsItem],
    protocol: Protocol,
    positive: PositiveClass,
    nli_scores: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Their ``calculate_metrics`` on per-item rows: LA = hits / foils, AP, NLI mean, Rich-HF P/R/F1.

    Hits on correct captions count in LA's numerator, as in their code (they cannot happen unless a
    caption contains the word "orig"); an item with no word below ε counts as a miss.
    """
    out: dict[str, Any] = {"positive": positive, "no_prediction": sum(r.empty for r in rows)}
    foils = sum(r.is_foil for r in rows)
    if foils and protocol != "spans":
        out["LA"] = sum(r.hit for r in rows) / foils
    ap = _authors_ap(records, [not r.is_foil for r in rows], [r.negative for r in rows], positive)
    if ap is not None:
        out["AP"] = ap
    if nli_scores is not None:
        out["NLI"] = _mean(nli_scores)
    if protocol == "tokens":
        tp, fp, fn = (sum(r.counts[k] for r in rows) for k in range(3))
        precision = tp / (tp + fp) if tp else 0.0
        recall = tp / (tp + fn) if tp else 0.0
        f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
        out["PRF"] = {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}
    return out


def most_negative_metrics(
    items: Sequence[MisalignmentItem], records: Sequence[Record], positive: PositiveClass
) -> dict[str, Any]:
    """Their ``sorted_by="most_negative"`` variant of FOIL/nocaps-FOIL: the lowest of all words."""
    targets = [target_of(it) for it in items]
    lowest = [lowest_word_most_negative(r) for r in records]
    foil = [is_foil(t) for t in targets]
    out: dict[str, Any] = {"positive": positive}
    if any(foil):
        out["LA"] = sum(w == t for (w, _), t in zip(lowest, targets, strict=True)) / sum(foil)
    ap = _authors_ap(records, [not f for f in foil], [score for _, score in lowest], positive)
    if ap is not None:
        out["AP"] = ap
    return out


def misalignment_metrics(
    items: Sequence[MisalignmentItem],
    records: Sequence[Record],
    nli: Callable[[list[str], list[str]], list[float]] | None = None,
    *,
    epsilon: float | None = None,
    protocol: Protocol | None = None,
    group_by: str | None = None,
) -> dict[str, Any]:
    """Every metric the annotations allow, ours and (given ``protocol`` and ``epsilon``) the authors'.

    Failed items are counted and left out. ``authors`` holds their protocol at ``epsilon`` (see
    :mod:`clipalign.evaluation.authors`), with AP oriented as their run of the benchmark is: originals
    positive for ``lowest_word`` and ``spans``, misaligned positive (scores negated) for ``lowest_span``
    and ``tokens``. ``nli`` (premises, hypotheses) → P(entailment) scores the ``spans`` protocol.
    ``group_by`` names a ``meta`` key (nocaps-FOIL ``domain``, SeeTRUE ``dataset_source``): ``groups``
    then repeats the metrics per value, the authors' AP with originals positive as their per-group
    tables always are.
    """
    pairs = [(it, r) for it, r in zip(items, records, strict=True) if r.get("error") is None]
    out: dict[str, Any] = {"items": len(items), "failed": len(items) - len(pairs)}
    if not pairs:
        return out
    out.update(our_metrics(pairs))
    if protocol is None or epsilon is None:
        return out
    ok_records = [r for _, r in pairs]
    rows = [authors_item(it, r, epsilon, protocol) for it, r in pairs]
    nli_scores = None
    if protocol == "spans" and nli is not None:
        nli_scores = nli([target_of(it) for it, _ in pairs], [row.prediction for row in rows])
    positive = AUTHORS_POSITIVE[protocol]
    out["authors"] = authors_metrics(ok_records, rows, protocol, positive, nli_scores)
    if protocol == "lowest_word":
        out["authors_most_negative"] = most_negative_metrics([it for it, _ in pairs], ok_records, positive)
    if group_by is not None:
        keys = [str(it.meta.get(group_by)) for it, _ in pairs]
        groups: dict[str, Any] = {}
        for name in sorted({str(it.meta.get(group_by)) for it in items}):
            at = [i for i, k in enumerate(keys) if k == name]
            size = sum(str(it.meta.get(group_by)) == name for it in items)
            group: dict[str, Any] = {"items": size, "failed": size - len(at)}
            if not at:  # every item of the group failed
                groups[name] = group
                continue
            group.update(our_metrics([pairs[i] for i in at]))
            group["authors"] = authors_metrics(
                [ok_records[i] for i in at],
                [rows[i] for i in at],
                protocol,
                "aligned",
                None if nli_scores is None else [nli_scores[i] for i in at],
            )
            groups[name] = group
        out["groups"] = {"by": group_by, "rows": groups}
    return out


PointingMethod = TokenPatchInteractions | FIxLIP | FirstOrderMethod
"""What a pointing game scores: interactions (ours or FIxLIP's), whose span rows give a phrase's heatmap,
or a first-order baseline, which maps each phrase to a heatmap of its own."""


def score_pointing(
    items: Sequence[PointingItem],
    method: PointingMethod,
    cache: ResultCache,
    *,
    progress: bool = True,
    seed: int = 0,
) -> list[Record]:
    """Pointing-game records (cached) for each phrase: the method's, a random point's and the centre's.

    With interactions, consecutive phrases of the same image and caption share one matrix, computed
    ``batch_size`` pairs per call (FIxLIP: one pair per call); a first-order baseline computes one map
    per phrase (its text is the phrase), ``batch_size`` phrases per call. Each call's records are
    appended to the cache.
    """
    done = cache.load()
    rng = np.random.default_rng(seed)
    runs: list[list[PointingItem]] = []  # phrases computed from one result
    for item in (it for it in items if it.id not in done):
        shared = not isinstance(method, FirstOrderMethod)
        if shared and runs and (runs[-1][0].image, runs[-1][0].caption) == (item.image, item.caption):
            runs[-1].append(item)
        else:
            runs.append([item])
    size = method.settings.batch_size if not isinstance(method, FIxLIP) else 1
    with tqdm(total=sum(map(len, runs)), desc="pointing", unit="phrase", disable=not progress) as bar:
        for lo in range(0, len(runs), size):
            batch = runs[lo : lo + size]
            images, captions = [run[0].image for run in batch], [run[0].caption for run in batch]
            results: Sequence[Interactions | PatchMap | ItemError]
            if isinstance(method, FirstOrderMethod):
                spans = [(run[0].phrase_start, run[0].phrase_end) for run in batch]
                results = method.attribute(images, captions, spans)
            else:
                results = method.attribute(images, captions)
            records = []
            for run, result in zip(batch, results, strict=True):
                for item in run:
                    try:
                        record = _pointing_record(item, result, rng)
                    except ValueError as exc:  # e.g. a phrase that covers no caption word
                        record = {"id": item.id, "error": str(exc)}
                    records.append(record)
                    done[item.id] = record
            cache.append(records)
            bar.update(len(records))
    return [done[it.id] for it in items]


def _pointing_record(
    item: PointingItem, result: Interactions | PatchMap | ItemError, rng: np.random.Generator
) -> Record:
    """One phrase's record: hit and energy of its heatmap, and of a random point and the centre."""
    if isinstance(result, ItemError):
        return {"id": item.id, "error": result.error}
    if isinstance(result, PatchMap):
        heatmap = result.heatmap()
    else:
        heatmap = result.span_heatmap(phrase_words(result, item.phrase_start, item.phrase_end))
    hit, energy = pointing_game(heatmap, item.boxes)
    width, height = result.geometry.original
    cx, cy, cw, ch = result.geometry.crop_in_original()
    random_point = np.full((height, width), np.nan)
    random_point[int(rng.uniform(cy, cy + ch - 1e-6)), int(rng.uniform(cx, cx + cw - 1e-6))] = 1.0
    centre = np.full((height, width), np.nan)
    centre[int(cy + ch / 2), int(cx + cw / 2)] = 1.0
    return {
        "id": item.id,
        "error": None,
        "hit": hit,
        "energy": energy,
        "random_hit": pointing_game(random_point, item.boxes)[0],
        "centre_hit": pointing_game(centre, item.boxes)[0],
        "box_fraction": _box_fraction(item.boxes, (width, height)),
    }


def phrase_words(result: Interactions, start: int, end: int) -> list[int]:
    """Indices of the caption words of ``result`` that overlap characters [start, end) of the caption."""
    return [i for i, w in enumerate(result.words) if w.start < end and w.end > start]


def _box_fraction(boxes: Sequence[tuple[float, float, float, float]], size: tuple[int, int]) -> float:
    """Share of the image covered by the boxes: the energy of a uniform heatmap."""
    return pointing_game(np.ones((size[1], size[0])), boxes)[1]


def pointing_metrics(records: Sequence[Record]) -> dict[str, Any]:
    ok = [r for r in records if r.get("error") is None]
    out: dict[str, Any] = {"items": len(records), "failed": len(records) - len(ok)}
    if ok:
        out.update(
            accuracy=float(np.mean([r["hit"] for r in ok])),
            energy=float(np.mean([r["energy"] for r in ok])),
            random_accuracy=float(np.mean([r["random_hit"] for r in ok])),
            centre_accuracy=float(np.mean([r["centre_hit"] for r in ok])),
            uniform_energy=float(np.mean([r["box_fraction"] for r in ok])),
        )
    return out


def per_class_metrics(
    items: Sequence[PointingItem], records: Sequence[Record], key: str = "category"
) -> dict[str, Any]:
    """:func:`pointing_metrics` of each class's items, the class being ``item.meta[key]``; rows sorted
    by energy, then accuracy, highest first (a class whose items all failed comes last)."""
    classes: dict[str, list[Record]] = {}
    for item, record in zip(items, records, strict=True):
        classes.setdefault(str(item.meta.get(key)), []).append(record)
    rows = {name: pointing_metrics(group) for name, group in classes.items()}

    def rank(name: str) -> tuple[float, float, str]:
        row = rows[name]
        return (-row.get("energy", -1.0), -row.get("accuracy", -1.0), name)

    return {"by": key, "rows": {name: rows[name] for name in sorted(rows, key=rank)}}
