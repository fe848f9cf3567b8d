"""Checks that a checkpoint is complete and that its weights are the ones its architecture needs.

Transformers loads a broken folder without complaint: missing tokenizer files give a two-token vocabulary,
renamed or missing tensors are initialised at random, and the only sign is a log report that the CLI
hides. Attribution scores from such a model are garbage, so each of these is an error here.
"""

from __future__ import annotations

import pickle
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from transformers import PreTrainedModel

from clipalign.models.base import ModelLoadError, model_load_error

ModelT = TypeVar("ModelT", bound=PreTrainedModel)


class CheckpointError(ModelLoadError):
    """The checkpoint's files were found but are incomplete, corrupt or do not fit together: asking the Hub
    again would not help."""


TOKENIZER_FILES: tuple[tuple[str, ...], ...] = (
    ("tokenizer.json",),
    ("vocab.json", "merges.txt"),
    ("spiece.model",),
)
"""Any group is enough: a fast tokenizer's ``tokenizer.json``, CLIP's BPE files, or SigLIP's SentencePiece
model (rebuilt as a fast tokenizer by the SigLIP adapter)."""
PREPROCESSOR_FILE = "preprocessor_config.json"
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_SHOWN = 3
"""How many keys an error message names before it gives the count only."""


def check_local_files(name: str, allow_pickle: bool) -> None:
    """When ``name`` is a local directory: tokenizer and image processor files present, weights in
    safetensors unless ``allow_pickle``. Runs before anything is loaded, so a broken folder fails at once."""
    path = Path(name).expanduser()
    if not path.is_dir():
        return
    if not any(all((path / f).is_file() for f in group) for group in TOKENIZER_FILES):
        raise CheckpointError(
            f"no tokenizer files in {path} (tokenizer.json, vocab.json/merges.txt or spiece.model)"
        )
    if not (path / PREPROCESSOR_FILE).is_file():
        raise CheckpointError(f"no {PREPROCESSOR_FILE} in {path}: the image preprocessing is unknown")
    has_safe = any((path / f).is_file() for f in SAFE_WEIGHTS)
    pickles = [f for f in PICKLE_WEIGHTS if (path / f).is_file()]
    if pickles and not has_safe and not allow_pickle:
        raise CheckpointError(
            f"{path} has pickle weights only ({pickles[0]}), and a pickle can run code when loaded: "
            "convert them to model.safetensors, or pass allow_pickle=True (--allow-pickle) if you trust "
            "their source"
        )


def check_tokenizer_size(name: str, tokens: int, embeddings: int) -> None:
    """The tokenizer must fit the model's token embeddings and cover most of them: ids past the table
    fail or wrap, and a tokenizer built without its files (e.g. an incomplete Hub cache) has two tokens."""
    if tokens > embeddings or tokens < embeddings // 2:
        raise CheckpointError(
            f"the tokenizer of {name} has {tokens} tokens for a model with {embeddings} token embeddings: "
            "its tokenizer files are missing or belong to another model"
        )


def _some(keys: Iterable[str]) -> str:
    """``n (a, b, c, ...)``: the count and the first few keys, sorted, for a one-line message."""
    ordered = sorted(keys)
    shown = ", ".join(ordered[:_SHOWN]) + (", ..." if len(ordered) > _SHOWN else "")
    return f"{len(ordered)} ({shown})"


def check_loading_info(name: str, info: dict[str, Collection[object]]) -> None:
    """Raise unless every weight of the architecture came from the checkpoint with its shape.

    ``info`` is what ``from_pretrained(..., output_loading_info=True)`` returns; transformers has already
    dropped the keys a model declares harmless (e.g. old ``position_ids`` buffers).
    """
    problems = []
    if missing := info.get("missing_keys", ()):
        problems.append(f"missing {_some(str(k) for k in missing)}")
    if unexpected := info.get("unexpected_keys", ()):
        problems.append(f"unexpected {_some(str(k) for k in unexpected)}")
    if mismatched := info.get("mismatched_keys", ()):
        shapes = sorted(f"{k[0]}: {tuple(k[1])} vs {tuple(k[2])}" for k in mismatched if isinstance(k, tuple))
        problems.append(f"wrong shape (checkpoint vs config) {_some(shapes)}")
    if errors := info.get("error_msgs", ()):
        problems.append(f"errors {_some(str(e).splitlines()[0] for e in errors)}")
    if problems:
        raise CheckpointError(
            f"the weights in {name} do not match its config.json: "
            + "; ".join(problems)
            + " — the checkpoint is broken or was saved for another architecture"
        )


def load_checkpoint(
    model_class: type[ModelT], name: str, dtype: torch.dtype, local_files_only: bool, allow_pickle: bool
) -> ModelT:
    """``model_class.from_pretrained`` with eager attention, refused unless its weights pass
    :func:`check_loading_info`.

    Safetensors only unless ``allow_pickle`` (then safetensors first, else a ``.bin`` read weights-only).
    Shape mismatches come back in the loading info instead of as an error pointing to a hidden log
    report, and a corrupt or truncated weights file is a one-line :class:`CheckpointError`.
    """
    try:
        # output_loading_info=True makes it return (model, info), which its annotation does not say
        loaded: Any = model_class.from_pretrained(
            name,
            attn_implementation="eager",
            dtype=dtype,
            local_files_only=local_files_only,
            use_safetensors=None if allow_pickle else True,
            ignore_mismatched_sizes=True,
            output_loading_info=True,
        )
    except (OSError, ValueError) as exc:
        raise model_load_error(name, exc, offline_hint=True) from exc
    except (SafetensorError, pickle.UnpicklingError, EOFError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot load model {name!r}: its weights file is corrupt or truncated ({reason})"
        ) from exc
    model: ModelT = loaded[0]
    check_loading_info(name, loaded[1])
    check_finite(name, model)
    return model


def check_finite(name: str, model: torch.nn.Module) -> None:
    """Raise if a parameter holds NaN or inf: safetensors has no checksum, so damaged tensor bytes load
    without error, and this catches the damage that shows (flips that stay finite cannot be told apart)."""
    bad = [n for n, p in model.named_parameters() if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:
        raise CheckpointError(
            f"the weights in {name} hold NaN or inf values in {_some(bad)}: the weights file is corrupt"
        )
