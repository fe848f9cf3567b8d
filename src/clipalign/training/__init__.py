"""Fine-tuning a CLIP-family model on image–caption pairs (``clipalign finetune``).

In-domain contrastive training that stays close to where it started (an L2 pull to the initial weights,
as exCLIP, arXiv 2408.14153, fine-tunes for grounding): :func:`finetune` with :class:`FinetuneSettings`
on a :class:`DataSpec` (the inputs ``clipalign scan`` reads), resumable from its checkpoints, evaluated
during training through ``clipalign eval``'s benchmarks (:class:`Evaluation`), data-parallel under
``torchrun``. Names load on first use, so :class:`FinetuneSettings` needs no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipalign._lazy import lazy_exports

if TYPE_CHECKING:
    from clipalign.training.data import DataSpec, Skipped
    from clipalign.training.loop import FinetuneResult, finetune
    from clipalign.training.progress import Evaluation
    from clipalign.training.settings import FinetuneSettings

_EXPORTS: dict[str, str] = {
    "DataSpec": "clipalign.training.data",
    "Evaluation": "clipalign.training.progress",
    "FinetuneResult": "clipalign.training.loop",
    "FinetuneSettings": "clipalign.training.settings",
    "Skipped": "clipalign.training.data",
    "finetune": "clipalign.training.loop",
}
"""Public name → the module that defines it, imported when the name is first read."""

__all__ = ["DataSpec", "Evaluation", "FinetuneResult", "FinetuneSettings", "Skipped", "finetune"]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
