"""Score benchmark items in batches with a cache on disk, then compute the benchmark's metrics.

A missing or corrupt image becomes a failed record with its reason and the run goes on; an
interrupted run resumes from the cache; ``limit`` takes the first N items for a quick look.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from clipalign.attribution.interactions import TokenPatchInteractions
from clipalign.attribution.words import CLIP4DM
from clipalign.datasets.base import MisalignmentItem, PointingItem
from clipalign.evaluation.cache import ResultCache
from clipalign.evaluation.measures import (
    average_precision,
    correlations,
    lenient_hat_hit,
    localisation_hit,
    micro_prf,
    pointing_game,
    strict_hat_hit,
)
from clipalign.metrics.cosines import reference_cosines
from clipalign.metrics.functional import ref_clip_score
from clipalign.results import Interactions, ItemError, WordAlignment, word_row

Record = dict[str, Any]


LEGACY_KEYS = {"scores": "word_scores", "misaligned": "word_misaligned"}
"""Record keys written by clipalign 0.1.0 → their names in :func:`clipalign.results.word_row`."""


def _upgrade(record: Record) -> Record:
    """A cached record under today's key names (records written by 0.1.0 are read, not recomputed)."""
    return {LEGACY_KEYS.get(k, k): v for k, v in record.items()}


def _word_record(item: MisalignmentItem, result: WordAlignment | ItemError, refclip: float | None) -> Record:
    if isinstance(result, ItemError):
        return {"id": item.id, "error": result.error}
    return {"id": item.id, "error": None, **word_row(result), "refclipscore": refclip}


def score_misalignment(
    items: Sequence[MisalignmentItem], attributor: CLIP4DM, cache: ResultCache, *, progress: bool = True
) -> list[Record]:
    """Per-item records (cached): word scores, spans, cosine, CLIPScore, F-CLIPScore, RefCLIPScore.

    Items are scored ``attributor.settings.batch_size`` at a time, each batch appended to the cache.
    """
    done = {key: _upgrade(record) for key, record in cache.load().items()}
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
) -> list[float | None]:
    """RefCLIPScore (Hessel) for the scored items that have references; None elsewhere."""
    rows = [
        i
        for i, (it, r) in enumerate(zip(batch, results, strict=True))
        if it.references and isinstance(r, WordAlignment)
    ]
    out: list[float | None] = [None] * len(batch)
    if not rows:
        return out
    captions = [batch[i].caption for i in rows]
    ref_cos, mask = reference_cosines(
        attributor.model, captions, [list(batch[i].references) for i in rows], attributor.settings.template
    )
    cos = torch.tensor([r.cosine for r in results if isinstance(r, WordAlignment)])
    for i, value in zip(rows, ref_clip_score(cos, ref_cos, mask).tolist(), strict=True):
        out[i] = value
    return out


