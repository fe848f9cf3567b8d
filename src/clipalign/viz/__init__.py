"""Pictures of results: terminal (rich), HTML and PNG word colourings, heatmaps over the image."""

from clipalign.viz.terminal import coloured_caption, interaction_table, score_line, word_table

__all__ = ["coloured_caption", "interaction_table", "score_line", "word_table"]
