"""Second-order token×patch interactions of CLIP (Möller et al., arXiv 2408.14153), computed exactly.

With x, y the hidden states entering text / vision block L, r_x, r_y those of the references (text, as
exCLIP: SOT, token id 0 ``!``, EOT, then id 0; image, as exCLIP: all-zero pixels after normalisation,
i.e. the processor's mean colour), f, g the embeddings computed from block L on:

    T[:, i] = ∫₀¹ J_f(r_x + α(x − r_x))[:, i] (x − r_x)_i dα,   V likewise for g,   A = Tᵀ V,

so that Σ_ij A = f(x)·g(y) − f(x)·g(r_y) − f(r_x)·g(y) + f(r_x)·g(r_y) up to quadrature error.
Column i of T is a directional derivative along the change at position i alone: a forward-mode JVP.
We evaluate (quadrature nodes × positions) JVPs in chunks with ``torch.func.jvp`` over a batch of
tangents, never forming the (T·d)×(P·d) Jacobian product nor one backward per embedding dimension.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

import numpy as np
import torch

from clipalign.attribution.inputs import item_error, pair_up
from clipalign.attribution.quadrature import quadrature
from clipalign.images import ImageInput, describe_source, load_image
from clipalign.models.base import ClipAdapter, InteractionAdapter, PositionJVPs
from clipalign.results import Completeness, Interactions, ItemError, TokenGroup
from clipalign.settings import InteractionSettings

Head = Callable[[torch.Tensor], torch.Tensor]


def head_jvps(head: Head) -> PositionJVPs:
    """Generic position JVPs of any ``head`` (M, S, d) → (M, D) with ``torch.func.jvp`` under ``vmap``.

    The tangents (the change kept at one position each) are batched by an inner ``vmap`` around each
    point, so a point's primal is computed once, not once per tangent; an outer ``vmap`` over the points
    of a chunk makes one dispatch per ``chunk`` tangents instead of one per point.
    """

    def jvps(points: torch.Tensor, delta: torch.Tensor, chunk: int) -> torch.Tensor:
        length, device = points.shape[1], points.device
        step = max(1, chunk // length)
        columns = []
        for positions in torch.arange(length, device=device).split(chunk):
            tangents = torch.zeros((len(positions), *points.shape[1:]), dtype=points.dtype, device=device)
            tangents[torch.arange(len(positions), device=device), positions] = delta[positions]

            def at(point: torch.Tensor, tangents: torch.Tensor = tangents) -> torch.Tensor:
                def along(tangent: torch.Tensor) -> torch.Tensor:
                    return torch.func.jvp(head, (point[None],), (tangent[None],))[1][0]

                return torch.func.vmap(along)(tangents)

            columns.append(torch.cat([torch.func.vmap(at)(group) for group in points.split(step)]))
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
    """T (D, S): column i is Σ_k w_k J(r + α_k(x − r)) · δ_i, δ_i = (x − r) kept at position i only.

    ``states`` and ``reference`` are (S, d); ``jvps`` gives the directional derivatives at all nodes,
    from :func:`head_jvps` or an adapter's closed form.
    """
    delta = states - reference
    alpha = torch.as_tensor(nodes, dtype=states.dtype, device=states.device)
    weight = torch.as_tensor(weights, dtype=torch.float64, device=states.device)
    directional = jvps(reference + alpha[:, None, None] * delta, delta, chunk)  # (N, S, D)
    return torch.einsum("n,nsk->ks", weight, directional.double())


def _resolve_block(block: int, depth: int, which: str) -> int:
    index = block + depth if block < 0 else block
    if not 0 <= index < depth:
        raise ValueError(
            f"{which} layer must be in {-depth}..{depth - 1} (the block index; encoder depth {depth}), "
            f"got {block}"
        )
    return index


class TokenPatchInteractions:
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
        if not isinstance(model, InteractionAdapter):
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

    @overload
    def attribute(
        self,
        images: ImageInput | Sequence[ImageInput],
        captions: str | Sequence[str],
        *,
        on_error: Literal["raise"],
    ) -> list[Interactions]: ...

    @overload
    def attribute(
        self,
        images: ImageInput | Sequence[ImageInput],
        captions: str | Sequence[str],
        *,
        on_error: Literal["record"] = ...,
    ) -> list[Interactions | ItemError]: ...

    @torch.no_grad()
    def attribute(
        self,
        images: ImageInput | Sequence[ImageInput],
        captions: str | Sequence[str],
        *,
        on_error: Literal["record", "raise"] = "record",
    ) -> list[Interactions] | list[Interactions | ItemError]:
        """One :class:`Interactions` per pair, in input order.

        As in :meth:`clipalign.CLIP4DM.attribute`, with ``on_error="record"`` a pair that fails (an
        unreadable image, an invalid caption, any error while computing it) becomes an
        :class:`ItemError` saying why and the others are still computed; ``on_error="raise"`` raises.
        """
        image_list, caption_list = pair_up(images, captions)
        results: list[Interactions | ItemError] = []
        for index, (image, caption) in enumerate(zip(image_list, caption_list, strict=True)):
            try:
                results.append(self._pair(image, caption))
            except Exception as exc:
                if on_error == "raise":
                    raise
                results.append(item_error(index, image, caption, exc))
        return results

    def _pair(self, image: ImageInput, caption: str) -> Interactions:
        model = self.model
        pil = load_image(image)
        [enc] = model.encode_captions([caption], self.settings.template)
        ids = torch.tensor([enc.input_ids], device=model.device)
        reference = model.text_reference_ids(len(enc.input_ids), self.settings.text_reference)
        ref_ids = torch.tensor([reference], device=model.device)
        pixels = model.preprocess([pil])
        x, r_x = model.text_states(torch.cat([ids, ref_ids]), self.text_block)
        [y] = model.image_states(pixels, self.image_block)
        r_y, raw_gry = self._image_reference(pixels)

        def raw_text(h: torch.Tensor) -> torch.Tensor:
            return model.text_head(h, self.text_block, enc.pool_index)

        def raw_image(h: torch.Tensor) -> torch.Tensor:
            return model.image_head(h, self.image_block)

        raw_fx, raw_frx = raw_text(torch.stack([x, r_x]))
        [raw_gy] = raw_image(y[None])
        (f, post_f), (g, post_g) = self._heads(raw_text, raw_image, raw_fx, raw_gy)
        text_jvps = model.text_head_jvps(self.text_block, enc.pool_index, post_f) or head_jvps(f)
        image_jvps = model.image_head_jvps(self.image_block, post_g) or head_jvps(g)
        text_cols = integrated_jacobian(text_jvps, x, r_x, self.nodes, self.weights, self.settings.chunk)
        image_cols = integrated_jacobian(image_jvps, y, r_y, self.nodes, self.weights, self.settings.chunk)
        matrix = (text_cols.T @ image_cols).cpu().numpy()

        fx, frx = post_f(raw_fx).double(), post_f(raw_frx).double()
        gy, gry = post_g(raw_gy).double(), post_g(raw_gry).double()
        terms = [float(a @ b) for a, b in ((fx, gy), (fx, gry), (frx, gy), (frx, gry))]
        target = terms[0] - terms[1] - terms[2] + terms[3]
        total = float(matrix.sum())
        words = [
            TokenGroup(w.text, w.start, w.end, [int(t) for t in np.flatnonzero(enc.token_word == i)])
            for i, w in enumerate(enc.words)
        ]
        return Interactions(
            caption=caption,
            tokens=list(enc.tokens),
            words=words,
            grid=model.patch_grid,
            matrix=matrix[:, 1:],
            cls=matrix[:, 0],
            completeness=Completeness(total, target, total - target, *terms),
            geometry=model.image_geometry(*pil.size),
            text_block=self.text_block,
            image_block=self.image_block,
            steps=self.settings.steps,
            rule=self.settings.rule,
            normalize=self.settings.normalize,
            source=describe_source(image),
        )

    def _image_reference(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image reference's states r_y at the image block and its raw embedding: the same for every
        pair (all-zero pixels), so computed once per input shape, dtype and device, then reused."""
        key = (tuple(pixels.shape[1:]), pixels.dtype, pixels.device)
        if key not in self._image_references:
            states = self.model.image_states(torch.zeros_like(pixels[:1]), self.image_block)
            self._image_references[key] = (states[0], self.model.image_head(states, self.image_block)[0])
        return self._image_references[key]

    def _heads(
        self, raw_text: Head, raw_image: Head, text_embedding: torch.Tensor, image_embedding: torch.Tensor
    ) -> tuple[tuple[Head, Head], tuple[Head, Head]]:
        """(f, its post-map) and (g, its post-map): f = post(raw), post the L2 normalisation, or (exCLIP)
        the division by the input's raw embedding norm (``text_embedding``, ``image_embedding``: the raw
        embeddings of the input), held constant."""
        post_f: UnitPost | ScaledPost
        post_g: UnitPost | ScaledPost
        if self.settings.normalize == "cosine":
            post_f = post_g = UnitPost()
        else:
            post_f, post_g = ScaledPost(text_embedding.norm()), ScaledPost(image_embedding.norm())
        return ((lambda h: post_f(raw_text(h))), post_f), ((lambda h: post_g(raw_image(h))), post_g)


class UnitPost:
    """L2 normalisation of embeddings (last axis), with its JVP in closed form for the adapters' tails."""

    def __call__(self, e: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(e, dim=-1)

    def jvp(self, e: torch.Tensor, de: torch.Tensor) -> torch.Tensor:
        """(I − u uᵀ) de / |e| with u = e / |e|; ``e`` broadcasts against ``de``."""
        norm = e.norm(dim=-1, keepdim=True)
        unit = e / norm
        return (de - unit * (unit * de).sum(-1, keepdim=True)) / norm


class ScaledPost:
    """Division by a fixed norm (exCLIP's normalisation held constant along the path); linear, so its JVP
    is the same division."""

    def __init__(self, scale: torch.Tensor) -> None:
        self.scale = scale

    def __call__(self, e: torch.Tensor) -> torch.Tensor:
        return e / self.scale

    def jvp(self, e: torch.Tensor, de: torch.Tensor) -> torch.Tensor:
        """de / scale (e unused: the map is linear)."""
        return de / self.scale
