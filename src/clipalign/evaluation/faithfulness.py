"""Insertion and deletion curves of pointing-game attributions, first and second order, with a random floor.

For each pointing item (an image, its caption and one phrase with its boxes) and each method:

- **image side** (every method): the patches are ordered by the method's map for the phrase (ours and
  FIxLIP: the phrase's token rows of the interaction matrix, summed; first-order baselines: their map of
  the phrase), most positive first. Deletion masks the first round(k·n/steps) patches at step k; insertion
  masks all but them. The tracked score is the cosine of the masked image with the caption's (or, with
  ``score="phrase"``, the phrase's) embedding.
- **text side** (second-order methods): the caption's word tokens are ordered by their interactions with
  the phrase's boxes (the box's patches summed, weighted by overlap) and masked (their ids replaced by the
  reference filler) the same way; the score is the cosine of the image with the masked caption.
- **joint** (second-order methods, FIxLIP's extension to interactions): the (token, patch) entries of the
  matrix are ranked, largest first, and players enter the order pair by pair (the pair's token, then its
  patch, each once); patches and tokens are masked together and the score is the masked pair's cosine.

A random floor averages ``orderings`` seeded random orders per item and side. Curves are normalised
(:data:`~clipalign.evaluation.faithfulness_settings.CurveNormalize`) and their areas taken by the
trapezoid rule over the fractions 0, 1/steps, …, 1: a faithful order has a low deletion area and a high
insertion area. Every masked input of one item and method goes through the model in one batch
(``batch_size`` at a time), and each item's raw curves are cached, so a rerun recomputes nothing.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from clipalign.attribution.baselines import FirstOrderMethod, PatchMap
from clipalign.attribution.fixlip import FIxLIP, patch_pixel_mask
from clipalign.datasets.base import PointingItem
from clipalign.evaluation.benchmark import cache_settings, pointing_method, write_failures
from clipalign.evaluation.cache import ResultCache
from clipalign.evaluation.faithfulness_settings import FaithfulnessSettings
from clipalign.evaluation.report import markdown_table
from clipalign.evaluation.runner import PointingMethod, Record
from clipalign.images import load_image
from clipalign.models.base import ClipAdapter, InteractionAdapter, TextInputs
from clipalign.results import Interactions, ItemError
from clipalign.settings import InteractionSettings, ModelSpec

SIDES = ("image", "text", "joint")
"""The analyses: patches for a phrase, tokens for its boxes, token–patch pairs (second order only)."""
FLOOR = "random order"
"""The random floor's row name in the report."""
DEGENERATE = 1e-6
"""An item whose normaliser (unmasked score, or unmasked − fully masked) is below this is left out."""


def fractions(steps: int) -> np.ndarray:
    """The curve's x-axis: 0, 1/steps, …, 1."""
    return np.arange(steps + 1) / steps


def step_counts(players: int, steps: int) -> np.ndarray:
    """Players masked (deletion) or unmasked (insertion) at each step: round(k·n/steps), halves up."""
    return np.floor(np.arange(steps + 1) * players / steps + 0.5).astype(int)


