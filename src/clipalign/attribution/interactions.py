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
from clipalign.models.base import InteractionAdapter
from clipalign.results import Completeness, Interactions, TokenGroup

Normalize = Literal["cosine", "exclip"]
Head = Callable[[torch.Tensor], torch.Tensor]


def integrated_jacobian(
    head: Head,
    states: torch.Tensor,
    reference: torch.Tensor,
    nodes: np.ndarray,
    weights: np.ndarray,
    chunk: int = 256,
) -> torch.Tensor:
    """T (D, S): column i is Σ_k w_k J_head(r + α_k(x − r)) · δ_i, δ_i = (x − r) kept at position i only.

    ``states`` and ``reference`` are (S, d); ``head`` maps a batch (M, S, d) to embeddings (M, D).
    """
    delta = states - reference
    length = states.shape[0]
    alpha = torch.as_tensor(nodes, dtype=states.dtype, device=states.device).repeat_interleave(length)
    weight = torch.as_tensor(weights, dtype=torch.float64, device=states.device).repeat_interleave(length)
    position = torch.arange(length, device=states.device).repeat(len(nodes))
    columns: torch.Tensor | None = None
    for lo in range(0, len(position), chunk):
        a, w, p = alpha[lo : lo + chunk], weight[lo : lo + chunk], position[lo : lo + chunk]
        primal = reference + a[:, None, None] * delta
        tangent = torch.zeros_like(primal)
        tangent[torch.arange(len(p), device=p.device), p] = delta[p]
        _, directional = torch.func.jvp(head, (primal,), (tangent,))
        contribution = (directional.double() * w[:, None]).T
        if columns is None:
            columns = torch.zeros(contribution.shape[0], length, dtype=torch.float64, device=states.device)
        columns.index_add_(1, p, contribution)
    assert columns is not None
    return columns


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
        x = model.text_states(ids, self.text_layer)[0]
        r_x = model.text_states(ref_ids, self.text_layer)[0]
        y = model.image_states(pixels, self.image_layer)[0]
        r_y = model.image_states(torch.zeros_like(pixels), self.image_layer)[0]

        def raw_text(h: torch.Tensor) -> torch.Tensor:
            return model.text_head(h, self.text_layer, enc.pool_index)

        def raw_image(h: torch.Tensor) -> torch.Tensor:
            return model.image_head(h, self.image_layer)

        f, g = self._heads(raw_text, raw_image, x, y)
        text_cols = integrated_jacobian(f, x, r_x, self.nodes, self.weights, self.chunk)
        image_cols = integrated_jacobian(g, y, r_y, self.nodes, self.weights, self.chunk)
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

    def _heads(self, raw_text: Head, raw_image: Head, x: torch.Tensor, y: torch.Tensor) -> tuple[Head, Head]:
        """f and g: L2-normalised embeddings, or (exCLIP) raw ones over the input's constant norms."""
        if self.normalize == "cosine":
            return (
                lambda h: torch.nn.functional.normalize(raw_text(h), dim=-1),
                lambda h: torch.nn.functional.normalize(raw_image(h), dim=-1),
            )
        text_norm = raw_text(x[None]).norm()
        image_norm = raw_image(y[None]).norm()
        return (lambda h: raw_text(h) / text_norm), (lambda h: raw_image(h) / image_norm)
