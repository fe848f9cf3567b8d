"""FIxLIP: token×patch weighted Banzhaf interactions from masked forwards (Baniecki et al., arXiv 2508.05430).

The game, as the authors define it for CLIP: the players are the image patches (row-major) and the
caption's tokens between SOT and EOT; a coalition keeps its players and masks the others — an absent
token is hidden from every other position by the attention mask, an absent patch's pixels are set to 0
*after* normalisation (the processor's mean colour) — and its value is the logit
``exp(logit_scale) · cos(image, text)`` of the masked pair. The weighted Banzhaf interaction of a patch
i and a token j with weight p is

    I_ij = Σ_{S ⊆ N∖{i,j}} p^|S| (1−p)^(n−2−|S|) [v(S∪{i,j}) − v(S∪{i}) − v(S∪{j}) + v(S)],

the expected second difference when every other player is present with probability p. It is estimated,
as the authors' cross-modal estimator does, by drawing image coalitions and text coalitions apart
(shapiq's :class:`~shapiq.approximator.sampling.CoalitionSampler`, size distribution Binomial(n, p),
exhaustive sizes first) and evaluating every pair of them: ``m_i`` image-tower and ``m_t`` text-tower
forwards give ``m_i · m_t`` game values. A weighted least-squares fit of
v ≈ β₀ + Σ βᵢ sᵢ + Σ βⱼ tⱼ + Σ βᵢⱼ sᵢ tⱼ (kernel p^|S|(1−p)^(n−|S|), importance-corrected for
sampling) then gives I_ij = βᵢⱼ; at a budget that covers all coalitions it equals the sum above exactly.
On this cross-modal basis the design matrix is the Kronecker product of the two modalities' designs,
so the normal equations factor into one small solve per modality. On SigLIP, as in the authors' code,
the text players are the caption's tokens before ``</s>`` (``</s>`` and the padding stay present) and
the logit includes SigLIP's ``logit_bias``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from clipalign.attribution.inputs import PairMethod
from clipalign.images import ImageInput, describe_source, load_image
from clipalign.models.base import ClipAdapter, InteractionAdapter, TextInputs
from clipalign.results import Completeness, Interactions, TokenGroup
from clipalign.settings import RUNTIME, _check_choice, _result_fields
from clipalign.text.alignment import EncodedCaption

GameValue = Literal["logit", "cosine"]
TextMask = Literal["attention", "token"]


@dataclass(frozen=True)
class FIxLIPSettings:
    """FIxLIP's settings (defaults: the authors' pointing-game protocol).

    Attributes:
        budget: game values per explanation, image coalitions × text coalitions (authors: 2**20).
        text_budget: text coalitions (authors: 64, or all 2**n when fewer); the image tower gets
            ``budget // text_budget`` coalitions, at most all 2**patches.
        p: the Banzhaf weight, the probability that a player is present (0.5 = Banzhaf).
        seed: random state of both coalition samplers.
        value: ``logit`` (exp(logit_scale) · cosine, plus SigLIP's logit_bias: the model's logit, the
            authors') or ``cosine``.
        text_mask: ``attention`` hides an absent token with the attention mask (the authors');
            ``token`` replaces its id with the filler of exCLIP's reference (id 0, ``!``).
        image_fill: the normalised pixel value of an absent patch (0 = the processor's mean colour).
        template: prefix read before the caption; its tokens are players too (none by default).
        within: also estimate the within-modality interactions (token×token, patch×patch), fitting
            the authors' full second-order model jointly (their default below 196 patches) instead of
            the cross-modal one; the token×patch matrix is the same either way (see
            :func:`fit_second_order`), the first-order terms are not.
        batch_size: coalitions per forward of each tower.
    """

    budget: int = 2**20
    text_budget: int = 64
    p: float = 0.5
    seed: int = 0
    value: GameValue = "logit"
    text_mask: TextMask = "attention"
    image_fill: float = 0.0
    template: str = ""
    within: bool = False
    batch_size: int = field(default=64, metadata=RUNTIME)

    def __post_init__(self) -> None:
        _check_choice("value", self.value, GameValue)
        _check_choice("text_mask", self.text_mask, TextMask)
        if not 0 < self.p < 1:
            raise ValueError(f"p must be in (0, 1), got {self.p}")
        if self.text_budget < 2 or self.budget < 4:
            raise ValueError(f"budget must be ≥ 4 and text_budget ≥ 2, got {self.budget}, {self.text_budget}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")

    def to_dict(self) -> dict[str, Any]:
        """Everything but ``batch_size``; ``within`` only when set, so that results cached before the
        option existed (all cross-modal) keep their key."""
        out = _result_fields(self)
        if not self.within:
            del out["within"]
        return out

    def replace(self, **changes: Any) -> FIxLIPSettings:
        """A copy with some settings changed (validated again)."""
        return replace(self, **changes)


@dataclass(frozen=True, eq=False)
class WithinModality:
    """FIxLIP's within-modality interactions: ``tokens`` (T, T) over every text position (rows and
    columns of the tokens the adapter adds, SOT/EOT or SigLIP's ``</s>`` and padding, 0: not players)
    and ``patches`` (P, P) over the patches, row-major; both
    symmetric, with a zero diagonal. Entry (a, b) is the weighted Banzhaf interaction of players a and b:
    positive = the two raise the score together more than apart."""

    tokens: np.ndarray = field(repr=False)
    patches: np.ndarray = field(repr=False)

    def strongest(self, which: Literal["tokens", "patches"], count: int) -> list[tuple[int, int, float]]:
        """The ``count`` pairs (a < b) of ``which`` with the largest absolute interaction, largest first."""
        matrix = self.tokens if which == "tokens" else self.patches
        rows, cols = np.triu_indices(len(matrix), k=1)
        order = np.argsort(-np.abs(matrix[rows, cols]), kind="stable")[:count]
        return [(int(rows[k]), int(cols[k]), float(matrix[rows[k], cols[k]])) for k in order]

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types only."""
        return {"tokens": self.tokens.tolist(), "patches": self.patches.tolist()}


@dataclass(frozen=True, eq=False)
class FIxLIPInteractions(Interactions):
    """FIxLIP's token×patch matrix in the shape of :class:`~clipalign.results.Interactions`, so that
    spans, boxes, heatmaps and the pointing game work on it unchanged.

    ``matrix`` rows are every text position; the rows of the tokens the adapter adds (CLIP's SOT and
    EOT, SigLIP's ``</s>`` and padding: never masked, so not players) are 0, as is ``cls`` (the image
    CLS token is not a player). ``completeness`` holds the game
    at the four corners — s_xy = v(all patches, all tokens), s_x_ry = v(no patch, all tokens),
    s_rx_y = v(all patches, no token), s_rx_ry = v(none) — their double difference as ``target`` and
    Σ matrix as ``sum``: Banzhaf values are not efficient, so ``residual`` is the part of the
    modalities' joint effect that lies in higher-order interactions, not a quadrature error.
    ``text_block`` = ``image_block`` = 0 (the inputs are masked), ``steps`` = game values evaluated,
    ``rule`` = ``"banzhaf"``, ``normalize`` = the game value (``logit`` or ``cosine``).
    ``token_values`` / ``patch_values`` are the first-order terms of the fit (per row / per patch),
    ``baseline`` its intercept (≈ v(none)). ``within`` holds the within-modality interactions when
    they were asked for (:attr:`FIxLIPSettings.within`), else None.
    """

    within: WithinModality | None = None
    token_values: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    patch_values: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    baseline: float = 0.0
    image_coalitions: int = 0
    text_coalitions: int = 0
    p: float = 0.5
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "method": "fixlip",
            "token_values": self.token_values.tolist(),
            "patch_values": self.patch_values.tolist(),
            "baseline": self.baseline,
            "image_coalitions": self.image_coalitions,
            "text_coalitions": self.text_coalitions,
            "p": self.p,
            "seed": self.seed,
            "within": self.within.to_dict() if self.within is not None else None,
        }


def patch_pixel_mask(coalitions: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """(m, patches) bool, patches row-major over ``grid`` → (m, 1, H, W) float, 1 on present patches'
    pixels; pixels past the last whole patch (which the patch embedding ignores) stay 1."""
    rows, cols = grid
    height, width = size
    mask = coalitions.reshape(-1, 1, rows, cols).float()
    mask = mask.repeat_interleave(height // rows, dim=2).repeat_interleave(width // cols, dim=3)
    return torch.nn.functional.pad(mask, (0, width - mask.shape[3], 0, height - mask.shape[2]), value=1.0)


def banzhaf_kernel(sizes: np.ndarray, n: int, p: float) -> np.ndarray:
    """p^k (1−p)^(n−k) per coalition size k, scaled so that the largest is 1 (the fit is scale-free)."""
    log = sizes * np.log(p) + (n - sizes) * np.log1p(-p)
    return np.exp(log - log.max())


def fit_projection(coalitions: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """P (1+n, m) with β = P y the weighted least-squares fit of y ≈ β₀ + Σ βᵢ sᵢ over the rows of
    ``coalitions`` (m, n); minimum-norm when the coalitions do not determine every coefficient."""
    design = np.hstack([np.ones((len(coalitions), 1)), coalitions.astype(np.float64)])
    weighted = design.T * weights
    return np.linalg.lstsq(weighted @ design, weighted, rcond=None)[0]


MAX_SECOND_ORDER_TERMS = 8192
"""The most coefficients :func:`fit_second_order` solves for (its normal equations are that squared, in
float64: 512 MiB); 49 patches and 30 tokens need 3,161 (the authors fit this model up to 64 patches)."""


@dataclass(frozen=True)
class SampledGame:
    """The game on every pair of sampled coalitions: ``image_coalitions`` (m_i, patches) and
    ``text_coalitions`` (m_t, text players) boolean with their regression weights (m_i,), (m_t,) from
    :func:`sample_coalitions`, and ``values`` (m_i, m_t) from :meth:`FIxLIP.coalition_values`."""

    image_coalitions: np.ndarray
    image_weights: np.ndarray
    text_coalitions: np.ndarray
    text_weights: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class SecondOrderFit:
    """The coefficients of v ≈ β₀ + Σ βᵢ sᵢ + Σ βⱼ tⱼ + Σ βᵢᵢ' sᵢ sᵢ' + Σ βⱼⱼ' tⱼ tⱼ' + Σ βᵢⱼ sᵢ tⱼ: the
    intercept, first-order terms per patch and per token, and the symmetric pair matrices (zero
    diagonal): ``cross`` (patches, tokens), ``image`` (patches, patches), ``text`` (tokens, tokens); the
    last two None for the cross-modal model, which has no within-modality terms."""

    intercept: float
    image_first: np.ndarray
    text_first: np.ndarray
    cross: np.ndarray
    image: np.ndarray | None = None
    text: np.ndarray | None = None


def fit_cross_modal(game: SampledGame) -> SecondOrderFit:
    """The cross-modal model v ≈ β₀ + Σ βᵢ sᵢ + Σ βⱼ tⱼ + Σ βᵢⱼ sᵢ tⱼ fitted to the game's values:
    its basis is the Kronecker product of (1, sᵢ) and (1, tⱼ), so β = P_i Y P_tᵀ with one
    :func:`fit_projection` per modality."""
    beta = (
        fit_projection(game.image_coalitions, game.image_weights)
        @ game.values
        @ fit_projection(game.text_coalitions, game.text_weights).T
    )
    return SecondOrderFit(float(beta[0, 0]), beta[1:, 0], beta[0, 1:], beta[1:, 1:])


def pair_design(coalitions: np.ndarray) -> np.ndarray:
    """(m, 1 + n + n(n−1)/2): 1, each sᵢ, then each product sₐ s_b (a < b, in ``np.triu_indices`` order)."""
    x = coalitions.astype(np.float64)
    a, b = np.triu_indices(x.shape[1], k=1)
    return np.hstack([np.ones((len(x), 1)), x, x[:, a] * x[:, b]])


def check_second_order(n_image: int, n_text: int) -> None:
    """A one-line ValueError when the full second-order model of n_image + n_text players has more than
    :data:`MAX_SECOND_ORDER_TERMS` coefficients (checked before any game value is computed)."""
    terms = (
        1 + n_image + n_text + n_image * (n_image - 1) // 2 + n_text * (n_text - 1) // 2 + n_image * n_text
    )
    if terms > MAX_SECOND_ORDER_TERMS:
        raise ValueError(
            f"within-modality interactions of {n_image} patches and {n_text} tokens need {terms} "
            f"coefficients (at most {MAX_SECOND_ORDER_TERMS}): use a model with fewer patches"
        )


def fit_second_order(game: SampledGame) -> SecondOrderFit:
    """The weighted least-squares fit of the full second-order model (every pair of players, within
    and across modalities: the authors' model when they do not restrict it to cross-modal pairs) to
    the game's values on every pair of coalitions, weighted by the product of the two modalities'
    weights; minimum-norm where the coalitions do not determine every coefficient.

    Each term is an image function times a text function (1, sᵢ, sₐ s_b times 1, tⱼ, tₐ t_b), so the
    normal equations are the entries of the Kronecker product of the two modalities' small Gram
    matrices that belong to the model, and its right-hand side Aᵀ W_i Y W_t B: the m_i · m_t design rows
    are never formed. At a budget that covers all coalitions, every pair coefficient is that pair's
    weighted Banzhaf interaction (the product-weighted projection's top-order terms). The cross terms
    equal :func:`fit_cross_modal`'s at any budget: centred in each modality under the product weights,
    sᵢ tⱼ is orthogonal to every term of one modality alone.
    """
    n_image, n_text = game.image_coalitions.shape[1], game.text_coalitions.shape[1]
    check_second_order(n_image, n_text)
    image_pairs, text_pairs = n_image * (n_image - 1) // 2, n_text * (n_text - 1) // 2
    design_i, design_t = pair_design(game.image_coalitions), pair_design(game.text_coalitions)
    weighted_i, weighted_t = design_i.T * game.image_weights, design_t.T * game.text_weights
    gram_i, gram_t = weighted_i @ design_i, weighted_t @ design_t
    right = weighted_i @ game.values @ weighted_t.T
    # the model's terms as (image function, text function) column pairs
    first_i, pairs_i = np.arange(1, 1 + n_image), np.arange(1 + n_image, 1 + n_image + image_pairs)
    first_t, pairs_t = np.arange(1, 1 + n_text), np.arange(1 + n_text, 1 + n_text + text_pairs)
    zeros = np.zeros
    f = np.concatenate([[0], first_i, pairs_i, zeros(n_text + text_pairs, int), np.repeat(first_i, n_text)])
    g = np.concatenate([[0], zeros(n_image + image_pairs, int), first_t, pairs_t, np.tile(first_t, n_image)])
    gram = gram_i[np.ix_(f, f)]
    gram *= gram_t[np.ix_(g, g)]
    beta = np.linalg.lstsq(gram, right[f, g], rcond=None)[0]
    ends = np.cumsum([1, n_image, image_pairs, n_text, text_pairs])
    intercept, image_first, image_flat, text_first, text_flat, cross = np.split(beta, ends)
    return SecondOrderFit(
        float(intercept[0]),
        image_first,
        text_first,
        cross.reshape(n_image, n_text),
        symmetric(image_flat, n_image),
        symmetric(text_flat, n_text),
    )


def symmetric(upper: np.ndarray, n: int) -> np.ndarray:
    """(n, n) symmetric matrix, zero diagonal, from its upper triangle in ``np.triu_indices`` order."""
    out = np.zeros((n, n))
    a, b = np.triu_indices(n, k=1)
    out[a, b] = upper
    out[b, a] = upper
    return out


def sample_coalitions(n: int, budget: int, p: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct coalitions of n players (m, n) bool and their regression weights (m,): shapiq's sampler
    with sizes drawn from Binomial(n, p) (sizes it can afford are enumerated whole, the empty and full
    coalitions always), weights the Banzhaf kernel times the sampler's importance correction."""
    from scipy.special import binom
    from shapiq.approximator.sampling import CoalitionSampler

    sizes = np.arange(n + 1)
    sampler = CoalitionSampler(n, binom(n, sizes) * banzhaf_kernel(sizes, n, p), random_state=seed)
    sampler.sample(min(budget, 2**n))
    coalitions = sampler.coalitions_matrix.astype(bool)
    weights = banzhaf_kernel(coalitions.sum(axis=1), n, p) * sampler.sampling_adjustment_weights
    return coalitions, weights


@dataclass
class _Pair:
    """A pair ready for its game: the loaded image, the caption as given and encoded, the image input
    described for the result."""

    image: Image.Image
    caption: str
    encoded: EncodedCaption
    source: str


class FIxLIP(PairMethod[_Pair, FIxLIPInteractions]):
    """Token×patch weighted Banzhaf interactions (FIxLIP) for image–caption pairs, from masked forwards.

    Args:
        model: an adapter from :func:`clipalign.load_model` with a patch grid (HF CLIP).
        settings: :class:`FIxLIPSettings`; keyword arguments change single fields, e.g. ``budget=2**14``.

    Example:
        >>> from clipalign.testing import tiny_model, example_image
        >>> method = FIxLIP(tiny_model(layers=2, image_size=16), budget=128, text_budget=8)
        >>> [result] = method.attribute([example_image()], ["a red ball"])
        >>> result.matrix.shape  # caption tokens with SOT and EOT × 2×2 patches
        (5, 4)
        >>> (result.image_coalitions, result.text_coalitions)  # all 2**4 and 2**3 coalitions
        (16, 8)
    """

    def __init__(self, model: ClipAdapter, *, settings: FIxLIPSettings | None = None, **changes: Any) -> None:
        if not isinstance(model, InteractionAdapter):
            raise ValueError(f"{model.name}: its adapter has no patch grid (InteractionAdapter)")
        self.settings = (settings or FIxLIPSettings()).replace(**changes)
        self.model: InteractionAdapter = model
        self.scale, self.bias = 1.0, 0.0
        if self.settings.value == "logit":
            hf = getattr(model, "model", None)
            logit_scale = getattr(hf, "logit_scale", None)
            if not isinstance(logit_scale, torch.Tensor):
                raise ValueError(f"{model.name}: no logit_scale to compute logits; use value='cosine'")
            self.scale = float(logit_scale.exp())
            logit_bias = getattr(hf, "logit_bias", None)  # SigLIP's (its sigmoid's argument); CLIP has none
            if isinstance(logit_bias, torch.Tensor):
                self.bias = float(logit_bias)

    def _prepare(self, index: int, image: ImageInput, caption: str) -> _Pair:
        """Load the image and encode the caption: what can fail for one pair before its game is played."""
        pil = load_image(image)
        [encoded] = self.model.encode_captions([caption], self.settings.template)
        return _Pair(pil, caption, encoded, describe_source(image))

    @torch.no_grad()
    def _compute(self, group: list[_Pair]) -> list[FIxLIPInteractions]:
        """Each pair's game and fit, one pair after the other (a pair's coalitions fill the batches)."""
        return [self._pair(pair) for pair in group]

    def text_players(self, encoded: EncodedCaption) -> list[int]:
        """Token positions that are players: the text's own tokens (template and caption), not those the
        adapter adds (CLIP: SOT and EOT; SigLIP: ``</s>`` and the padding after it), as the authors count
        them. An added token has no word and the empty span (0, 0); a text token has a word, or a span."""
        return [
            i
            for i, (span, word) in enumerate(zip(encoded.token_spans, encoded.token_word, strict=True))
            if word >= 0 or span != (0, 0)
        ]

    @torch.no_grad()
    def coalition_values(
        self,
        image: Image.Image,
        encoded: EncodedCaption,
        image_coalitions: np.ndarray,
        text_coalitions: np.ndarray,
    ) -> np.ndarray:
        """The game on every pair of coalitions: (m_i, m_t) float64 values of the masked pairs, with
        ``image_coalitions`` (m_i, patches) and ``text_coalitions`` (m_t, players) boolean."""
        images = self._image_units(self.model.preprocess([image]), torch.as_tensor(image_coalitions))
        texts = self._text_units(encoded, torch.as_tensor(text_coalitions))
        return self.scale * (images @ texts.T).cpu().numpy() + self.bias

    def _image_units(self, pixels: torch.Tensor, coalitions: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings (m, D) float64 of ``pixels`` (1, 3, H, W) masked by each coalition."""
        grid = self.model.patch_grid
        out = []
        for batch in coalitions.split(self.settings.batch_size):
            mask = patch_pixel_mask(batch, grid, (pixels.shape[2], pixels.shape[3])).to(pixels)
            masked = pixels * mask + self.settings.image_fill * (1 - mask)
            out.append(torch.nn.functional.normalize(self.model.image_embeddings(masked).double(), dim=-1))
        return torch.cat(out)

    def _text_units(self, encoded: EncodedCaption, coalitions: torch.Tensor) -> torch.Tensor:
        """Unit text embeddings (m, D) float64 of the caption masked by each coalition."""
        model, device = self.model, self.model.device
        players = torch.tensor(self.text_players(encoded), dtype=torch.long)
        ids = torch.tensor(encoded.input_ids, dtype=torch.long)
        filler, _ = model.text_reference_token("exclip")
        attention = self.settings.text_mask == "attention"
        out = []
        for batch in coalitions.bool().split(self.settings.batch_size):
            batch_ids = ids.repeat(len(batch), 1)
            mask = torch.ones_like(batch_ids)
            if attention:
                mask[:, players] = batch.long()
            else:
                batch_ids[:, players] = torch.where(batch, batch_ids[:, players], filler)
            pool = torch.full((len(batch),), encoded.pool_index, dtype=torch.long)
            inputs = TextInputs(batch_ids.to(device), mask.to(device), pool.to(device))
            # asking for every block's map makes every block apply the attention mask
            embeds = model.text_embeddings(
                inputs, output_attentions=model.num_text_layers if attention else False
            )
            out.append(torch.nn.functional.normalize(embeds.embeds.double(), dim=-1))
        return torch.cat(out)

    def _pair(self, pair: _Pair) -> FIxLIPInteractions:
        s, model = self.settings, self.model
        pil, enc = pair.image, pair.encoded
        players = self.text_players(enc)
        rows, cols = model.patch_grid
        n_image, n_text = rows * cols, len(players)
        if s.within:
            check_second_order(n_image, n_text)
        text_coalitions, text_weights = sample_coalitions(n_text, min(s.text_budget, 2**n_text), s.p, s.seed)
        image_budget = max(2, s.budget // len(text_coalitions))
        image_coalitions, image_weights = sample_coalitions(n_image, image_budget, s.p, s.seed)
        values = self.coalition_values(pil, enc, image_coalitions, text_coalitions)
        game = SampledGame(image_coalitions, image_weights, text_coalitions, text_weights, values)
        fit = fit_second_order(game) if s.within else fit_cross_modal(game)
        length = len(enc.input_ids)
        matrix = np.zeros((length, n_image))
        matrix[players] = fit.cross.T
        token_values = np.zeros(length)
        token_values[players] = fit.text_first
        within = None
        if fit.text is not None and fit.image is not None:
            tokens = np.zeros((length, length))
            tokens[np.ix_(players, players)] = fit.text
            within = WithinModality(tokens, fit.image)
        image_full, text_full = (image_coalitions.sum(1) == n_image), (text_coalitions.sum(1) == n_text)
        image_none, text_none = ~image_coalitions.any(1), ~text_coalitions.any(1)
        terms = [float(values[a][:, b][0, 0]) for a, b in ((image_full, text_full), (image_none, text_full))]
        terms += [float(values[a][:, b][0, 0]) for a, b in ((image_full, text_none), (image_none, text_none))]
        target = terms[0] - terms[1] - terms[2] + terms[3]
        total = float(matrix.sum())
        words = [
            TokenGroup(w.text, w.start, w.end, [int(t) for t in np.flatnonzero(enc.token_word == i)])
            for i, w in enumerate(enc.words)
        ]
        return FIxLIPInteractions(
            caption=pair.caption,
            tokens=list(enc.tokens),
            words=words,
            grid=(rows, cols),
            matrix=matrix,
            cls=np.zeros(len(enc.input_ids)),
            completeness=Completeness(total, target, total - target, *terms),
            geometry=model.image_geometry(*pil.size),
            text_block=0,
            image_block=0,
            steps=values.size,
            rule="banzhaf",
            normalize=s.value,
            source=pair.source,
            within=within,
            token_values=token_values,
            patch_values=fit.image_first,
            baseline=fit.intercept,
            image_coalitions=len(image_coalitions),
            text_coalitions=len(text_coalitions),
            p=s.p,
            seed=s.seed,
        )
