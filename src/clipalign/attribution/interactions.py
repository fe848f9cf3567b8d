"""Second-order token×patch interactions of CLIP (Möller et al., arXiv 2408.14153), computed exactly.

With x, y the hidden states entering text / vision block L, r_x, r_y those of the references (text, as
exCLIP: SOT, token id 0 ``!``, EOT, then id 0; image, as exCLIP: all-zero pixels after normalisation,
i.e. the processor's mean colour), f, g the embeddings computed from block L on:

    T[:, i] = ∫₀¹ J_f(r_x + α(x − r_x))[:, i] (x − r_x)_i dα,   V likewise for g,   A = Tᵀ V,

so that Σ_ij A = f(x)·g(y) − f(x)·g(r_y) − f(r_x)·g(y) + f(r_x)·g(r_y) up to quadrature error.
Column i of T is a directional derivative along the change at position i alone: a forward-mode JVP.
We evaluate (quadrature nodes × positions) JVPs in chunks with ``torch.func.jvp`` over a batch of
tangents, never forming the (T·d)×(P·d) Jacobian product nor one backward per embedding dimension.
Pairs go ``batch_size`` at a time: the image states and image JVPs of all of them in shared calls (every
image has the same positions, each pair its own change y − r_y); captions of one token length likewise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from clipalign.attribution.inputs import PairMethod
from clipalign.attribution.quadrature import quadrature
from clipalign.images import ImageInput, describe_source, load_image
from clipalign.models.base import ClipAdapter, InteractionAdapter, PerImageGridAdapter, PositionJVPs
from clipalign.results import Completeness, Interactions, TokenGroup
from clipalign.settings import InteractionSettings
from clipalign.text.alignment import EncodedCaption

Head = Callable[[torch.Tensor], torch.Tensor]


def head_jvps(head: Head) -> PositionJVPs:
    """Generic position JVPs of any ``head`` (M, S, d) → (M, D) with ``torch.func.jvp`` under ``vmap``.

    The tangents (a point's change kept at one position each) are batched by an inner ``vmap`` around each
    point, so a point's primal is computed once, not once per tangent; an outer ``vmap`` over the points
    of a chunk (each with its own change) makes one dispatch per ``chunk`` tangents instead of one per point.
    """

    def jvps(points: torch.Tensor, changes: torch.Tensor, chunk: int) -> torch.Tensor:
        changes = changes.expand_as(points)  # a change (S, d) is every point's
        length, device = points.shape[1], points.device
        step = max(1, chunk // length)
        columns = []
        for positions in torch.arange(length, device=device).split(chunk):
            # (P, S, 1): tangent p keeps the change at position positions[p] only
            keep = (positions[:, None] == torch.arange(length, device=device)).to(points.dtype)[..., None]

            def at(point: torch.Tensor, change: torch.Tensor, keep: torch.Tensor = keep) -> torch.Tensor:
                def along(tangent: torch.Tensor) -> torch.Tensor:
                    return torch.func.jvp(head, (point[None],), (tangent[None],))[1][0]

                return torch.func.vmap(along)(keep * change)

            groups = zip(points.split(step), changes.split(step), strict=True)
            columns.append(torch.cat([torch.func.vmap(at)(group, change) for group, change in groups]))
        return torch.cat(columns, dim=1)

    return jvps


def integrated_jacobian(
    jvps: PositionJVPs,
    states: torch.Tensor,
    reference: torch.Tensor,
    nodes: np.ndarray,
    weights: np.ndarray,
    chunk: int = 256,
) -> torch.Tensor:
    """T (B, D, S): for pair b, column i is Σ_k w_k J(r + α_k(x_b − r)) · δ_i, δ_i = (x_b − r) kept at
    position i only.

    ``states`` are (B, S, d), ``reference`` (S, d), shared by the pairs; the B·N points of all pairs go
    through ``jvps`` (from :func:`head_jvps` or an adapter's closed form) in one chunked evaluation, each
    with its own pair's change.
    """
    batch, length, width = states.shape
    delta = states - reference
    alpha = torch.as_tensor(nodes, dtype=states.dtype, device=states.device)
    weight = torch.as_tensor(weights, dtype=torch.float64, device=states.device)
    points = reference + alpha[:, None, None] * delta[:, None]  # (B, N, S, d)
    changes = delta[:, None].expand(points.shape)
    flat = (batch * len(nodes), length, width)
    directional = jvps(points.reshape(flat), changes.reshape(flat), chunk)  # (B·N, S, D)
    return torch.einsum("n,bnsk->bks", weight, directional.double().unflatten(0, (batch, len(nodes))))


@dataclass
class _Pair:
    """A pair ready to compute: its image, its caption encoded, the text reference's ids (same length)
    and its image input described for the result."""

    image: Image.Image
    encoded: EncodedCaption
    reference: list[int]
    source: str


def _resolve_block(block: int, depth: int, which: str) -> int:
    index = block + depth if block < 0 else block
    if not 0 <= index < depth:
        raise ValueError(
            f"{which} layer must be in {-depth}..{depth - 1} (the block index; encoder depth {depth}), "
            f"got {block}"
        )
    return index


class TokenPatchInteractions(PairMethod[_Pair, Interactions]):
    """Token×patch interaction matrices for image–caption pairs (integrated Jacobians, second order).

    Args:
        model: an adapter from :func:`clipalign.load_model` that supports interactions (HF CLIP does).
        settings: :class:`~clipalign.settings.InteractionSettings` (blocks, steps, rule, normalize,
            template, text reference, chunk); keyword arguments change single fields of it, e.g. ``steps=20``.

    The text embedding f pools at the input's EOT position for the input, the reference and every
    point of the path between them.

    Example:
        >>> from clipalign.testing import tiny_model, example_image
        >>> method = TokenPatchInteractions(tiny_model(), steps=4)
        >>> [result] = method.attribute([example_image()], ["a red ball"])
        >>> result.matrix.shape  # caption tokens with SOT and EOT × 4×4 patches
        (5, 16)
        >>> abs(result.completeness.residual) < 1e-3  # Σ matrix + Σ cls matches the score difference
        True
    """

    def __init__(
        self, model: ClipAdapter, *, settings: InteractionSettings | None = None, **changes: Any
    ) -> None:
        if not isinstance(model, InteractionAdapter | PerImageGridAdapter):
            raise ValueError(f"{model.name}: its adapter does not support interactions (InteractionAdapter)")
        self.settings = (settings or InteractionSettings()).replace(**changes)
        self.nodes, self.weights = quadrature(self.settings.rule, self.settings.steps)
        self.model = model
        self._image_references: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self.text_block = _resolve_block(self.settings.text_block, model.num_text_layers, "text")
        self.image_block = _resolve_block(self.settings.image_block, model.num_vision_layers, "image")

    @property
    def text_reference(self) -> dict[str, Any]:
        """Which text reference is used, for reports: its kind and filler token (id and vocabulary string)."""
        token_id, token = self.model.text_reference_token(self.settings.text_reference)
        return {"kind": self.settings.text_reference, "token_id": token_id, "token": token}

    @property
    def pair_batch_size(self) -> int:
        """Pairs computed together: ``settings.batch_size``."""
        return self.settings.batch_size

    def _prepare(self, index: int, image: ImageInput, caption: str) -> _Pair:
        """Load the image, encode the caption and build its text reference: what can fail for one pair."""
        [enc] = self.model.encode_captions([caption], self.settings.template)
        reference = self.model.text_reference_ids(len(enc.input_ids), self.settings.text_reference)
        return _Pair(load_image(image), enc, reference, describe_source(image))

    @torch.no_grad()
    def _compute(self, group: list[_Pair]) -> list[Interactions]:
        """The pairs of ``group`` together: one image-states call and one chunked JVP evaluation for all
        images; per caption length, one text-states call and one JVP evaluation."""
        model = self.model
        post = self._post()
        pixels = model.preprocess([pair.image for pair in group])
        grids = self._grids(pixels)
        image_sides = self._image_side(pixels, grids, post)
        text_sides = self._text_side(group, post)
        prefix = model.image_prefix
        results = []
        for b, pair in enumerate(group):
            text_cols, raw_fx, raw_frx = text_sides[b]
            image_cols, raw_gy, raw_gry = image_sides[b]
            f_scale, g_scale = self._scale(raw_fx), self._scale(raw_gy)
            matrix = ((text_cols / f_scale).T @ (image_cols / g_scale)).cpu().numpy()
            fx, frx = self._embed(raw_fx, raw_fx), self._embed(raw_frx, raw_fx)
            gy, gry = self._embed(raw_gy, raw_gy), self._embed(raw_gry, raw_gy)
            terms = [float(a @ b) for a, b in ((fx, gy), (fx, gry), (frx, gy), (frx, gry))]
            target = terms[0] - terms[1] - terms[2] + terms[3]
            total = float(matrix.sum())
            enc = pair.encoded
            words = [
                TokenGroup(w.text, w.start, w.end, [int(t) for t in np.flatnonzero(enc.token_word == i)])
                for i, w in enumerate(enc.words)
            ]
            results.append(
                Interactions(
                    caption=enc.caption,
                    tokens=list(enc.tokens),
                    words=words,
                    grid=grids[b],
                    matrix=matrix[:, prefix:],
                    cls=matrix[:, :prefix].sum(axis=1) if prefix else np.zeros(0),
                    completeness=Completeness(total, target, total - target, *terms),
                    geometry=model.image_geometry(*pair.image.size),
                    text_block=self.text_block,
                    image_block=self.image_block,
                    steps=self.settings.steps,
                    rule=self.settings.rule,
                    normalize=self.settings.normalize,
                    source=pair.source,
                )
            )
        return results

    def _grids(self, pixels: torch.Tensor) -> list[tuple[int, int]]:
        """Each image's patch grid: the model's one grid, or per image (NaFlex)."""
        if isinstance(self.model, PerImageGridAdapter):
            return self.model.patch_grids(pixels)
        return [self.model.patch_grid] * len(pixels)

    def _image_side(
        self, pixels: torch.Tensor, grids: Sequence[tuple[int, int]], post: UnitPost | IdentityPost
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per image: V (D, S) before any per-pair scale, its raw embedding (D,) and its reference's raw
        embedding (D,). Images of one grid share one states call and one JVP evaluation."""
        model, block = self.model, self.image_block

        def head(h: torch.Tensor) -> torch.Tensor:
            return post(model.image_head(h, block))

        jvps = model.image_head_jvps(block, post) or head_jvps(head)
        by_grid: dict[tuple[int, int], list[int]] = {}
        for b, grid in enumerate(grids):
            by_grid.setdefault(grid, []).append(b)
        out: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for grid, members in by_grid.items():
            some = pixels[members]
            states = model.image_states(some, block)
            reference, raw_reference = self._image_reference(some, grid)
            cols = integrated_jacobian(jvps, states, reference, self.nodes, self.weights, self.settings.chunk)
            raw = model.image_head(states, block)
            for j, b in enumerate(members):
                out[b] = (cols[j], raw[j], raw_reference)
        return [out[b] for b in range(len(grids))]

    def _text_side(
        self, group: Sequence[_Pair], post: UnitPost | IdentityPost
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per pair: T (D, tokens) before any per-pair scale, the raw embeddings of the caption and of its
        reference. Captions of one length (and pooled position) share one states call and one JVP
        evaluation, and their reference, which depends on the length only; grouping by length rather
        than padding keeps every call's shapes those of a pair alone (no per-row pooled position)."""
        model, block = self.model, self.text_block
        by_shape: dict[tuple[int, int], list[int]] = {}
        for b, pair in enumerate(group):
            by_shape.setdefault((len(pair.encoded.input_ids), pair.encoded.pool_index), []).append(b)
        out: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for (_, pool), members in by_shape.items():
            rows = [group[b].encoded.input_ids for b in members] + [group[members[0]].reference]
            states = model.text_states(torch.tensor(rows, device=model.device), block)
            raw = model.text_head(states, block, pool)

            def head(h: torch.Tensor, pool: int = pool) -> torch.Tensor:
                return post(model.text_head(h, block, pool))

            jvps = model.text_head_jvps(block, pool, post) or head_jvps(head)
            cols = integrated_jacobian(
                jvps, states[:-1], states[-1], self.nodes, self.weights, self.settings.chunk
            )
            for j, b in enumerate(members):
                out[b] = (cols[j], raw[j], raw[-1])
        return [out[b] for b in range(len(group))]

    def _post(self) -> UnitPost | IdentityPost:
        """The map after the raw embedding that the JVPs go through: the L2 normalisation (``cosine``), or
        none (``exclip``: its division by the input's norm is linear and constant along the path, so it
        is applied to each pair's T afterwards, see :meth:`_scale`)."""
        return UnitPost() if self.settings.normalize == "cosine" else IdentityPost()

    def _scale(self, raw_input: torch.Tensor) -> torch.Tensor:
        """What a pair's T (or V) is divided by: 1 for ``cosine`` (its post is in the JVPs), the input's raw
        embedding norm for ``exclip``."""
        if self.settings.normalize == "cosine":
            return torch.ones((), dtype=torch.float64, device=raw_input.device)
        return raw_input.norm().double()

    def _embed(self, raw: torch.Tensor, raw_input: torch.Tensor) -> torch.Tensor:
        """An embedding as the score uses it (fp64): L2-normalised (``cosine``) or divided by the input's raw
        norm (``exclip``), for the completeness terms."""
        if self.settings.normalize == "cosine":
            return UnitPost()(raw).double()
        return (raw / raw_input.norm()).double()

    def _image_reference(
        self, pixels: torch.Tensor, grid: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The image reference's states r_y at the image block and its raw embedding: the same for every
        pair of a patch grid (all-zero pixels at that grid), so computed once per input shape, grid,
        dtype and device, then reused."""
        key = (tuple(pixels.shape[1:]), grid, pixels.dtype, pixels.device)
        if key not in self._image_references:
            model = self.model
            zero = (
                model.reference_pixels(pixels[:1])
                if isinstance(model, PerImageGridAdapter)
                else torch.zeros_like(pixels[:1])
            )
            states = model.image_states(zero, self.image_block)
            self._image_references[key] = (states[0], self.model.image_head(states, self.image_block)[0])
        return self._image_references[key]


class UnitPost:
    """L2 normalisation of embeddings (last axis), with its JVP in closed form for the adapters' tails."""

    def __call__(self, e: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(e, dim=-1)

    def jvp(self, e: torch.Tensor, de: torch.Tensor) -> torch.Tensor:
        """(I − u uᵀ) de / |e| with u = e / |e|; ``e`` broadcasts against ``de``."""
        norm = e.norm(dim=-1, keepdim=True)
        unit = e / norm
        return (de - unit * (unit * de).sum(-1, keepdim=True)) / norm


class IdentityPost:
    """No map after the raw embedding (``normalize="exclip"``: its division by a norm held constant is
    applied to each pair's integrated Jacobian afterwards); its JVP is the tangent itself."""

    def __call__(self, e: torch.Tensor) -> torch.Tensor:
        return e

    def jvp(self, e: torch.Tensor, de: torch.Tensor) -> torch.Tensor:
        """de (e unused: the map is the identity)."""
        return de
