"""Caption handling: templates, BPE↔word alignment, truncation."""

from clipalign.text.alignment import (
    DEFAULT_TEMPLATE,
    CaptionError,
    CaptionTruncatedWarning,
    EncodedCaption,
    WordSpan,
    encode_caption,
    is_punctuation,
    split_words,
    validate_caption,
)

__all__ = [
    "DEFAULT_TEMPLATE",
    "CaptionError",
    "CaptionTruncatedWarning",
    "EncodedCaption",
    "WordSpan",
    "encode_caption",
    "is_punctuation",
    "split_words",
    "validate_caption",
]
