"""Pictures of results: terminal (rich) renderings now; HTML/PNG and heatmaps to come."""

from clipalign.viz.terminal import coloured_caption, score_line, scored_words, word_table

__all__ = ["coloured_caption", "score_line", "scored_words", "word_table"]
