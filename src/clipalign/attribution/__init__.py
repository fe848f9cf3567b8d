"""Attribution methods: each a class built once from a model adapter, with one ``attribute()``."""

from clipalign.attribution.words import CLIP4DM, DEFAULT_EPSILON, DEFAULT_LAYERS, TokenAttribution

__all__ = ["CLIP4DM", "DEFAULT_EPSILON", "DEFAULT_LAYERS", "TokenAttribution"]