def misalignment_metrics(
    items: Sequence[MisalignmentItem],
    records: Sequence[Record],
    nli: Callable[[list[str], list[str]], list[float]] | None = None,
) -> dict[str, Any]:
    """Every metric the item annotations allow; failed items are counted and left out."""
    pairs = [(it, r) for it, r in zip(items, records, strict=True) if r.get("error") is None]
    out: dict[str, Any] = {"items": len(items), "failed": len(items) - len(pairs)}
    if not pairs:
        return out
    aligned = [it.aligned for it, _ in pairs]
    foils = [(it, r) for it, r in pairs if not it.aligned]
    if foils:
        out["LA"] = float(
            np.mean(
                [
                    localisation_hit(
                        [r["lowest_word"]] if r["lowest_word"] is not None else [],
                        it.caption,
                        it.misaligned_phrases,
                    )
                    for it, r in foils
                ]
            )
        )
        lowest_spans = [
            min(r["spans"], key=lambda s: s["mean_score"]) if r["spans"] else None for _, r in foils
        ]
        out["LA_span_strict"] = float(
            np.mean(
                [
                    s is not None and strict_hat_hit(s["words"], it.caption, it.misaligned_phrases)
                    for (it, _), s in zip(foils, lowest_spans, strict=True)
                ]
            )
        )
        out["LA_span_lenient"] = float(
            np.mean(
                [
                    s is not None and lenient_hat_hit(s["text"], it.misaligned_phrases)
                    for (it, _), s in zip(foils, lowest_spans, strict=True)
                ]
            )
        )
    if 0 < sum(aligned) < len(aligned):
        ap: dict[str, Any] = {}
        for positive in ("aligned", "misaligned"):
            scores = {
                "F-CLIPScore": [r["f_clipscore"] for _, r in pairs],
                "F-CLIPScore (lowest word)": [r["f_clipscore_min"] for _, r in pairs],
                "CLIPScore": [r["clipscore"] for _, r in pairs],
            }
            if all(r.get("refclipscore") is not None for _, r in pairs):
                scores["RefCLIPScore"] = [r["refclipscore"] for _, r in pairs]
            ap[f"{positive}-positive"] = {
                name: average_precision(aligned, s, positive) for name, s in scores.items()
            }
        out["AP"] = ap
    labelled = [(it.word_labels, r) for it, r in pairs if it.word_labels is not None]
    if labelled:
        prf = micro_prf([labels for labels, _ in labelled], [r["word_misaligned"] for _, r in labelled])
        out["word_PRF"] = {
            "precision": prf.precision,
            "recall": prf.recall,
            "f1": prf.f1,
            "tp": prf.tp,
            "fp": prf.fp,
            "fn": prf.fn,
        }
    rated = [(it.misalignment_score, r) for it, r in pairs if it.misalignment_score is not None]
    if len(rated) > 2:
        truth = [score for score, _ in rated]
        out["correlation"] = {
            "F-CLIPScore": correlations([r["f_clipscore"] for _, r in rated], truth),
            "CLIPScore": correlations([r["clipscore"] for _, r in rated], truth),
        }
    with_feedback = [(it.feedback, r) for it, r in pairs if it.feedback is not None]
    if with_feedback and nli is not None:
        hypotheses = [", ".join(s["text"] for s in r["spans"]) for _, r in with_feedback]
        out["NLI"] = float(np.mean(nli([feedback for feedback, _ in with_feedback], hypotheses)))
    return out


def score_pointing(
    items: Sequence[PointingItem],
    method: TokenPatchInteractions,
    cache: ResultCache,
    *,
    progress: bool = True,
    seed: int = 0,
) -> list[Record]:
    """Pointing-game records (cached) for each phrase: ours, a random point and the image centre.

    Consecutive phrases of the same image and caption share one interaction matrix.
    """
    done = cache.load()
    rng = np.random.default_rng(seed)
    todo = [it for it in items if it.id not in done]
    last: tuple[Path, str, Interactions | ItemError] | None = None
    for item in tqdm(todo, desc="pointing", unit="phrase", disable=not progress):
        if last is None or last[:2] != (item.image, item.caption):
            [computed] = method.attribute([item.image], [item.caption])
            last = (item.image, item.caption, computed)
        result = last[2]
        try:
            record = _pointing_record(item, result, rng)
        except ValueError as exc:  # e.g. a phrase that covers no caption word
            record = {"id": item.id, "error": str(exc)}
        cache.append([record])
        done[item.id] = record
    return [done[it.id] for it in items]


def _pointing_record(
    item: PointingItem, result: Interactions | ItemError, rng: np.random.Generator
) -> Record:
    """One phrase's record: hit and energy of its heatmap, and of a random point and the centre."""
    if isinstance(result, ItemError):
        return {"id": item.id, "error": result.error}
    words = [i for i, w in enumerate(result.words) if w.start < item.phrase_end and w.end > item.phrase_start]
    hit, energy = pointing_game(result.span_heatmap(words), item.boxes)
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
