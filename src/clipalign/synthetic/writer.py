"""Writing a synthetic dataset to disk: one PNG per scene and an ``annotations.json``.

The same (n, seed, image_size) always gives identical bytes (with the same NumPy and Pillow versions).
:func:`clipalign.datasets.load_synthetic` and :func:`~clipalign.datasets.load_synthetic_pointing` read
it back as benchmark items. The annotations file::

    {
      "format": "clipalign-synthetic-v1",
      "seed": 0, "n": 100, "image_size": 64,
      "vocabulary": {"shape": [...], "color": [...], "size": [...], "position": [...]},
      "scenes": [
        {
          "id": "000000",
          "file_name": "000000.png",          # relative to the images directory
          "width": 64, "height": 64,
          "background": {"kind": "stripes", "rgb": [120, 118, 125], ...},
          "caption": "a large red circle on the left and a small blue square on the top",
          "objects": [
            {"shape": "circle", "color": "red", "size": "large", "position": "left",
             "center": [14.2, 30.9], "radius": 10.4, "rgb": [221, 38, 45],
             "box": [3.8, 20.5, 20.8, 20.8],             # x, y, w, h in pixels
             "phrase": "red circle", "phrase_span": [8, 18],   # characters of the caption
             "word_indices": {"size": 1, "color": 2, "shape": 3, "position": 6}}
          ],
          "foils": [
            {"kind": "color", "object": 0, "word_index": 2, "original": "red", "foil": "green",
             "caption": "a large green circle on the left and a small blue square on the top"}
          ]
        }
      ]
    }

``word_index`` counts whitespace-delimited words of the caption from 0 (``caption.split()``). Boxes are
exact: the bounding box of the drawn geometry, where pixel (i, j) covers [i, i + 1) × [j, j + 1).
"""

from __future__ import annotations

import json
from pathlib import Path

from clipalign.synthetic.generator import generate_scenes
from clipalign.synthetic.vocabulary import vocabulary_of

FORMAT = "clipalign-synthetic-v1"
"""The ``format`` field of an annotations file; loaders refuse any other."""


def write_dataset(
    out_dir: str | Path, n: int, seed: int, image_size: int = 64, *, world: str = "default"
) -> Path:
    """Write ``n`` scenes as ``out_dir/images/NNNNNN.png`` and ``out_dir/annotations.json``.

    Returns the annotations path. The same (n, seed, image_size, world) always gives identical bytes; a
    world other than the default is recorded as ``"world"`` and its colour words in ``vocabulary``.
    """
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(max(n - 1, 0))))
    entries = []
    for i, scene in enumerate(generate_scenes(n, seed, image_size, world=world)):
        scene_id = f"{i:0{width}d}"
        file_name = f"{scene_id}.png"
        scene.render().save(images / file_name, format="PNG")
        entries.append({"id": scene_id, "file_name": file_name, **scene.to_dict()})
    document = {
        "format": FORMAT,
        "seed": seed,
        "n": n,
        "image_size": image_size,
        **({"world": world} if world != "default" else {}),
        "vocabulary": {k: list(v) for k, v in vocabulary_of(world).items()},
        "scenes": entries,
    }
    path = out / "annotations.json"
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return path
