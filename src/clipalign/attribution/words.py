"""CLIP4DM word-level misalignment (Nam et al., arXiv 2412.18404).

For s = cos(image, template+caption) and each of the last ``layers`` text-encoder layers with
post-softmax attention A (B, heads, T, T): M = mean_heads(∂s/∂A ⊙ A), signed (no ReLU, no rollout);
R = mean over those layers; a BPE token's score is R[EOT, token]; a word's score is the mean of its
tokens, words being the authors' unit by default ("." and "," words of their own, see
:data:`~clipalign.text.alignment.WordUnit`). Words scoring below ε (< 0) are misaligned. A batch
costs one forward and one backward.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast, overload

import numpy as np
import torch

from clipalign.attribution.feeding import prepared_ahead
from clipalign.attribution.inputs import Captions, Images, OnError, compute_or_split, item_error, pair_up
from clipalign.images import ImageInput, describe_source, load_image
from clipalign.metrics.functional import clip_score, f_clip_score
from clipalign.models.base import ClipAdapter
from clipalign.results import ItemError, Span, TokenScore, Word, WordAlignment, eligible
from clipalign.settings import Mode, WordSettings
from clipalign.text.alignment import CaptionError, EncodedCaption, validate_caption


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


def misaligned_mask(scores: np.ndarray, eligible: np.ndarray, mode: Mode, epsilon: float) -> np.ndarray:
    """The words flagged misaligned: eligible ones below ε (threshold) or the lowest one (most_negative)."""
    if mode == "threshold":
        return eligible & (scores < epsilon)
    mask = np.zeros_like(eligible)
    if eligible.any():
        mask[np.flatnonzero(eligible)[np.argmin(scores[eligible])]] = True
    return mask


def merge_spans(caption: str, words: Sequence[Word]) -> list[Span]:
    """Merge misaligned words that are adjacent among the non-punctuation words into spans."""
    if not any(w.misaligned for w in words):
        return []
    spans: list[Span] = []
    run: list[int] = []
    can_flag = eligible(np.array([w.punctuation for w in words]), np.array([w.num_tokens for w in words]))
    candidates = np.flatnonzero(can_flag).tolist()
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
class PreparedBatch:
    """A batch of pairs ready for the model, with the reason each other pair of it could not be prepared.

    Built by :meth:`CLIP4DM.prepare` (in a worker thread when batches are prepared ahead) and scored by
    :meth:`CLIP4DM.score_prepared`; positions are those of the pairs in the batch.
    """

    sources: list[object]
    """Each pair's image input as given (results and errors name it)."""
    captions: list[object]
    """Each pair's caption as given."""
    ready: list[int]
    """Positions of the pairs ready to score, in order."""
    pixel_values: torch.Tensor | None
    """(len(ready), 3, H, W) float32 pixel values of the ready pairs (on the CPU, pinned for a CUDA model)."""
    encoded: list[EncodedCaption]
    """The ready pairs' captions, encoded in the run's word unit."""
    failures: dict[int, Exception]
    """Position → why that pair could not be prepared."""


def image_pixels(model: ClipAdapter, source: object) -> torch.Tensor | Exception:
    """One image input decoded and preprocessed, (3, H, W) float32 on the CPU, or why it could not be
    (returned, not raised, so that worker threads report every failure with its pair)."""
    try:
        return model.pixel_values([load_image(source)])[0]  # type: ignore[arg-type]
    except Exception as exc:
        return exc


def _chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    return (values[lo : lo + size] for lo in range(0, len(values), size))


