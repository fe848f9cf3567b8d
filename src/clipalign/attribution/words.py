"""CLIP4DM word-level misalignment (Nam et al., arXiv 2412.18404).

For s = cos(image, template+caption) and each of the last ``layers`` text-encoder layers with
post-softmax attention A (B, heads, T, T): M = mean_heads(∂s/∂A ⊙ A), signed (no ReLU, no rollout);
R = mean over those layers; a BPE token's score is R[EOT, token]; a word's score is the mean of its
tokens, words being the authors' unit by default ("." and "," words of their own, see
:data:`~clipalign.text.alignment.WordUnit`). Words scoring below ε (< 0) are misaligned. A batch
costs one forward and one backward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
import torch
from PIL import Image

from clipalign.attribution.inputs import item_error, pair_up
from clipalign.images import ImageInput, describe_source, load_image
from clipalign.metrics.functional import clip_score, f_clip_score
from clipalign.models.base import ClipAdapter
from clipalign.results import ItemError, Span, TokenScore, Word, WordAlignment, eligible
from clipalign.settings import Mode, WordSettings
from clipalign.text.alignment import EncodedCaption


@dataclass
class TokenAttribution:
    """Raw output for a batch: cosines (B,) and per-position scores (B, T) from the EOT row.

    Positions outside the caption (specials, template, padding) are present but meaningless; use
    ``EncodedCaption.token_word`` to select caption tokens.
    """

    cosine: torch.Tensor
    token_scores: torch.Tensor


def word_scores(
    token_scores: torch.Tensor, encoded: Sequence[EncodedCaption]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Mean of token scores per caption word (one scatter for the whole batch) and tokens per word."""
    n_words = [len(e.words) for e in encoded]
    offsets = np.concatenate([[0], np.cumsum(n_words)])
    width = token_scores.shape[1]
    index = np.full((len(encoded), width), -1, dtype=np.int64)
    for b, e in enumerate(encoded):
        tw = e.token_word
        index[b, : len(tw)] = np.where(tw >= 0, tw + offsets[b], -1)
    flat_index = torch.from_numpy(index).to(token_scores.device).reshape(-1)
    keep = flat_index >= 0
    total = int(offsets[-1])
    values = token_scores.reshape(-1)[keep].double()
    sums = torch.zeros(total, dtype=torch.float64, device=values.device).index_add_(
        0, flat_index[keep], values
    )
    counts = torch.zeros(total, dtype=torch.float64, device=values.device).index_add_(
        0, flat_index[keep], torch.ones_like(values)
    )
    means = (sums / counts.clamp(min=1)).cpu().numpy()
    counts_np = counts.cpu().numpy().astype(np.int64)
    return (
        [means[offsets[b] : offsets[b + 1]] for b in range(len(encoded))],
        [counts_np[offsets[b] : offsets[b + 1]] for b in range(len(encoded))],
    )


def _misaligned_mask(scores: np.ndarray, eligible: np.ndarray, mode: Mode, epsilon: float) -> np.ndarray:
    if mode == "threshold":
        return eligible & (scores < epsilon)
    mask = np.zeros_like(eligible)
    if eligible.any():
        mask[np.flatnonzero(eligible)[np.argmin(scores[eligible])]] = True
    return mask


def merge_spans(caption: str, words: Sequence[Word]) -> list[Span]:
    """Merge misaligned words that are adjacent among the non-punctuation words into spans."""
    spans: list[Span] = []
    run: list[int] = []
    candidates = [i for i, w in enumerate(words) if w.eligible]
    for i in [*candidates, None]:
        if i is not None and words[i].misaligned:
            run.append(i)
            continue
        if run:
            scores = [words[j].score for j in run]
            start, end = words[run[0]].start, words[run[-1]].end
            spans.append(
                Span(caption[start:end], start, end, list(run), float(np.mean(scores)), float(sum(scores)))
            )
            run = []
    return spans


@dataclass
class Prepared:
    """A pair ready to score: its position in the batch, its decoded image, its encoded caption."""

    position: int
    image: Image.Image
    encoded: EncodedCaption


