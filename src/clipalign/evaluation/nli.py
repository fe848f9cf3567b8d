"""Entailment probability of a prediction given the ground truth (SeeTRUE-Feedback's NLI metric).

The CLIP4DM authors' protocol: premise = the row's ``caption_misalignment`` stripped and lower-cased,
hypothesis = the predicted misaligned spans, lower-cased, without "." and ",", joined by ", " (see
:mod:`clipalign.evaluation.authors`); neutral is dropped and the softmax over (contradiction,
entailment) gives P(entailment); an empty hypothesis scores 0. The model is any HF sequence classifier
with ``entailment`` and ``contradiction`` labels (default ``facebook/bart-large-mnli``, theirs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from clipalign.models.base import model_load_error

DEFAULT_NLI_MODEL = "facebook/bart-large-mnli"


def _label_index(config: object, name: str) -> int:
    for label, index in getattr(config, "label2id", {}).items():
        if label.lower() == name:
            return int(index)
    raise ValueError(f"the NLI model has no {name!r} label (labels: {getattr(config, 'label2id', {})})")


class NLIScorer:
    """P(entailment | premise) for batches of (premise, hypothesis) pairs."""

    def __init__(
        self, model: str = DEFAULT_NLI_MODEL, device: str | None = None, batch_size: int = 16
    ) -> None:
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForSequenceClassification.from_pretrained(model).eval()
        except (OSError, ValueError) as exc:
            raise model_load_error(model, exc) from exc
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.batch_size = batch_size
        config = self.model.config
        self.columns = [_label_index(config, "contradiction"), _label_index(config, "entailment")]

    @torch.no_grad()
    def __call__(self, premises: Sequence[str], hypotheses: Sequence[str]) -> list[float]:
        scores = [0.0] * len(premises)
        todo = [i for i, h in enumerate(hypotheses) if h.strip()]
        for lo in range(0, len(todo), self.batch_size):
            rows = todo[lo : lo + self.batch_size]
            enc = self.tokenizer(
                [premises[i] for i in rows],
                [hypotheses[i] for i in rows],
                return_tensors="pt",
                padding=True,
                truncation="only_first",
            ).to(self.device)
            logits = self.model(**enc).logits[:, self.columns]
            for i, p in zip(rows, logits.float().softmax(dim=-1)[:, 1].tolist(), strict=True):
                scores[i] = p
        return scores
