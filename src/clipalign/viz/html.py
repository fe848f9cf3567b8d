"""Self-contained HTML pictures of a word alignment: the image, the caption coloured word by word, scores.

Words take the heatmaps' diverging colours (green supports, magenta contradicts, white ≈ 0); misaligned
words are boxed and underlined. Every text is escaped and the image is embedded as base64, so one file
shows everything with no network access. The fragments are reused by the web demo.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from html import escape
from pathlib import Path

from PIL import Image

from clipalign.results import WordAlignment
from clipalign.viz.palette import MISALIGNED_EDGE, gradient, ink, score_colours, score_peak

CSS = f"""
.ca-caption {{ font-size: 1.35rem; line-height: 2.3; white-space: pre-wrap; margin: 0.4rem 0; }}
.ca-word {{ padding: 0.25em 0.3em; border-radius: 0.3em; border: 2px solid transparent; }}
.ca-misaligned {{ border-color: {MISALIGNED_EDGE}; text-decoration: underline wavy {MISALIGNED_EDGE};
  text-decoration-thickness: 1px; text-underline-offset: 0.12em; font-weight: 600; }}
.ca-cut {{ color: #888; text-decoration: line-through; }}
.ca-legend {{ display: flex; align-items: center; gap: 0.5rem; font-size: 0.85rem; color: #444;
  flex-wrap: wrap; margin: 0.4rem 0; }}
.ca-bar {{ display: inline-block; width: 11rem; height: 0.8rem; border-radius: 0.2rem; }}
.ca-scores {{ display: flex; flex-wrap: wrap; gap: 0.4rem 1.6rem; margin: 0.6rem 0; }}
.ca-scores div {{ display: flex; flex-direction: column; }}
.ca-scores dt {{ font-size: 0.75rem; text-transform: uppercase; letter-spacing: 0.05em; color: #666; }}
.ca-scores dd {{ margin: 0; font-size: 1.15rem; font-variant-numeric: tabular-nums; }}
"""
"""Styles of the fragments below (the demo page links them too)."""

_PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 0; background: #fafafa; color: #111; }
.ca-page { max-width: 52rem; margin: 1.5rem auto; padding: 0 1rem; }
.ca-page figure { margin: 0; }
.ca-page img { max-width: 100%; height: auto; border-radius: 0.4rem; display: block; }
.ca-page img.ca-enlarged { image-rendering: pixelated; }
.ca-page figcaption, .ca-meta { color: #666; font-size: 0.8rem; margin-top: 0.3rem; }
"""


def _title(text: str, score: float, misaligned: bool) -> str:
    return f"{text}: {score:+.3e}" + ("  (misaligned: below ε)" if misaligned else "")


def _word(index: int, text: str, score: float, colour: str, misaligned: bool) -> str:
    classes = "ca-word ca-misaligned" if misaligned else "ca-word"
    return (
        f'<span class="{classes}" data-index="{index}" data-score="{score:.6g}" '
        f'style="background:{colour};color:{ink(colour)}" title="{escape(_title(text, score, misaligned))}">'
        f"{escape(text)}</span>"
    )


def caption_html(result: WordAlignment) -> str:
    """The caption as written, each scored word coloured; words cut at the context limit struck out."""
    colours = score_colours([w.score for w in result.words])
    parts, cursor = [], 0
    for i, (w, colour) in enumerate(zip(result.words, colours, strict=True)):
        parts.append(escape(result.caption[cursor : w.start]))
        parts.append(_word(i, result.caption[w.start : w.end], w.score, colour, w.misaligned))
        cursor = w.end
    rest = result.caption[cursor:]
    if result.truncated_words:
        note = f"not scored: {len(result.truncated_words)} words past the text encoder's context"
        parts.append(f'<span class="ca-cut" title="{escape(note)}">{escape(rest)}</span>')
    else:
        parts.append(escape(rest))
    return f'<p class="ca-caption">{"".join(parts)}</p>'


def scored_words_html(pairs: Sequence[tuple[str, float]]) -> str:
    """Words with scores of their own (e.g. against an image region), coloured on their own scale."""
    colours = score_colours([s for _, s in pairs])
    words = [_word(i, w, s, c, False) for i, ((w, s), c) in enumerate(zip(pairs, colours, strict=True))]
    return f'<p class="ca-caption">{" ".join(words)}</p>'


def legend_html(peak: float, what: str = "score") -> str:
    """The colour scale from −peak (contradicts) to +peak (supports), and what a box means."""
    bar = f"background:linear-gradient(to right, {', '.join(gradient())})"
    return (
        f'<div class="ca-legend"><span>contradicts −{peak:.2e}</span><span class="ca-bar" style="{bar}">'
        f"</span><span>+{peak:.2e} supports</span><span>({escape(what)})</span></div>"
    )


def scores_html(result: WordAlignment) -> str:
    """Cosine, CLIPScore, F-CLIPScore and the misaligned spans."""
    rows = [
        ("cosine", f"{result.cosine:.4f}"),
        ("CLIPScore", f"{result.clipscore:.4f}"),
        ("F-CLIPScore", f"{result.f_clipscore:.3e}"),
        ("misaligned", ", ".join(s.text for s in result.spans) or "none"),
    ]
    cells = "".join(f"<div><dt>{escape(k)}</dt><dd>{escape(v)}</dd></div>" for k, v in rows)
    return f'<dl class="ca-scores">{cells}</dl>'


def image_data_url(image: Image.Image, max_side: int = 1024, *, lossless: bool = False) -> str:
    """The image (shrunk to ``max_side`` pixels at most) as a base64 ``data:`` URL: JPEG, or PNG when
    ``lossless`` (for small images shown enlarged, whose every pixel is seen)."""
    copy = image.convert("RGB")
    copy.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    if lossless:
        copy.save(buffer, format="PNG")
    else:
        copy.save(buffer, format="JPEG", quality=92)
    kind = "png" if lossless else "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def display_size(width: int, height: int, short_side: int = 384, max_side: int = 1024) -> tuple[int, int]:
    """How large to show an image: small ones enlarged by a whole factor (pixels stay square and sharp)
    until the short side reaches ``short_side``, the long side kept within ``max_side``; others as they
    are (shrunk to ``max_side`` like :func:`image_data_url`)."""
    factor = min(-(-short_side // min(width, height)), max_side // max(width, height))
    if factor > 1:
        return width * factor, height * factor
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def page_html(image: Image.Image, result: WordAlignment, model: str | None = None) -> str:
    """A complete HTML document: the image, the coloured caption, its legend and the scores."""
    peak = score_peak([w.score for w in result.words])
    source = result.source or "image"
    width, height = display_size(*image.size)
    enlarged = width > image.width
    picture = (
        f'<img src="{image_data_url(image, lossless=enlarged)}" width="{width}" height="{height}" '
        f'alt="{escape(source)}"' + (' class="ca-enlarged">' if enlarged else ">")
    )
    meta = f"ε = {result.epsilon:g}, mode {result.mode}" + (f", model {model}" if model else "")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>clipalign: {escape(result.caption)}</title><style>{CSS}{_PAGE_CSS}</style></head>\n"
        '<body><main class="ca-page">'
        f"<figure>{picture}"
        f"<figcaption>{escape(source)}</figcaption></figure>\n"
        f"{caption_html(result)}\n{legend_html(peak, 'word score; boxed = misaligned')}\n"
        f'{scores_html(result)}\n<p class="ca-meta">{escape(meta)}</p></main></body></html>\n'
    )


def save_html(image: Image.Image, result: WordAlignment, path: str | Path, model: str | None = None) -> Path:
    """Write :func:`page_html` to ``path`` (UTF-8)."""
    out = Path(path)
    out.write_text(page_html(image, result, model), encoding="utf-8")
    return out
