"""Attribution methods: each a class built once from a model adapter, with one ``attribute()``."""

from clipalign.attribution.interactions import TokenPatchInteractions
from clipalign.attribution.words import CLIP4DM, TokenAttribution

__all__ = ["CLIP4DM", "TokenAttribution", "TokenPatchInteractions"]
