"""Options and error handling shared by every command."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console

from clipalign.attribution import CLIP4DM
from clipalign.models import DEFAULT_MODEL, ClipAdapter, load_model
from clipalign.results import WordAlignment
from clipalign.text.alignment import DEFAULT_TEMPLATE

stderr = Console(stderr=True)


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    """IMAGE CAPTION, --json, and the model and word-attribution options."""
    parser.add_argument("image", help="image file")
    parser.add_argument("caption", help="caption to check")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_model_options(parser)
    add_word_options(parser)


def add_model_options(parser: argparse.ArgumentParser, template_default: str = DEFAULT_TEMPLATE) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"Hub name or local directory of a CLIP checkpoint (default {DEFAULT_MODEL})",
    )
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    group.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="compute dtype")
    group.add_argument("--template", default=template_default, help="prefix read before the caption")


def add_word_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("word attribution (CLIP4DM)")
    group.add_argument("--layers", type=int, default=3, help="last text layers averaged (default 3)")
    group.add_argument("--epsilon", type=float, default=-5e-5, help="misalignment threshold (default -5e-5)")
    group.add_argument(
        "--mode", default="threshold", choices=["threshold", "most_negative"], help="how words are flagged"
    )


def open_model(args: argparse.Namespace) -> ClipAdapter:
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hub_logging.set_verbosity_error()
    return load_model(args.model, device=args.device, dtype=args.dtype)


def attribute_pair(args: argparse.Namespace) -> tuple[ClipAdapter, WordAlignment]:
    """Load the model and score the one (image, caption) pair named on the command line."""
    model = open_model(args)
    attributor = CLIP4DM(model, layers=args.layers, template=args.template, epsilon=args.epsilon)
    [result] = attributor.attribute([args.image], [args.caption], mode=args.mode, on_error="raise")
    assert isinstance(result, WordAlignment)
    return model, result


def print_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


@contextmanager
def warnings_to_stderr() -> Iterator[None]:
    """Show library warnings (e.g. a truncated caption) as one readable line each on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if issubclass(w.category, UserWarning) and w.filename and "clipalign" in w.filename:
            stderr.print(f"[yellow]warning:[/] {w.message}", highlight=False, soft_wrap=True)


def run_guarded(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command with warnings on stderr; expected failures become one line and exit status 1."""
    from clipalign.images import ImageLoadError
    from clipalign.models import ModelLoadError
    from clipalign.text import CaptionError

    try:
        with warnings_to_stderr():
            return func(args)
    except (ModelLoadError, ImageLoadError, CaptionError, ValueError) as exc:
        stderr.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 1
