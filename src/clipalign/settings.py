"""Settings objects, one per concern, built once (by the CLI or the caller) and passed down.

Every default lives here. ``to_dict()`` gives the settings that decide the numbers a run produces: it
is what the evaluation cache is keyed by and what a scan's Parquet metadata records, so a resumed run
is refused when they differ. Fields marked ``RUNTIME`` (device, batch size, chunk, workers...) change
speed or memory only and are left out of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, get_args

from clipalign.text.alignment import DEFAULT_TEMPLATE, WordUnit

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
"""The checkpoint used when none is named (Hub name; a local directory works too)."""

Mode = Literal["threshold", "most_negative"]
DType = Literal["fp32", "fp16", "bf16", "auto"]
"""Compute dtype; ``auto`` is bf16 on a CUDA device that supports it, else fp32."""
Rule = Literal["gauss", "riemann"]
Normalize = Literal["cosine", "exclip"]
TextReference = Literal["exclip", "pad"]

RUNTIME = {"runtime": True}
"""Field metadata: the setting changes speed or memory, not results (left out of ``to_dict()``)."""

LEGACY_DEFAULTS: dict[str, Any] = {
    "mode": "threshold",
    "text_block": -1,
    "image_block": -1,
    "rule": "gauss",
    "normalize": "cosine",
    "unit": "whitespace",
}
"""Settings that clipalign 0.1.0 output implied without recording them: an old cache or Parquet part
that lacks one of these keys was written with this value (see :func:`comparable`)."""


def comparable(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` without the entries equal to their :data:`LEGACY_DEFAULTS` value.

    Comparing (or hashing) this form lets output written before a setting was recorded match a run
    that uses that setting's old implicit value, and nothing else.
    """
    return {k: v for k, v in settings.items() if k not in LEGACY_DEFAULTS or LEGACY_DEFAULTS[k] != v}


def _result_fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj) if not f.metadata.get("runtime")}


