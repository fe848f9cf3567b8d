"""Second-order token×patch interactions of CLIP (Möller et al., arXiv 2408.14153), computed exactly.

With x, y the hidden states entering text / vision block L, r_x, r_y those of the references (text:
SOT, one pad, EOT; image: all-zero normalised pixels), f, g the embeddings computed from block L on:

    T[:, i] = ∫₀¹ J_f(r_x + α(x − r_x))[:, i] (x − r_x)_i dα,   V likewise for g,   A = Tᵀ V,

so that Σ_ij A = f(x)·g(y) − f(x)·g(r_y) − f(r_x)·g(y) + f(r_x)·g(r_y) up to quadrature error.
Column i of T is a directional derivative along the change at position i alone: a forward-mode JVP.
We evaluate (quadrature nodes × positions) JVPs in chunks with ``torch.func.jvp`` over a batch of
tangents, never forming the (T·d)×(P·d) Jacobian product nor one backward per embedding dimension.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from clipalign.attribution.quadrature import Rule, quadrature
from clipalign.images import ImageInput, describe_source, load_image
from clipalign.models.base import InteractionAdapter, PositionJVPs
from clipalign.results import Completeness, Interactions, TokenGroup

Normalize = Literal["cosine", "exclip"]
Head = Callable[[torch.Tensor], torch.Tensor]


def head_jvps(head: Head) -> PositionJVPs:
    """Generic position JVPs of any ``head`` (M, S, d) → (M, D) with ``torch.func.jvp`` under ``vmap``.

    The tangents of one point (the change kept at one position each) are batched by ``vmap`` around a
    single primal, so the primal is computed once per point and chunk instead of once per tangent.
    """

    def jvps(points: torch.Tensor, delta: torch.Tensor, chunk: int) -> torch.Tensor:
        position_chunks = torch.arange(points.shape[1], device=points.device).split(chunk)
        out = []
        for point in points.split(1):

            def along(tangent: torch.Tensor, point: torch.Tensor = point) -> torch.Tensor:
                return torch.func.jvp(head, (point,), (tangent[None],))[1][0]

            pieces = []
            for positions in position_chunks:
                tangents = torch.zeros(
                    (len(positions), *point.shape[1:]), dtype=point.dtype, device=point.device
                )
                tangents[torch.arange(len(positions), device=point.device), positions] = delta[positions]
                pieces.append(torch.func.vmap(along)(tangents))
            out.append(torch.cat(pieces))
        return torch.stack(out)

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


def _resolve_layer(layer: int, depth: int, which: str) -> int:
    index = layer + depth if layer < 0 else layer
    if not 0 <= index < depth:
        raise ValueError(
            f"{which} layer must be in {-depth}..{depth - 1} (encoder depth {depth}), got {layer}"
        )
    return index


class TokenPatchInteractions:
    """Token×patch interaction matrices for image–caption pairs (integrated Jacobians, second order).

    Args:
        model: an adapter from :func:`clipalign.load_model`.
        text_layer / image_layer: the block whose input is attributed (0-based; −1 = the last block).
        steps: quadrature nodes N per path integral.
        rule: ``gauss`` (Gauss–Legendre, default) or ``riemann`` (right Riemann sum, as exCLIP).
        normalize: ``cosine`` attributes the cosine (f, g L2-normalised); ``exclip`` divides the raw
            embeddings by the input's norms held constant, as the exCLIP code does.
        chunk: JVPs evaluated at once (lower it to save memory).
        template: prefix read before the caption (none by default, as in the paper).

    The text embedding f pools at the input's EOT position for the input, the reference and every
    point of the path between them.
    """

    def __init__(
        self,
        model: InteractionAdapter,
        text_layer: int = -1,
        image_layer: int = -1,
        steps: int = 10,
        rule: Rule = "gauss",
        normalize: Normalize = "cosine",
        chunk: int = 256,
        template: str = "",
    ) -> None:
        if normalize not in ("cosine", "exclip"):
            raise ValueError(f"normalize must be 'cosine' or 'exclip', got {normalize!r}")
        if chunk < 1:
            raise ValueError(f"chunk must be ≥ 1, got {chunk}")
        self.nodes, self.weights = quadrature(rule, steps)
        self.model = model
        self.text_layer = _resolve_layer(text_layer, model.num_text_layers, "text")
        self.image_layer = _resolve_layer(image_layer, model.num_vision_layers, "image")
        self.steps, self.rule, self.normalize = steps, rule, normalize
        self.chunk = chunk
        self.template = template

    @torch.no_grad()
    def attribute(
        self, images: ImageInput | Sequence[ImageInput], captions: str | Sequence[str]
    ) -> list[Interactions]:
        """One :class:`Interactions` per pair, in input order; bad inputs raise with a clear message."""
        if isinstance(captions, str):
            captions = [captions]
        image_list = list(images) if isinstance(images, (list, tuple)) else [images]
        if len(image_list) != len(captions):
            raise ValueError(f"got {len(image_list)} images but {len(captions)} captions")
        return [self._pair(image, caption) for image, caption in zip(image_list, captions, strict=True)]

    def _pair(self, image: ImageInput, caption: str) -> Interactions:
        model = self.model
        pil = load_image(image)
        [enc] = model.encode_captions([caption], self.template)
        ids = torch.tensor([enc.input_ids], device=model.device)
        ref_ids = torch.tensor([model.text_reference_ids(len(enc.input_ids))], device=model.device)
        pixels = model.preprocess([pil])
        x, r_x = model.text_states(torch.cat([ids, ref_ids]), self.text_layer)
        y, r_y = model.image_states(torch.cat([pixels, torch.zeros_like(pixels)]), self.image_layer)

        def raw_text(h: torch.Tensor) -> torch.Tensor:
            return model.text_head(h, self.text_layer, enc.pool_index)

        def raw_image(h: torch.Tensor) -> torch.Tensor:
            return model.image_head(h, self.image_layer)

        (f, post_f), (g, post_g) = self._heads(raw_text, raw_image, x, y)
        text_jvps = model.text_head_jvps(self.text_layer, enc.pool_index, post_f) or head_jvps(f)
        image_jvps = model.image_head_jvps(self.image_layer, post_g) or head_jvps(g)
        text_cols = integrated_jacobian(text_jvps, x, r_x, self.nodes, self.weights, self.chunk)
        image_cols = integrated_jacobian(image_jvps, y, r_y, self.nodes, self.weights, self.chunk)
        matrix = (text_cols.T @ image_cols).cpu().numpy()

        fx, frx, gy, gry = (e.double()[0] for e in (f(x[None]), f(r_x[None]), g(y[None]), g(r_y[None])))
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
            text_layer=self.text_layer,
            image_layer=self.image_layer,
            steps=self.steps,
            rule=self.rule,
            normalize=self.normalize,
            source=describe_source(image),
        )

    def _heads(
        self, raw_text: Head, raw_image: Head, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[tuple[Head, Head], tuple[Head, Head]]:
        """(f, its post-map) and (g, its post-map): f = post(raw), post the L2 normalisation, or (exCLIP)
        the division by the input's raw embedding norm, held constant."""
        if self.normalize == "cosine":
            post_f = post_g = _unit
        else:
            text_norm, image_norm = raw_text(x[None]).norm(), raw_image(y[None]).norm()

            def post_f(e: torch.Tensor) -> torch.Tensor:
                return e / text_norm

            def post_g(e: torch.Tensor) -> torch.Tensor:
                return e / image_norm

        return ((lambda h: post_f(raw_text(h))), post_f), ((lambda h: post_g(raw_image(h))), post_g)


def _unit(e: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(e, dim=-1)
