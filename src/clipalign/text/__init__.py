"""Caption handling: templates, BPE↔word alignment, truncation."""

from clipalign.text.alignment import (
    DEFAULT_TEMPLATE,
    CaptionError,
    CaptionTruncatedWarning,
    EncodedCaption,
    WordSpan,
    WordUnit,
    encode_caption,
    is_punctuation,
    split_words,
    validate_caption,
)
from clipalign.text.spans import find_span

__all__ = [
    "DEFAULT_TEMPLATE",
    "CaptionError",
    "CaptionTruncatedWarning",
    "EncodedCaption",
    "WordSpan",
    "WordUnit",
    "encode_caption",
    "find_span",
    "is_punctuation",
    "split_words",
    "validate_caption",
]
