"""Rich renderings of results for the terminal: the caption, per-word tables, a patch grid.

Colour only repeats what the text already says, so output piped to a file, read with ``NO_COLOR``
or by someone who cannot tell red from green carries the same signal: scores are printed in full
with their signs, misaligned words are [bracketed] in the caption and marked ✗ in the tables, the
words of a chosen span are marked ``*``. Every column folds a long cell onto more lines instead of
cutting it, so nothing is lost at 80 columns either.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import JustifyMethod
from rich.table import Table
from rich.text import Text

from clipalign.results import Interactions, WordAlignment

MISALIGNED = "✗"
"""The misaligned-word mark of the tables."""

SELECTED = "*"
"""The mark of a word in the chosen span."""


def _style(score: float, misaligned: bool, scale: float) -> str:
    """Red for misaligned; green (supports) / yellow (leans against) by the score's size otherwise."""
    if misaligned:
        return "bold white on red"
    return _strength_style(score, scale, against="yellow")


def _strength_style(score: float, scale: float, against: str = "magenta") -> str:
    """Plain when |score| is small next to ``scale``, else green (> 0) or ``against`` (< 0); bold if large."""
    strength = min(abs(score) / scale, 1.0) if scale > 0 else 0.0
    if strength < 0.15:
        return "default"
    return ("green" if score > 0 else against) + (" bold" if strength > 0.6 else "")


def signed(value: float) -> str:
    """A score in full with its sign, as every table prints it: ``+1.234e-03``."""
    return f"{value:+.3e}"


def _table(*columns: str) -> Table:
    """A table of right-aligned columns (``#`` dim, ``word`` left) that fold long cells instead of
    cutting them."""
    table = Table(show_edge=False)
    for name in columns:
        justify: JustifyMethod = (
            "left" if name == "word" else "center" if name in ("misaligned", "span") else "right"
        )
        table.add_column(name, justify=justify, style="dim" if name == "#" else "", overflow="fold")
    return table


def coloured_caption(result: WordAlignment) -> Text:
    """The caption as written, misaligned words [bracketed] on red, others green (supports) / yellow."""
    scale = max((abs(w.score) for w in result.words), default=0.0)
    text = Text()
    cursor = 0
    for w in result.words:
        text.append(result.caption[cursor : w.start])
        word = result.caption[w.start : w.end]
        text.append(f"[{word}]" if w.misaligned else word, style=_style(w.score, w.misaligned, scale))
        cursor = w.end
    text.append(result.caption[cursor:])
    if result.truncated_words:
        text.append(f"  (+{len(result.truncated_words)} words cut at the context limit)", style="dim")
    return text


def score_line(result: WordAlignment) -> Text:
    """The pair's cosine, CLIPScore and F-CLIPScore with the settings that produced them."""
    return Text(
        f"cosine {result.cosine:+.4f}   CLIPScore {result.clipscore:.4f}   "
        f"F-CLIPScore {result.f_clipscore:+.3e}   (ε = {result.epsilon:g}, mode {result.mode})"
    )


def word_table(result: WordAlignment) -> Table:
    """One row per word: index, word as written, signed score, ✗ when misaligned."""
    scale = max((abs(w.score) for w in result.words), default=0.0)
    table = _table("#", "word", "score", "misaligned")
    for i, w in enumerate(result.words):
        style = _style(w.score, w.misaligned, scale)
        table.add_row(str(i), Text(w.word, style=style), signed(w.score), MISALIGNED if w.misaligned else "")
    return table


def interaction_table(
    result: Interactions,
    *,
    box_scores: Sequence[float] | None = None,
    box_name: str = "box",
    selected: set[int] | None = None,
) -> Table:
    """One row per caption word: its interaction with the whole image (Σ over patches), with the box
    when given, and ``*`` on the words of the chosen span."""
    whole = [float(result.matrix[w.tokens].sum()) for w in result.words]
    columns = ["#", "word", "whole image"] + ([box_name] if box_scores is not None else [])
    table = _table(*columns, *(["span"] if selected else []))
    scale = max((abs(s) for s in whole), default=0.0)
    box_scale = max((abs(s) for s in box_scores or []), default=0.0)
    for i, w in enumerate(result.words):
        cells: list[str | Text] = [str(i), w.word, Text(signed(whole[i]), _strength_style(whole[i], scale))]
        if box_scores is not None:
            cells.append(Text(signed(box_scores[i]), _strength_style(box_scores[i], box_scale)))
        if selected:
            cells.append(SELECTED if i in selected else "")
        table.add_row(*cells)
    return table


def grid_tables(values: Sequence[Sequence[float]], title: str, width: int) -> list[Table]:
    """A (rows, cols) patch grid, top row first, each value signed and in full, as column blocks that
    fit ``width`` characters (a 14×14 grid at 80 columns: columns 0–6, then 7–13), so that no number is
    ever broken across lines; rows and columns are numbered."""
    scale = max((abs(v) for row in values for v in row), default=0.0)
    cols = len(values[0]) if values else 0
    label = len(str(max(len(values) - 1, 0)))
    per_block = max(1, (width - label - 1) // (len(f"{-1.0:+.2e}") + 1))
    tables = []
    for first in range(0, cols, per_block):
        block = range(first, min(first + per_block, cols))
        caption = f"{title} (columns {block[0]}–{block[-1]})" if len(block) < cols else title
        table = Table(title=caption, box=None, pad_edge=False, padding=(0, 0, 0, 1))
        table.add_column("", justify="right", no_wrap=True)
        for c in block:
            table.add_column(str(c), justify="right", no_wrap=True)
        for r, row in enumerate(values):
            cells = (Text(f"{row[c]:+.2e}", _strength_style(float(row[c]), scale)) for c in block)
            table.add_row(str(r), *cells)
        tables.append(table)
    return tables


def completeness_line(result: Interactions) -> str:
    """Σ of the interactions beside the target they should add up to, its four terms named."""
    c = result.completeness
    return (
        f"completeness: Σ = {c.sum:+.6f}, target {c.target:+.6f} = s(x,y) − s(x,r_y) − s(r_x,y) + "
        f"s(r_x,r_y) with s(x,y) = {c.s_xy:+.4f}, s(x,r_y) = {c.s_x_ry:+.4f}, s(r_x,y) = {c.s_rx_y:+.4f}, "
        f"s(r_x,r_y) = {c.s_rx_ry:+.4f}; residual {c.residual:+.2e}"
    )


def score_table(result: WordAlignment, refclipscore: float | None, convention: str) -> Table:
    """The pair's scores, one per row (RefCLIPScore with the convention that produced it)."""
    table = Table(show_header=False, show_edge=False)
    table.add_column(overflow="fold")
    table.add_column(overflow="fold")
    ref = "—  (no --reference)" if refclipscore is None else f"{refclipscore:.4f}  ({convention})"
    table.add_row("cosine", f"{result.cosine:+.4f}")
    table.add_row("CLIPScore", f"{result.clipscore:.4f}")
    table.add_row("RefCLIPScore", ref)
    table.add_row("F-CLIPScore", f"{result.f_clipscore:+.3e}")
    table.add_row("misaligned", ", ".join(s.text for s in result.spans) or "none")
    return table