ATTRIBUTE_WORKERS = 4
"""Threads that decode and preprocess images ahead of the model when ``attribute`` gets several batches."""


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
        images: Images,
        captions: Captions,
        *,
        mode: Mode | None = ...,
        epsilon: float | None = ...,
        on_error: Literal["raise"],
    ) -> list[WordAlignment]: ...

    @overload
    def attribute(
        self,
        images: Images,
        captions: Captions,
        *,
        mode: Mode | None = ...,
        epsilon: float | None = ...,
        on_error: Literal["record"] = ...,
    ) -> list[WordAlignment | ItemError]: ...

    def attribute(
        self,
        images: Images,
        captions: Captions,
        *,
        mode: Mode | None = None,
        epsilon: float | None = None,
        on_error: OnError = "record",
    ) -> list[WordAlignment] | list[WordAlignment | ItemError]:
        """Score every (image, caption) pair; results in input order.

        ``mode`` and ``epsilon`` override the settings for this call (checked as the settings are):
        ``threshold`` marks words below ε, ``most_negative`` the single lowest word; F-CLIPScore
        always uses the threshold rule. With
        ``on_error="record"`` a pair that fails (an unreadable image, an empty or invalid caption, any
        error while scoring it) becomes an :class:`ItemError` saying why and the rest are still scored;
        ``on_error="raise"`` raises instead. With more than one batch, images are decoded and
        preprocessed, and captions tokenised, in threads while the previous batch is scored.
        """
        overrides = {k: v for k, v in (("mode", mode), ("epsilon", epsilon)) if v is not None}
        self.settings.replace(**overrides)  # validated as the settings themselves are
        image_list, caption_list = pair_up(images, captions)
        size = self.settings.batch_size
        pairs = list(zip(image_list, caption_list, strict=True))
        if len(pairs) <= size:
            batches: Iterable[PreparedBatch] = [
                self._prepare_pairs(pairs, [self._load_pair(p) for p in pairs])
            ]
        else:
            batches = prepared_ahead(
                _chunks(pairs, size), self._load_pair, self._prepare_pairs, workers=ATTRIBUTE_WORKERS
            )
        results: list[WordAlignment | ItemError] = []
        for batch in batches:
            results.extend(
                self.score_prepared(
                    batch, mode=mode, epsilon=epsilon, first_index=len(results), on_error=on_error
                )
            )
        return results

    def _load_pair(self, pair: tuple[ImageInput, str]) -> torch.Tensor | Exception:
        """A pair's pixel values, or why its image failed (the worker-thread step of ``attribute``)."""
        return image_pixels(self.model, pair[0])

    def _prepare_pairs(
        self, pairs: Sequence[tuple[ImageInput, str]], images: list[torch.Tensor | Exception]
    ) -> PreparedBatch:
        """:meth:`prepare` for ``attribute``'s (image, caption) pairs (the collating step)."""
        return self.prepare([s for s, _ in pairs], [c for _, c in pairs], images)

    def prepare(
        self,
        sources: Sequence[object],
        captions: Sequence[object],
        images: Sequence[torch.Tensor | Exception],
    ) -> PreparedBatch:
        """A batch ready for :meth:`score_prepared` from each pair's image input, caption and pixel values
        (3, H, W) from :meth:`ClipAdapter.pixel_values`, or the exception that stopped them.

        Captions are tokenised in one call (should it raise, one by one, so that the failure is the
        pair's); a caption's failure is reported before its image's. Pixels are stacked, into pinned
        memory for a CUDA model so that the copy to the device does not block. Safe in a worker thread.
        """
        failures: dict[int, Exception] = {}
        valid: list[int] = []
        for i, caption in enumerate(captions):
            try:
                validate_caption(caption)
                valid.append(i)
            except CaptionError as exc:
                failures[i] = exc
        encoded = self._encode({i: cast(str, captions[i]) for i in valid}, failures)
        for i in valid:
            image = images[i]
            if i not in failures and isinstance(image, Exception):
                failures[i] = image
        ready = [i for i in valid if i not in failures]
        pixels = None
        if ready:
            rows = [cast(torch.Tensor, images[i]) for i in ready]
            pin = self.model.device.type == "cuda"
            out = torch.empty((len(rows), *rows[0].shape), dtype=rows[0].dtype, pin_memory=pin)
            pixels = torch.stack(rows, out=out)
        return PreparedBatch(
            list(sources), list(captions), ready, pixels, [encoded[i] for i in ready], failures
        )

    def _encode(self, captions: dict[int, str], failures: dict[int, Exception]) -> dict[int, EncodedCaption]:
        """Position → encoded caption in one tokenizer call; failures found one caption at a time."""
        template, unit = self.settings.template, self.settings.unit
        try:
            batch = self.model.encode_captions(list(captions.values()), template)
            return {i: e.with_unit(unit) for i, e in zip(captions, batch, strict=True)}
        except Exception:
            encoded = {}
            for i, caption in captions.items():
                try:
                    [enc] = self.model.encode_captions([caption], template)
                    encoded[i] = enc.with_unit(unit)
                except Exception as exc:
                    failures[i] = exc
            return encoded

    @overload
    def score_prepared(
        self,
        batch: PreparedBatch,
        *,
        mode: Mode | None = ...,
        epsilon: float | None = ...,
        first_index: int = ...,
        on_error: Literal["raise"],
    ) -> list[WordAlignment]: ...

    @overload
    def score_prepared(
        self,
        batch: PreparedBatch,
        *,
        mode: Mode | None = ...,
        epsilon: float | None = ...,
        first_index: int = ...,
        on_error: Literal["record"] = ...,
    ) -> list[WordAlignment | ItemError]: ...

    def score_prepared(
        self,
        batch: PreparedBatch,
        *,
        mode: Mode | None = None,
        epsilon: float | None = None,
        first_index: int = 0,
        on_error: Literal["record", "raise"] = "record",
    ) -> list[WordAlignment] | list[WordAlignment | ItemError]:
        """Score a prepared batch at once: one result per pair in batch order, as :meth:`attribute` gives.

        A pair that could not be prepared is an :class:`ItemError` (index ``first_index`` + position).
        When scoring the batch fails, each pair is scored alone: one bad pair, or a batch too large for
        memory, then costs only its own result, and a genuine model failure is recorded for every pair.
        ``on_error="raise"`` raises the first failure instead.
        """
        overrides = {k: v for k, v in (("mode", mode), ("epsilon", epsilon)) if v is not None}
        call = self.settings.replace(**overrides)
        slots: list[WordAlignment | ItemError | None] = [None] * len(batch.sources)

        def failed(position: int, exc: Exception) -> None:
            if on_error == "raise":
                raise exc
            caption = batch.captions[position]
            slots[position] = item_error(first_index + position, batch.sources[position], caption, exc)  # type: ignore[arg-type]

        for position in sorted(batch.failures):
            failed(position, batch.failures[position])

        def score(group: list[int]) -> list[WordAlignment]:
            return self._score(batch, group, call.mode, call.epsilon)

        def failed_ready(k: int, exc: Exception) -> None:
            failed(batch.ready[k], exc)

        for k, result in compute_or_split(range(len(batch.ready)), score, failed_ready):
            slots[batch.ready[k]] = result
        return [s for s in slots if s is not None]

    def _score(
        self, batch: PreparedBatch, group: list[int], mode: Mode, epsilon: float
    ) -> list[WordAlignment]:
        """One forward and one backward for the ready pairs ``group`` (indices into ``batch.ready``)."""
        assert batch.pixel_values is not None  # a batch with ready pairs has their pixels
        pixels = batch.pixel_values if len(group) == len(batch.ready) else batch.pixel_values[group]
        # float32 as prepared: the image tower takes fp32 pixel values (a model built in half precision
        # casts them in its patch embedding, as for any fp32 input)
        pixels = pixels.to(self.model.device, non_blocking=pixels.is_pinned())
        encoded = [batch.encoded[k] for k in group]
        raw = self.attribute_tokens(pixels, encoded)
        sources = [describe_source(batch.sources[batch.ready[k]]) for k in group]
        return self._build(raw, encoded, sources, mode, epsilon)

    def _build(
        self,
        raw: TokenAttribution,
        encoded: Sequence[EncodedCaption],
        sources: Sequence[str],
        mode: Mode,
        epsilon: float,
    ) -> list[WordAlignment]:
        """Results from a batch's raw scores: arithmetic batched, then one pass of plain Python per pair."""
        means, counts = word_scores(raw.token_scores, encoded)
        cosine = raw.cosine.double().cpu()
        token_rows = raw.token_scores.double().cpu().numpy()
        punct = [np.array([w.punctuation for w in e.words], dtype=bool) for e in encoded]
        can_flag = [eligible(p, n) for p, n in zip(punct, counts, strict=True)]
        below = [misaligned_mask(s, f, "threshold", epsilon) for s, f in zip(means, can_flag, strict=True)]
        marked = (
            below
            if mode == "threshold"
            else [misaligned_mask(s, f, mode, epsilon) for s, f in zip(means, can_flag, strict=True)]
        )
        f_scores = _f_clip_scores(cosine, means, below)
        cosines, clipscores = cosine.tolist(), clip_score(cosine).tolist()
        results = []
        for b, enc in enumerate(encoded):
            words = [
                Word(w.text, w.start, w.end, s, m, p, n)
                for w, s, m, p, n in zip(
                    enc.words,
                    means[b].tolist(),
                    marked[b].tolist(),
                    punct[b].tolist(),
                    counts[b].tolist(),
                    strict=True,
                )
            ]
            scored = np.flatnonzero(enc.token_word >= 0)
            tokens = [
                TokenScore(enc.tokens[t], enc.token_spans[t][0], enc.token_spans[t][1], score, word)
                for t, score, word in zip(
                    scored.tolist(),
                    token_rows[b, scored].tolist(),
                    enc.token_word[scored].tolist(),
                    strict=True,
                )
            ]
            results.append(
                WordAlignment(
                    caption=enc.caption,
                    cosine=cosines[b],
                    clipscore=clipscores[b],
                    f_clipscore=f_scores[b],
                    words=words,
                    spans=merge_spans(enc.caption, words),
                    truncated_words=[w.text for w in enc.truncated_words],
                    mode=mode,
                    epsilon=epsilon,
                    tokens=tokens,
                    source=sources[b],
                    unit=enc.unit,
                )
            )
        return results


def _f_clip_scores(
    cosine: torch.Tensor, scores: Sequence[np.ndarray], below: Sequence[np.ndarray]
) -> list[float]:
    """F-CLIPScore of every pair, one :func:`f_clip_score` call per word count: each row is then reduced
    exactly as it is alone, with no padding that could change the order of its sum."""
    out = [0.0] * len(scores)
    by_length: dict[int, list[int]] = {}
    for b, s in enumerate(scores):
        by_length.setdefault(len(s), []).append(b)
    for rows in by_length.values():
        values = f_clip_score(
            cosine[rows],
            torch.from_numpy(np.stack([scores[b] for b in rows])),
            torch.from_numpy(np.stack([below[b] for b in rows])),
        ).tolist()
        for b, value in zip(rows, values, strict=True):
            out[b] = value
    return out