def _check_choice(name: str, value: object, kind: Any) -> None:
    choices = get_args(kind)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Which checkpoint to load and how: Hub name or local directory, device, compute dtype, formats."""

    name: str = DEFAULT_MODEL
    device: str | None = field(default=None, metadata=RUNTIME)
    dtype: DType = "fp32"
    allow_pickle: bool = field(default=False, metadata=RUNTIME)
    """Also accept pickle weights (``pytorch_model.bin``, read weights-only); safetensors otherwise."""

    def __post_init__(self) -> None:
        _check_choice("dtype", self.dtype, DType)

    def to_dict(self) -> dict[str, Any]:
        """``{"model": name, "dtype": dtype}``: the device changes where it runs, not the numbers."""
        return {"model": self.name, "dtype": self.dtype}


@dataclass(frozen=True, kw_only=True)
class WordSettings:
    """CLIP4DM word-level misalignment.

    Attributes:
        layers: how many of the last text layers are averaged (the paper's default is 3).
        epsilon: words scoring below ε are misaligned (also defines F-CLIPScore).
        template: prefix read before every caption; its words are never reported.
        mode: ``threshold`` marks every word below ε; ``most_negative`` the single lowest word.
        unit: the word unit (:data:`~clipalign.text.alignment.WordUnit`): ``clip4dm``, the authors'
            (whitespace, and every "." and "," a word of its own), or ``whitespace`` chunks ("skirt.").
        batch_size: pairs per forward/backward pass.

    Example:
        >>> settings = WordSettings(layers=2)
        >>> settings.to_dict()  # no batch_size: it changes speed, not scores
        {'layers': 2, 'epsilon': -5e-05, 'template': 'A photo depicts ', 'mode': 'threshold',
         'unit': 'clip4dm'}
        >>> settings.replace(mode="most_negative").mode
        'most_negative'
    """

    layers: int = 3
    epsilon: float = -5e-5
    template: str = DEFAULT_TEMPLATE
    mode: Mode = "threshold"
    unit: WordUnit = "clip4dm"
    batch_size: int = field(default=32, metadata=RUNTIME)

    def __post_init__(self) -> None:
        _check_choice("mode", self.mode, Mode)
        _check_choice("unit", self.unit, WordUnit)
        if not math.isfinite(self.epsilon):
            raise ValueError(f"epsilon must be a finite number, got {self.epsilon}")
        if self.layers < 1:
            raise ValueError(f"layers must be ≥ 1, got {self.layers}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")

    def to_dict(self) -> dict[str, Any]:
        """``layers``, ``epsilon``, ``template``, ``mode``, ``unit``: what decides the scores and flags."""
        return _result_fields(self)

    def replace(self, **changes: Any) -> WordSettings:
        """A copy with some settings changed (validated again)."""
        return replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class InteractionSettings:
    """Second-order token×patch interactions (integrated Jacobians).

    Attributes:
        text_block / image_block: the block whose input is attributed, 0-based; −1 = the last block.
        steps: quadrature nodes N per path integral.
        rule: ``gauss`` (Gauss–Legendre) or ``riemann`` (right Riemann sum, as exCLIP).
        normalize: ``cosine`` attributes the cosine; ``exclip`` divides the raw embeddings by the
            input's norms held constant, as the exCLIP code does.
        template: prefix read before the caption (none by default, as in the paper).
        text_reference: the caption-free text input r_x: ``exclip`` is exCLIP's SOT, token id 0 (``!``),
            EOT, then id 0, whatever the tokenizer pads with; ``pad`` fills with the tokenizer's pad
            token instead (clipalign 0.1; for ``openai/*`` checkpoints that is EOT: SOT, EOT, EOT...).
        chunk: JVPs evaluated at once (lower it to save memory).
        batch_size: pairs computed together: their image states, image JVPs and (per caption length)
            text states and JVPs go through the model in shared calls. Like ``chunk``, it changes speed,
            not the numbers.
    """

    text_block: int = -1
    image_block: int = -1
    steps: int = 10
    rule: Rule = "gauss"
    normalize: Normalize = "cosine"
    template: str = ""
    text_reference: TextReference = "exclip"
    chunk: int = field(default=256, metadata=RUNTIME)
    batch_size: int = field(default=8, metadata=RUNTIME)

    def __post_init__(self) -> None:
        _check_choice("rule", self.rule, Rule)
        _check_choice("normalize", self.normalize, Normalize)
        _check_choice("text_reference", self.text_reference, TextReference)
        if self.steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {self.steps}")
        if self.chunk < 1:
            raise ValueError(f"chunk must be ≥ 1, got {self.chunk}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")

    def to_dict(self) -> dict[str, Any]:
        """Everything but ``chunk`` and ``batch_size``: blocks, steps, rule, normalize, template, text
        reference."""
        return _result_fields(self)

    def replace(self, **changes: Any) -> InteractionSettings:
        """A copy with some settings changed (validated again)."""
        return replace(self, **changes)

    @classmethod
    def exclip(cls, **changes: Any) -> InteractionSettings:
        """exCLIP's settings (``Explainer.explain`` defaults): N = 10 right-Riemann nodes, its norm
        division, its text reference, the last block of both encoders (their block 11 of ViT-B's 12).

        >>> InteractionSettings.exclip(steps=20).to_dict()["rule"]
        'riemann'
        """
        exclip: dict[str, Any] = {
            "text_block": -1,
            "image_block": -1,
            "steps": 10,
            "rule": "riemann",
            "normalize": "exclip",
            "text_reference": "exclip",
        }
        return cls(**{**exclip, **changes})


@dataclass(frozen=True, kw_only=True)
class ScanSettings:
    """How a dataset scan runs: batch and part sizes, decoding threads, output handling.

    Attributes:
        part_size: rows per Parquet part, the resume granularity.
        workers: threads that decode and preprocess images (per actor with Ray).
        overwrite: discard earlier output in ``--out`` and start again.
        progress: show a progress bar.
        jpeg_draft: decode JPEGs at a reduced scale (PIL's draft mode) that keeps both sides at least twice
            the model input's; faster, but the pixels, so the scores, change slightly: off by default.
    """

    part_size: int = 4096
    workers: int = 4
    overwrite: bool = False
    progress: bool = True
    jpeg_draft: bool = False

    def __post_init__(self) -> None:
        if self.part_size < 1:
            raise ValueError(f"part size must be ≥ 1, got {self.part_size}")
        if self.workers < 1:
            raise ValueError(f"workers must be ≥ 1, got {self.workers}")


@dataclass(frozen=True, kw_only=True)
class RaySettings:
    """Where ``scan --engine ray`` runs.

    Attributes:
        num_gpus: total GPUs, one model actor per GPU; 0 for ``concurrency`` CPU actors.
        num_cpus: CPUs reserved per actor (also its torch thread count).
        concurrency: CPU actors when ``num_gpus`` is 0.
        address: cluster to join (``auto``, ``ray://head:10001``); None uses ``RAY_ADDRESS``, a cluster
            started on this machine, or a new local instance.
    """

    num_gpus: int = 0
    num_cpus: float = 1.0
    concurrency: int = 1
    address: str | None = None

    def __post_init__(self) -> None:
        if self.num_gpus < 0 or self.concurrency < 1 or self.num_cpus <= 0:
            raise ValueError("--num-gpus must be ≥ 0, --concurrency ≥ 1 and --num-cpus > 0")