def keep_masks(order: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(deletion, insertion) keep masks, each (steps + 1, n) bool, for players taken in ``order``: at step k
    deletion keeps all but the first round(k·n/steps) players of the order, insertion keeps only them."""
    players = len(order)
    rank = np.empty(players, dtype=int)
    rank[order] = np.arange(players)
    first = rank[None, :] < step_counts(players, steps)[:, None]
    return ~first, first


def area(curve: Sequence[float] | np.ndarray) -> float:
    """Area under a curve sampled at :func:`fractions`, by the trapezoid rule."""
    values = np.asarray(curve, dtype=np.float64)
    return float(np.trapezoid(values, fractions(len(values) - 1)))


def descending(values: np.ndarray) -> np.ndarray:
    """Indices of ``values`` from the largest to the smallest (ties in index order)."""
    return np.argsort(-np.asarray(values, dtype=np.float64), kind="stable")


def pair_order(matrix: np.ndarray) -> np.ndarray:
    """Players (patches 0…P−1, then tokens P…P+T−1) ordered by the (T, P) interactions: entries from the
    largest down, each adding its token, then its patch, unless already in the order."""
    tokens, patches = matrix.shape
    order: list[int] = []
    seen = np.zeros(patches + tokens, dtype=bool)
    for flat in descending(matrix.ravel()):
        token, patch = divmod(int(flat), patches)
        for player in (patches + token, patch):
            if not seen[player]:
                seen[player] = True
                order.append(player)
    return np.asarray(order, dtype=int)


@dataclass
class Orders:
    """One method's player orders for one item: patches (image side), word tokens (text side, second
    order only) and all players (joint, second order only)."""

    image: np.ndarray
    text: np.ndarray | None = None
    joint: np.ndarray | None = None


class PairGame:
    """Masked scores of one pointing item: its patches and its caption's word tokens are the players.

    A masked patch's pixels (in the model input) become the :data:`MaskValue` fill; a masked token's id
    becomes the text reference's filler. Scores are cosines of unit embeddings in float64.
    """

    def __init__(
        self,
        model: InteractionAdapter,
        item: PointingItem,
        image: Image.Image,
        settings: FaithfulnessSettings,
    ) -> None:
        self.model, self.settings = model, settings
        self.pixels = model.preprocess([image])
        self.fill = self._fill(image)
        [encoded] = model.encode_captions([item.caption], "")
        self.ids = torch.tensor(encoded.input_ids, dtype=torch.long)
        self.pool = encoded.pool_index
        self.words = np.flatnonzero(encoded.token_word >= 0)
        self.filler, _ = model.text_reference_token(settings.text_mask)
        self.patches = model.patch_grid[0] * model.patch_grid[1]
        keep_all = torch.ones((1, len(self.words)), dtype=torch.bool)
        self.caption = self._texts(keep_all)[0]
        if settings.score == "phrase":
            [phrase] = model.encode_captions([item.caption[item.phrase_start : item.phrase_end]], "")
            self.phrase = self._units(model.text_embeddings(model.collate([phrase])).embeds)[0]
        else:
            self.phrase = self.caption
        self.image = self._images(torch.ones((1, self.patches), dtype=torch.bool))[0]

    def _fill(self, image: Image.Image) -> torch.Tensor:
        """What masked pixels become, (1, 3, H, W) in the model input's normalised space."""
        mode = self.settings.mask_value
        if mode == "baseline":
            return torch.zeros_like(self.pixels)
        if mode == "mean":
            return self.pixels.mean(dim=(2, 3), keepdim=True).expand_as(self.pixels)
        return self.model.preprocess([Image.new("RGB", image.size)])

    @staticmethod
    def _units(embeds: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(embeds.double(), dim=-1)

    def _images(self, keep: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (m, D) of the image with the patches of each row of ``keep`` (m, P) kept."""
        out = []
        height, width = self.pixels.shape[2:]
        for batch in keep.split(self.settings.batch_size):
            mask = patch_pixel_mask(batch, self.model.patch_grid, (height, width)).to(self.pixels)
            masked = self.pixels * mask + self.fill * (1 - mask)
            out.append(self._units(self.model.image_embeddings(masked)))
        return torch.cat(out)

    def _texts(self, keep: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (m, D) of the caption with the word tokens of each row of ``keep`` (m, T) kept."""
        out = []
        device = self.model.device
        words = torch.as_tensor(self.words, dtype=torch.long)
        for batch in keep.split(self.settings.batch_size):
            ids = self.ids.repeat(len(batch), 1)
            ids[:, words] = torch.where(batch, ids[:, words], self.filler)
            pool = torch.full((len(batch),), self.pool, dtype=torch.long)
            inputs = TextInputs(ids.to(device), torch.ones_like(ids).to(device), pool.to(device))
            out.append(self._units(self.model.text_embeddings(inputs).embeds))
        return torch.cat(out)

    @torch.no_grad()
    def scores(self, side: str, keep: np.ndarray) -> np.ndarray:
        """The side's score for each row of ``keep`` (m, players) bool; identical rows are computed once."""
        rows, inverse = np.unique(keep, axis=0, return_inverse=True)
        unique = torch.as_tensor(rows)
        if side == "image":
            values = self._images(unique) @ self.phrase
        elif side == "text":
            values = self._texts(unique) @ self.image
        else:
            images = self._images(unique[:, : self.patches])
            values = (images * self._texts(unique[:, self.patches :])).sum(-1)
        return values.cpu().numpy()[inverse.ravel()]

    def players(self, side: str) -> int:
        """How many players the side has."""
        return {"image": self.patches, "text": len(self.words), "joint": self.patches + len(self.words)}[side]

    def curves(self, side: str, orders: Sequence[np.ndarray]) -> dict[str, list[float]]:
        """Deletion and insertion scores at every step, averaged over ``orders`` (all in one batch)."""
        steps = self.settings.steps
        masks = [mask for order in orders for mask in keep_masks(order, steps)]
        values = self.scores(side, np.concatenate(masks)).reshape(len(orders), 2, steps + 1).mean(axis=0)
        return {"deletion": values[0].tolist(), "insertion": values[1].tolist()}


def phrase_words(result: Interactions, item: PointingItem) -> list[int]:
    """Indices of the result's words that overlap the item's phrase; a ValueError when none does."""
    words = [i for i, w in enumerate(result.words) if w.start < item.phrase_end and w.end > item.phrase_start]
    if not words:
        raise ValueError(f"the phrase {item.phrase!r} covers no word of the caption")
    return words


def method_orders(result: Interactions | PatchMap, item: PointingItem, game: PairGame) -> Orders:
    """A method's orders for one item: from a first-order map, the image side only; from interactions,
    the phrase's rows (image), the box-summed columns over word tokens (text), the pairs (joint)."""
    if isinstance(result, PatchMap):
        return Orders(descending(result.values.ravel()))
    image = descending(result.span_grid(phrase_words(result, item)).ravel())
    box_scores = sum(result.box_token_scores(box) for box in item.boxes)
    words = game.words
    text = descending(np.asarray(box_scores)[words])
    return Orders(image, text, pair_order(result.matrix[words]))


def random_orders(
    item: PointingItem, game: PairGame, settings: FaithfulnessSettings
) -> dict[str, list[np.ndarray]]:
    """The floor's ``orderings`` random permutations per side, from the seed and the item's id."""
    rng = np.random.default_rng([settings.seed, zlib.crc32(item.id.encode())])
    return {side: [rng.permutation(game.players(side)) for _ in range(settings.orderings)] for side in SIDES}


def item_record(item: PointingItem, game: PairGame, orders: Mapping[str, Sequence[np.ndarray]]) -> Record:
    """The raw curves of every side that has orders."""
    return {"id": item.id, "error": None, **{side: game.curves(side, o) for side, o in orders.items()}}


def normalized(curves: Mapping[str, Sequence[float]], how: str) -> dict[str, np.ndarray] | None:
    """Both curves made comparable across items, or None when the item's normaliser is degenerate."""
    deletion, insertion = (np.asarray(curves[k], dtype=np.float64) for k in ("deletion", "insertion"))
    unmasked, masked = deletion[0], deletion[-1]
    if how == "difference":
        return {"deletion": deletion - unmasked, "insertion": insertion - unmasked}
    if how == "unmasked":
        if unmasked < DEGENERATE:
            return None
        return {"deletion": deletion / unmasked, "insertion": insertion / unmasked}
    span = unmasked - masked
    if abs(span) < DEGENERATE:
        return None
    return {"deletion": (deletion - masked) / span, "insertion": (insertion - masked) / span}


def side_metrics(records: Sequence[Record], side: str, how: str) -> dict[str, Any] | None:
    """Mean areas, their difference and the mean curves of one side over the records that have it."""
    present = [r[side] for r in records if r.get("error") is None and r.get(side)]
    if not present:
        return None
    kept = [c for c in (normalized(curves, how) for curves in present) if c is not None]
    out: dict[str, Any] = {"items": len(kept), "degenerate": len(present) - len(kept)}
    if kept:
        deletion = [area(c["deletion"]) for c in kept]
        insertion = [area(c["insertion"]) for c in kept]
        out.update(
            deletion_auc=float(np.mean(deletion)),
            insertion_auc=float(np.mean(insertion)),
            difference=float(np.mean(np.subtract(insertion, deletion))),
            curves={k: np.mean([c[k] for c in kept], axis=0).tolist() for k in ("deletion", "insertion")},
        )
    return out


def faithfulness_metrics(
    by_method: Mapping[str, Sequence[Record]], settings: FaithfulnessSettings
) -> dict[str, Any]:
    """Per side, per method (the floor as :data:`FLOOR`): items, deletion/insertion areas, difference."""
    out: dict[str, Any] = {}
    for side in SIDES:
        rows = {name: side_metrics(records, side, settings.normalize) for name, records in by_method.items()}
        present = {name: row for name, row in rows.items() if row is not None}
        if any(name != FLOOR for name in present):  # the floor alone compares nothing
            out[side] = present
    any_records = next(iter(by_method.values()), [])
    out["items"] = len(any_records)
    out["failed"] = {name: sum(r.get("error") is not None for r in rs) for name, rs in by_method.items()}
    return out


@dataclass(frozen=True)
class FaithfulnessRun:
    """What a run produced: metrics, report files, curve figure, items computed anew, failures."""

    metrics: dict[str, Any]
    json_path: Path
    md_path: Path
    png_path: Path
    newly_scored: int
    failures_path: Path | None = None


def _runs(items: Sequence[PointingItem], shared: bool) -> list[list[PointingItem]]:
    """Consecutive items of one image and caption grouped (their interactions are one matrix)."""
    runs: list[list[PointingItem]] = []
    for item in items:
        if shared and runs and (runs[-1][0].image, runs[-1][0].caption) == (item.image, item.caption):
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def _attribute(
    method: PointingMethod, batch: Sequence[list[PointingItem]]
) -> Sequence[Interactions | PatchMap | ItemError]:
    images, captions = [run[0].image for run in batch], [run[0].caption for run in batch]
    if isinstance(method, FirstOrderMethod):
        return method.attribute(images, captions, [(run[0].phrase_start, run[0].phrase_end) for run in batch])
    return method.attribute(images, captions)


def score_method(
    items: Sequence[PointingItem],
    method: PointingMethod | None,
    model: InteractionAdapter,
    cache: ResultCache,
    settings: FaithfulnessSettings,
    *,
    progress: bool = True,
    label: str = "",
) -> list[Record]:
    """Each item's raw curves under ``method`` (None: the random floor), cached item by item.

    Interactions are computed once per image and caption (``batch_size`` captions per call), first-order
    maps ``batch_size`` phrases per call; every batch's records are appended to the cache.
    """
    done = cache.load()
    todo = [it for it in items if it.id not in done]
    shared = method is not None and not isinstance(method, FirstOrderMethod)
    runs = _runs(todo, shared)
    size = 1 if method is None or isinstance(method, FIxLIP) else method.settings.batch_size
    with tqdm(total=len(todo), desc=label or "faithfulness", unit="phrase", disable=not progress) as bar:
        for lo in range(0, len(runs), size):
            batch = runs[lo : lo + size]
            results: Sequence[Interactions | PatchMap | ItemError | None]
            results = [None] * len(batch) if method is None else _attribute(method, batch)
            records = []
            for run, result in zip(batch, results, strict=True):
                for item in run:
                    records.append(_record(item, result, model, settings))
            cache.append(records)
            done.update((r["id"], r) for r in records)
            bar.update(len(records))
    return [done[it.id] for it in items]


def _record(
    item: PointingItem,
    result: Interactions | PatchMap | ItemError | None,
    model: InteractionAdapter,
    settings: FaithfulnessSettings,
) -> Record:
    """One item's record: its raw curves, or why it failed (the method's error, an unreadable image, a
    phrase on no word, a box off the model's crop)."""
    if isinstance(result, ItemError):
        return {"id": item.id, "error": result.error}
    try:
        game = PairGame(model, item, load_image(item.image), settings)
        if result is None:
            return item_record(item, game, random_orders(item, game, settings))
        orders = method_orders(result, item, game)
        sides = {"image": orders.image, "text": orders.text, "joint": orders.joint}
        return item_record(item, game, {side: [o] for side, o in sides.items() if o is not None})
    except Exception as exc:
        return {"id": item.id, "error": f"{type(exc).__name__}: {exc}"}


def run_faithfulness(
    benchmark: str,
    items: Sequence[PointingItem],
    model: ClipAdapter,
    out: str | Path,
    *,
    spec: ModelSpec,
    methods: Sequence[str] = ("interactions",),
    interactions: InteractionSettings | None = None,
    settings: FaithfulnessSettings | None = None,
    built: Mapping[str, PointingMethod] | None = None,
    progress: bool = True,
    loader: Mapping[str, str | Path | None] | None = None,
) -> FaithfulnessRun:
    """Insertion/deletion curves of ``methods`` on a pointing benchmark's items, into
    ``out/faithfulness/benchmark/`` (cache, report.json, report.md, curves.png).

    Each method is cached under the benchmark, ``spec``, its own settings and ``settings`` (the floor
    under the latter alone) and the ``loader`` options the items were loaded with (keyed as ``clipalign
    eval`` keys them), so a rerun resumes and computes nothing already done. ``built`` supplies
    ready methods by name (e.g. FIxLIP at a smaller budget) in place of :func:`pointing_method`'s.
    """
    if not isinstance(model, InteractionAdapter):
        raise ValueError(f"{model.name}: faithfulness curves need a patch grid (InteractionAdapter)")
    settings = settings or FaithfulnessSettings()
    directory = Path(out) / "faithfulness" / benchmark
    common = {"analysis": "faithfulness", **cache_settings(benchmark, spec.to_dict(), loader)}
    common["faithfulness"] = settings.curve_dict()
    start = time.perf_counter()
    by_method: dict[str, list[Record]] = {}
    newly = 0
    keys: dict[str, dict[str, Any]] = {}
    for name in (*methods, FLOOR):
        method = None
        if name != FLOOR:
            method = (built or {}).get(name) or pointing_method(
                name, model, interactions or InteractionSettings()
            )
        keys[name] = {**common, "method": name}
        if method is not None:
            keys[name]["method_settings"] = method.settings.to_dict()
        cache = ResultCache(directory / "cache", keys[name])
        before = len(cache.load())
        by_method[name] = score_method(items, method, model, cache, settings, progress=progress, label=name)
        newly += len(cache.load()) - before
    seconds = time.perf_counter() - start
    metrics = faithfulness_metrics(by_method, settings)
    failures = [
        {"id": it.id, "image": str(it.image), "method": name, "error": r["error"]}
        for name, records in by_method.items()
        for it, r in zip(items, records, strict=True)
        if r.get("error") is not None
    ]
    failures_path = write_failures(directory, failures)
    report = {
        "analysis": "faithfulness",
        "benchmark": benchmark,
        "settings": {
            **common,
            "faithfulness": settings.to_dict(),
            "methods": {k: v.get("method_settings") for k, v in keys.items()},
        },
        "metrics": metrics,
        "failures_file": None if failures_path is None else str(failures_path),
        "seconds": seconds,
        "newly_scored": newly,
    }
    from clipalign.viz.faithfulness_png import plot_curves

    png_path = plot_curves(metrics, directory / "curves.png", title=f"{benchmark} · {spec.name}")
    json_path, md_path = write_faithfulness_report(directory, report)
    return FaithfulnessRun(metrics, json_path, md_path, png_path, newly, failures_path)


SIDE_TITLES = {
    "image": "Image side: patches in the order of each method's map for the phrase",
    "text": "Text side (second order): word tokens in the order of their interactions with the boxes",
    "joint": "Joint (second order): token–patch pairs in the order of their interactions",
}


def methods_rows(rows: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One table row per method, then the floor: items, deletion AUC, insertion AUC, difference."""

    def fmt(value: Any) -> str:
        return "—" if value is None else f"{value:.3f}"

    header = ["method", "items", "deletion AUC ↓", "insertion AUC ↑", "insertion − deletion ↑"]
    body = [
        [
            name,
            str(m["items"]),
            fmt(m.get("deletion_auc")),
            fmt(m.get("insertion_auc")),
            fmt(m.get("difference")),
        ]
        for name, m in rows.items()
    ]
    return header, body


def measured(settings: Mapping[str, Any]) -> list[str]:
    """What the numbers measure, in words, from the run's faithfulness settings."""
    f = settings["faithfulness"]
    score = "the phrase's own embedding" if f["score"] == "phrase" else "the whole caption's embedding"
    fill = {
        "baseline": "all-zero normalised pixels (the processor's mean colour: our interactions' and IG's "
        "reference image)",
        "mean": "the image's own mean colour",
        "zero": "black (pixel value 0 before normalisation)",
    }[f["mask_value"]]
    norm = {
        "unmasked": "divided by the unmasked score (1 = the intact pair)",
        "range": "mapped so that the fully masked score is 0 and the unmasked score 1",
        "difference": "minus the unmasked score (0 = the intact pair; cosine units)",
    }[f["normalize"]]
    return [
        f"- **Score**: image side, the cosine of the masked image with {score}; text and joint sides, the "
        "cosine of the (masked) image with the (masked) caption.",
        f"- **Masking**: a patch's pixels in the model input become {fill}; a token's id becomes the "
        f"`{f['text_mask']}` reference filler.",
        f"- **Steps**: {f['steps']}; at step k the first round(k·n/{f['steps']}) players of the order are "
        "masked (deletion) or alone unmasked (insertion); deletion starts unmasked, insertion fully masked.",
        f"- **Normalisation**: each item's curves {norm}; an item whose divisor (`unmasked`: the unmasked "
        f"score; `range`: its distance to the fully masked score) is below {DEGENERATE:g} is left out "
        "(counted as degenerate).",
        "- **Area**: trapezoid rule over the fractions 0…1, averaged over items; insertion − deletion per "
        "item, then averaged.",
        f"- **Floor**: `{FLOOR}` averages {f['orderings']} seeded random orders per item (seed {f['seed']}).",
    ]


def write_faithfulness_report(directory: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` (one table per side) into ``directory``."""
    import json

    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "report.json"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    metrics = report["metrics"]
    failed = sum(metrics["failed"].values())
    lines = [
        f"# faithfulness · {report['benchmark']}",
        "",
        f"Items: {metrics['items']} · failed (all methods): {failed} · newly computed: "
        f"{report['newly_scored']} in {report['seconds']:.1f} s",
        "",
        *measured(report["settings"]),
    ]
    for side in SIDES:
        if side in metrics:
            lines += ["", f"## {SIDE_TITLES[side]}", "", *markdown_table(*methods_rows(metrics[side]))]
    if report["failures_file"]:
        lines += ["", f"Failed items, one JSON line each: `{report['failures_file']}`"]
    lines += ["", "## Settings", "", "```json", json.dumps(report["settings"], indent=2, default=str), "```"]
    md_path = directory / "report.md"
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path
