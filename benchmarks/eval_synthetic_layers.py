"""CLIP4DM word-level detection on held-out synthetic scenes, for every number of text layers.

The trained synthetic CLIP (``src/clipalign/checkpoints/synthetic-clip``, see
``tools/train_synthetic_clip.py``) scores held-out scenes of a new seed (``clipalign.synthetic``): each
scene's true caption and its 4 one-word foils (colour, shape, size, position). For ``layers`` = 1 ..
number of text layers:

- **LA** (localisation accuracy): share of foil captions whose ``most_negative`` word is the changed word
  (by word index; the same word elsewhere in the caption does not count);
- **AP F-CLIPScore**: scikit-learn ``average_precision_score`` for separating foil from true captions,
  positive class = foil caption, score = −F-CLIPScore (F-CLIPScore ≤ 0, lower = worse, so higher = more
  likely foil). F-CLIPScore always uses the threshold rule (ε = −5e-5), whatever the mode;
- **AP CLIPScore**: the same with −CLIPScore (does not depend on ``layers``);
- **threshold recall**: share of foils whose changed word falls below ε (``mode="threshold"``), with the
  mean number of words marked per caption.

Baselines: a random word (LA = mean over foils of 1 / number of non-punctuation words) and random scores
(AP of seeded uniform scores; its expectation is the share of foils). From the repository root:

    python benchmarks/eval_synthetic_layers.py
    python benchmarks/eval_synthetic_layers.py --model synthetic-siglip    # the synthetic SigLIP

Results go to ``benchmarks/results/synthetic_layers.{json,md}`` (``synthetic_layers_siglip`` for the
synthetic SigLIP; ``--out`` for any other model).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from common import cpu_model
from PIL import Image
from sklearn.metrics import average_precision_score

from clipalign import CLIP4DM, WordAlignment, load_model
from clipalign.datasets import load_synthetic
from clipalign.datasets.base import MisalignmentItem
from clipalign.models import MODEL_ALIASES
from clipalign.settings import WordSettings
from clipalign.synthetic import KINDS, write_dataset

DEFAULT_EPSILON = WordSettings().epsilon
DEFAULT_LAYERS = WordSettings().layers

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "synthetic_layers"
RESULTS_BY_ALIAS = {"synthetic": RESULTS, "synthetic-siglip": RESULTS.with_name("synthetic_layers_siglip")}
"""Where each shipped synthetic model's table goes unless ``--out`` says otherwise."""
NAMES = {"color": "colour", "shape": "shape", "size": "size", "position": "position"}


def evaluate_layers(
    model: Any, items: list[MisalignmentItem], images: dict[Path, Image.Image], layers: int, batch_size: int
) -> dict[str, Any]:
    """Scores of every item with ``layers`` text layers, and the detection metrics."""
    start = time.perf_counter()
    results = CLIP4DM(model, layers=layers, batch_size=batch_size).attribute(
        [images[i.image] for i in items], [i.caption for i in items], mode="most_negative"
    )
    seconds = time.perf_counter() - start
    foil_flags, hits, below, marked = [], [], [], []
    f_scores, clip_scores, cosines = [], [], []
    kind_hits: dict[str, list[bool]] = {k: [] for k in KINDS}
    for item, result in zip(items, results, strict=True):
        if not isinstance(result, WordAlignment):
            raise RuntimeError(f"{item.id}: {result}")
        foil_flags.append(not item.aligned)
        f_scores.append(result.f_clipscore)
        clip_scores.append(result.clipscore)
        cosines.append(result.cosine)
        marked.append(sum(w.score < DEFAULT_EPSILON and not w.punctuation for w in result.words))
        if item.aligned:
            continue
        index = item.meta["word_index"]
        lowest = [i for i, w in enumerate(result.words) if w.misaligned]
        hit = lowest == [index]
        hits.append(hit)
        kind_hits[item.meta["kind"]].append(hit)
        below.append(result.words[index].score < DEFAULT_EPSILON)
    y = np.asarray(foil_flags)
    kinds = np.asarray([i.meta["kind"] for i in items], dtype=object)
    scores = {"f_clipscore": -np.asarray(f_scores), "clipscore": -np.asarray(clip_scores)}
    return {
        "layers": layers,
        "la": float(np.mean(hits)),
        "la_by_kind": {k: float(np.mean(v)) for k, v in kind_hits.items()},
        "ap_f_clipscore": float(average_precision_score(y, scores["f_clipscore"])),
        "ap_clipscore": float(average_precision_score(y, scores["clipscore"])),
        "ap_cosine": float(average_precision_score(y, -np.asarray(cosines))),
        "ap_by_kind": {
            name: {
                k: float(average_precision_score(y[keep], s[keep]))
                for k in KINDS
                for keep in [(kinds == k) | ~y]
            }
            for name, s in scores.items()
        },
        "threshold_recall": float(np.mean(below)),
        "threshold_marked_per_caption": float(np.mean(marked)),
        "seconds": seconds,
    }


