"""What a fine-tuning run is asked to do (light: no torch), so that ``clipalign finetune --help`` shows
the defaults without loading the training code."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from clipalign.settings import RUNTIME
from clipalign.text.alignment import DEFAULT_TEMPLATE


@dataclass(frozen=True, kw_only=True)
class FinetuneSettings:
    """How to fine-tune; ``to_dict()`` (all but the ``RUNTIME`` fields) must match for a run to resume."""

    epochs: int = 1
    max_steps: int | None = None
    """Stop after this many optimizer steps (the schedule spans them) even if epochs remain."""
    batch_size: int = 64
    """Pairs per micro-batch, all ranks together: the contrastive batch (the paper's 64)."""
    accumulate: int = 1
    """Micro-batches whose gradients are summed into one optimizer step."""
    lr: float = 1e-5
    weight_decay: float = 1e-4
    """AdamW's decoupled weight decay (the paper's 1e-4), on weight matrices and embeddings only."""
    warmup: int = 0
    """Steps of linear learning-rate warm-up from 0."""
    min_lr: float = 0.0
    """The cosine decay ends at this fraction of ``lr``."""
    l2_init: float = 0.0
    """λ of the penalty λ·Σ‖θ − θ₀‖² towards the starting weights (0: none)."""
    max_grad_norm: float | None = None
    freeze: tuple[str, ...] = ()
    """``vision``, ``text``, ``vision:N``, ``text:N``, ``logit`` (see :mod:`clipalign.training.towers`)."""
    template: str = DEFAULT_TEMPLATE
    """Read before every caption, as the scoring commands read it."""
    seed: int = 0
    shuffle_buffer: int = 10_000
    """Pairs held to shuffle the stream (the whole epoch when it has fewer)."""
    save_every: int = field(default=500, metadata=RUNTIME)
    keep: int = field(default=2, metadata=RUNTIME)
    eval_every: int | None = field(default=None, metadata=RUNTIME)
    workers: int = field(default=2, metadata=RUNTIME)
    progress: bool = field(default=True, metadata=RUNTIME)

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "accumulate": self.accumulate}
        positive |= {"save_every": self.save_every, "keep": self.keep, "shuffle_buffer": self.shuffle_buffer}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2: a contrastive batch needs negatives")
        for name in ("lr", "weight_decay", "l2_init", "warmup", "min_lr"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        for name in ("max_steps", "eval_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")

    def to_dict(self) -> dict[str, Any]:
        """The settings that decide the weights."""
        values = asdict(self)
        return {f.name: values[f.name] for f in fields(self) if not f.metadata.get("runtime")} | {
            "freeze": list(self.freeze)
        }
