"""The columns of a scan's Parquet output, and where its settings go in the file's metadata."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

METADATA_KEY = b"clipalign"

SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("key", pa.string()),
        ("caption", pa.string()),
        ("cosine", pa.float64()),
        ("clipscore", pa.float64()),
        ("f_clipscore", pa.float64()),
        ("misaligned_words", pa.list_(pa.string())),
        (
            "spans",
            pa.list_(
                pa.struct(
                    [
                        ("text", pa.string()),
                        ("start", pa.int32()),
                        ("end", pa.int32()),
                        ("mean_score", pa.float64()),
                        ("sum_score", pa.float64()),
                    ]
                )
            ),
        ),
        ("words", pa.list_(pa.string())),
        ("word_scores", pa.list_(pa.float64())),
        ("truncated_words", pa.list_(pa.string())),
        ("error", pa.string()),
    ]
)
"""One row per input sample; scores are null and ``error`` says why when it could not be scored."""

Row = dict[str, Any]
