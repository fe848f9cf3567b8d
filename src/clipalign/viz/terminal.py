"""Rich renderings of word alignments: a coloured caption and a per-word table."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from clipalign.results import WordAlignment


def _style(score: float, misaligned: bool, scale: float) -> str:
    if misaligned:
        return "bold white on red"
    strength = min(abs(score) / scale, 1.0) if scale > 0 else 0.0
    if strength < 0.15:
        return "default"
    return ("green" if score > 0 else "yellow") + (" bold" if strength > 0.6 else "")


def scored_words(pairs: list[tuple[str, float]]) -> Text:
    """Words coloured by their score's sign and size (green supports, magenta contradicts)."""
    scale = max((abs(s) for _, s in pairs), default=0.0)
    text = Text()
    for i, (word, score) in enumerate(pairs):
        strength = min(abs(score) / scale, 1.0) if scale > 0 else 0.0
        style = (
            "default"
            if strength < 0.15
            else ("green" if score > 0 else "magenta") + (" bold" if strength > 0.6 else "")
        )
        text.append(("" if i == 0 else " ") + word, style=style)
    return text


def coloured_caption(result: WordAlignment) -> Text:
    """The caption as written, misaligned words on red, others green (supports) / yellow (leans against)."""
    scale = max((abs(w.score) for w in result.words), default=0.0)
    text = Text()
    cursor = 0
    for w in result.words:
        text.append(result.caption[cursor : w.start])
        text.append(result.caption[w.start : w.end], style=_style(w.score, w.misaligned, scale))
        cursor = w.end
    text.append(result.caption[cursor:])
    if result.truncated_words:
        text.append(f"  [+{len(result.truncated_words)} words cut at the context limit]", style="dim")
    return text


def score_line(result: WordAlignment) -> Text:
    """The pair's cosine, CLIPScore and F-CLIPScore with the settings that produced them."""
    return Text(
        f"cosine {result.cosine:.4f}   CLIPScore {result.clipscore:.4f}   "
        f"F-CLIPScore {result.f_clipscore:.3e}   (ε = {result.epsilon:g}, mode {result.mode})"
    )


def word_table(result: WordAlignment) -> Table:
    """One row per word: index, word as written, score, misaligned mark."""
    scale = max((abs(w.score) for w in result.words), default=0.0)
    table = Table(title=coloured_caption(result), title_justify="left", show_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("word")
    table.add_column("score", justify="right")
    table.add_column("misaligned", justify="center")
    for i, w in enumerate(result.words):
        style = _style(w.score, w.misaligned, scale)
        table.add_row(str(i), Text(w.word, style=style), f"{w.score:+.3e}", "✗" if w.misaligned else "")
    return table