class CLIP4DM:
    """Word-level misalignment between images and captions from one CLIP-family model.

    Args:
        model: an adapter from :func:`clipalign.load_model`.
        settings: :class:`~clipalign.settings.WordSettings` (layers, ε, template, mode, word unit,
            batch size);
            keyword arguments change single fields of it, e.g. ``layers=2``.

    Example:
        >>> from clipalign.testing import tiny_model, example_image
        >>> attributor = CLIP4DM(tiny_model(), layers=2, epsilon=-5e-5)
        >>> [result] = attributor.attribute([example_image()], ["a red ball on the grass."])
        >>> [w.word for w in result.words]
        ['a', 'red', 'ball', 'on', 'the', 'grass', '.']
        >>> [w.word for w in CLIP4DM(tiny_model(), unit="whitespace").attribute(
        ...     [example_image()], ["a red ball on the grass."])[0].words]
        ['a', 'red', 'ball', 'on', 'the', 'grass.']
        >>> result.f_clipscore <= 0 and len(result.misaligned_words) == len(result.words) - sum(
        ...     w.score >= -5e-5 for w in result.words)
        True
    """

    def __init__(self, model: ClipAdapter, *, settings: WordSettings | None = None, **changes: Any) -> None:
        self.settings = (settings or WordSettings()).replace(**changes)
        depth, layers = model.num_text_layers, self.settings.layers
        if layers > depth:
            raise ValueError(f"layers must be in 1..{depth} (text encoder depth), got {layers}")
        self.model = model

    def attribute_tokens(
        self, pixel_values: torch.Tensor, encoded: Sequence[EncodedCaption]
    ) -> TokenAttribution:
        """Cosines and EOT-row token scores for a batch: one forward, one backward.

        Only the attributed blocks are differentiated, and only the pooled row of ∂s/∂A ⊙ A is formed,
        accumulated in fp32 (the adapters keep the text tower in fp32 whatever the image tower's dtype).
        """
        model, layers = self.model, self.settings.layers
        with torch.no_grad():
            image = model.image_embeddings(pixel_values)
        inputs = model.collate(encoded)
        with torch.enable_grad():
            out = model.text_embeddings(inputs, output_attentions=layers)
            if out.attentions is None:
                raise RuntimeError(f"{type(model).__name__}.text_embeddings returned no attention maps")
            cosine = torch.nn.functional.cosine_similarity(out.embeds, image, dim=-1)
            maps = out.attentions[-layers:]
            grads = torch.autograd.grad(cosine.sum(), maps)
        rows, pool = torch.arange(len(encoded), device=cosine.device), inputs.pool_index
        relevance = torch.zeros(maps[0].shape[::3], dtype=torch.float32, device=cosine.device)
        for grad, attn in zip(grads, maps, strict=True):
            relevance += (grad[rows, :, pool].float() * attn[rows, :, pool].float()).mean(dim=1)
        return TokenAttribution(cosine.detach(), (relevance / layers).detach())

    @overload
    def attribute(
        self,
        images: ImageInput | Sequence[ImageInput],
        captions: str | Sequence[str],
        *,
        mode: Mode | None = ...,
        epsilon: float | None = ...,
        on_error: Literal["raise"],
    ) -> list[WordAlignment]: ...

    @overload
    def attribute(
        self,
        images: ImageInput | Sequence[ImageInput],
        captions: str | Sequence[str],
        *,
        mode: Mode | None = ...,
        epsilon: float | None = ...,
        on_error: Literal["record"] = ...,
    ) -> list[WordAlignment | ItemError]: ...

    def attribute(
        self,
        images: ImageInput | Sequence[ImageInput],
        captions: str | Sequence[str],
        *,
        mode: Mode | None = None,
        epsilon: float | None = None,
        on_error: Literal["record", "raise"] = "record",
    ) -> list[WordAlignment] | list[WordAlignment | ItemError]:
        """Score every (image, caption) pair; results in input order.

        ``mode`` and ``epsilon`` override the settings for this call (checked as the settings are):
        ``threshold`` marks words below ε, ``most_negative`` the single lowest word; F-CLIPScore
        always uses the threshold rule. With
        ``on_error="record"`` a pair that fails (an unreadable image, an empty or invalid caption, any
        error while scoring it) becomes an :class:`ItemError` saying why and the rest are still scored;
        ``on_error="raise"`` raises instead.
        """
        overrides = {k: v for k, v in (("mode", mode), ("epsilon", epsilon)) if v is not None}
        call = self.settings.replace(**overrides)  # validated as the settings themselves are
        image_list, caption_list = pair_up(images, captions)
        size = self.settings.batch_size
        results: list[WordAlignment | ItemError] = []
        for lo in range(0, len(caption_list), size):
            batch = self._attribute_batch(
                image_list[lo : lo + size],
                caption_list[lo : lo + size],
                lo,
                call.mode,
                call.epsilon,
                on_error,
            )
            results.extend(batch)
        return results

    def _attribute_batch(
        self,
        images: Sequence[ImageInput],
        captions: Sequence[str],
        first_index: int,
        mode: Mode,
        epsilon: float,
        on_error: str,
    ) -> list[WordAlignment | ItemError]:
        """Prepare each pair on its own (a failure there is that pair's), then score the rest at once.

        When scoring the batch fails, each pair is scored alone: one bad pair, or a batch too large for
        memory, then costs only its own result, and a genuine model failure is recorded for every pair.
        """
        slots: list[WordAlignment | ItemError | None] = [None] * len(captions)

        def failed(i: int, exc: Exception) -> None:
            if on_error == "raise":
                raise exc
            slots[i] = item_error(first_index + i, images[i], captions[i], exc)

        prepared: list[Prepared] = []
        for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
            try:
                [enc] = self.model.encode_captions([caption], self.settings.template)
                enc = enc.with_unit(self.settings.unit)
                prepared.append(Prepared(i, load_image(image), enc))
            except Exception as exc:
                failed(i, exc)
        groups = [prepared] if prepared else []
        while groups:
            group = groups.pop(0)
            try:
                results = self._score(group, images, mode, epsilon)
            except Exception as exc:
                if len(group) == 1:
                    failed(group[0].position, exc)
                else:
                    groups = [[item] for item in group] + groups
                continue
            for item, result in zip(group, results, strict=True):
                slots[item.position] = result
        return [s for s in slots if s is not None]

    def _score(
        self, group: Sequence[Prepared], images: Sequence[ImageInput], mode: Mode, epsilon: float
    ) -> list[WordAlignment]:
        """One forward and one backward for the prepared pairs of ``group``, in its order."""
        encoded = [item.encoded for item in group]
        raw = self.attribute_tokens(self.model.preprocess([item.image for item in group]), encoded)
        return self._build(raw, encoded, [images[item.position] for item in group], mode, epsilon)

    def _build(
        self,
        raw: TokenAttribution,
        encoded: Sequence[EncodedCaption],
        sources: Sequence[ImageInput],
        mode: Mode,
        epsilon: float,
    ) -> list[WordAlignment]:
        means, counts = word_scores(raw.token_scores, encoded)
        cosine = raw.cosine.double().cpu()
        token_rows = raw.token_scores.double().cpu().numpy()
        results = []
        for b, enc in enumerate(encoded):
            scores, n_tok = means[b], counts[b]
            punct = np.array([w.punctuation for w in enc.words], dtype=bool)
            can_flag = eligible(punct, n_tok)
            below = _misaligned_mask(scores, can_flag, "threshold", epsilon)
            marked = below if mode == "threshold" else _misaligned_mask(scores, can_flag, mode, epsilon)
            words = [
                Word(w.text, w.start, w.end, float(s), bool(m), bool(p), int(n))
                for w, s, m, p, n in zip(enc.words, scores, marked, punct, n_tok, strict=True)
            ]
            cos = cosine[b : b + 1]
            f_score = f_clip_score(cos, torch.from_numpy(scores)[None], torch.from_numpy(below)[None])
            tokens = [
                TokenScore(
                    enc.tokens[t], *enc.token_spans[t], float(token_rows[b, t]), int(enc.token_word[t])
                )
                for t in np.flatnonzero(enc.token_word >= 0)
            ]
            results.append(
                WordAlignment(
                    caption=enc.caption,
                    cosine=float(cos[0]),
                    clipscore=float(clip_score(cos)[0]),
                    f_clipscore=float(f_score[0]),
                    words=words,
                    spans=merge_spans(enc.caption, words),
                    truncated_words=[w.text for w in enc.truncated_words],
                    mode=mode,
                    epsilon=epsilon,
                    tokens=tokens,
                    source=describe_source(sources[b]),
                    unit=enc.unit,
                )
            )
        return results