def random_baselines(items: list[MisalignmentItem], seed: int) -> dict[str, float]:
    """Random word (expected LA) and random scores (AP) on the same items."""
    y = np.asarray([not i.aligned for i in items])
    chance = [
        1 / len([w for w in i.caption.split() if any(c.isalnum() for c in w)]) for i in items if not i.aligned
    ]
    rng = np.random.default_rng(seed)
    return {
        "la": float(np.mean(chance)),
        "ap": float(average_precision_score(y, rng.random(len(items)))),
        "foil_share": float(y.mean()),
    }


def markdown(report: dict[str, Any]) -> str:
    """The results table, ready to quote."""
    base = report["random"]
    data = report["data"]
    lines = [
        f"`{report['command']}` · {report['machine']['date']} · {report['machine']['cpu']}, "
        f"torch threads: {report['machine']['threads']} · torch {report['machine']['torch']}, "
        f"transformers {report['machine']['transformers']}",
        "",
        f"Model `{report['model']['path']}` ({report['model']['text_layers']} text layers). Held-out data: "
        f"{data['scenes']} scenes of seed {data['seed']} ({data['image_size']} px) → {data['pairs']} pairs "
        f"({data['true']} true captions, {data['foils']} one-word foils, "
        f"{data['foils'] // len(KINDS)} per kind).",
        "",
        "| layers | LA | LA colour | LA shape | LA size | LA position | AP F-CLIPScore | AP CLIPScore "
        "| threshold recall (words marked) | random-word LA | random-score AP |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in report["rows"]:
        kinds = " | ".join(f"{row['la_by_kind'][k]:.3f}" for k in KINDS)
        lines.append(
            f"| {row['layers']} | **{row['la']:.3f}** | {kinds} | {row['ap_f_clipscore']:.3f} | "
            f"{row['ap_clipscore']:.3f} | {row['threshold_recall']:.3f} "
            f"({row['threshold_marked_per_caption']:.2f}) | {base['la']:.3f} | {base['ap']:.3f} |"
        )
    lines += [
        "",
        "AP per foil kind (each kind's foils against all true captions, 1:1; random scores ≈ 0.5):",
        "",
        "| layers | "
        + " | ".join(f"F-CLIPScore {NAMES[k]}" for k in KINDS)
        + " | "
        + " | ".join(f"CLIPScore {NAMES[k]}" for k in KINDS)
        + " |",
        "|--:|" + "--:|" * (2 * len(KINDS)),
    ]
    for row in report["rows"]:
        ap = row["ap_by_kind"]
        cells = [f"{ap['f_clipscore'][k]:.3f}" for k in KINDS] + [f"{ap['clipscore'][k]:.3f}" for k in KINDS]
        lines.append(f"| {row['layers']} | " + " | ".join(cells) + " |")
    best = report["best"]
    by_layers = {row["layers"]: row for row in report["rows"]}
    top, default = by_layers[best["la"]], by_layers.get(DEFAULT_LAYERS)
    versus = (
        f" (the library default `layers={DEFAULT_LAYERS}`: LA {default['la']:.3f}, "
        f"AP F-CLIPScore {default['ap_f_clipscore']:.3f})"
        if default is not None and best["la"] != DEFAULT_LAYERS
        else ""
    )
    best_f = by_layers[best["ap_f_clipscore"]]["ap_f_clipscore"]
    clip_ap = top["ap_clipscore"]
    lines += [
        "",
        'LA: share of foil captions whose most-negative word (`mode="most_negative"`) is the changed word, '
        "matched by word index. AP: scikit-learn `average_precision_score`, positive class = foil caption, "
        "scores negated (−F-CLIPScore, −CLIPScore) so that higher = more likely foil; "
        f"foils are {base['foil_share']:.0%} of pairs, the expected AP of random scores. F-CLIPScore uses "
        f"the threshold rule (ε = {DEFAULT_EPSILON}); threshold recall: share of foils whose changed word "
        "scores below ε, with the mean number of non-punctuation words below ε per caption. "
        f"CLIPScore does not depend on `layers` (AP of −cosine: {report['rows'][0]['ap_cosine']:.3f}).",
        "",
        f"Best `layers`: {best['la']} by LA ({top['la']:.3f}, {top['la'] / base['la']:.1f}× random), "
        f"{best['ap_f_clipscore']} by AP F-CLIPScore ({best_f:.3f}){versus}. Caption-level detection: "
        f"AP F-CLIPScore {best_f:.3f} {'≥' if best_f >= clip_ap else '<'} AP CLIPScore {clip_ap:.3f}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="synthetic",
        help="a shipped alias (synthetic, synthetic-siglip) or a checkpoint folder (default: synthetic)",
    )
    parser.add_argument("--scenes", type=int, default=400, help="held-out scenes (5 pairs each)")
    parser.add_argument("--seed", type=int, default=2, help="held-out seed (training used 0, validation 1)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="output path without suffix (default: by --model)")
    args = parser.parse_args(argv)
    path = MODEL_ALIASES.get(args.model, Path(args.model))
    out = args.out or RESULTS_BY_ALIAS.get(args.model)
    if out is None:
        parser.error(f"--out is needed for a model other than {', '.join(RESULTS_BY_ALIAS)}")
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python benchmarks/eval_synthetic_layers.py", *map(shlex.quote, given)])
    torch.set_num_threads(args.threads)
    model = load_model(path, device="cpu")
    image_size = model.model.config.vision_config.image_size
    with tempfile.TemporaryDirectory() as tmp:
        annotations = write_dataset(tmp, args.scenes, args.seed, image_size)
        items = load_synthetic(annotations, Path(tmp) / "images")
        images = {i.image: Image.open(i.image).convert("RGB") for i in items}
    rows = []
    for layers in range(1, model.num_text_layers + 1):
        row = evaluate_layers(model, items, images, layers, args.batch_size)
        rows.append(row)
        print(
            f"layers={layers}: LA {row['la']:.3f} {row['la_by_kind']}"
            f"  AP F-CLIPScore {row['ap_f_clipscore']:.3f}  AP CLIPScore {row['ap_clipscore']:.3f}"
            f"  threshold recall {row['threshold_recall']:.3f}"
            f"  ({row['seconds']:.1f} s)",
            flush=True,
        )
    baseline = random_baselines(items, args.seed)
    print(f"random: {baseline}")
    n_foils = sum(not i.aligned for i in items)
    report = {
        "command": command,
        "model": {
            "path": str(path.resolve().relative_to(REPO))
            if path.resolve().is_relative_to(REPO)
            else str(path),
            "text_layers": model.num_text_layers,
        },
        "data": {
            "seed": args.seed,
            "scenes": args.scenes,
            "image_size": image_size,
            "pairs": len(items),
            "true": len(items) - n_foils,
            "foils": n_foils,
        },
        "epsilon": DEFAULT_EPSILON,
        "ap_convention": "sklearn average_precision_score; positive class = foil caption; scores negated "
        "(-F-CLIPScore, -CLIPScore) so higher = more likely foil",
        "random": baseline,
        "rows": rows,
        "best": {
            "la": max(rows, key=lambda r: r["la"])["layers"],
            "ap_f_clipscore": max(rows, key=lambda r: r["ap_f_clipscore"])["layers"],
        },
        "machine": {
            "cpu": cpu_model(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(report), encoding="utf-8")
    print(f"wrote {out.with_suffix('.json')} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
