"""Options and error handling shared by every command.

Imported at start-up by every command module, so it stays light: torch, transformers, PIL and the
attribution code are imported inside the functions that run a command, never at module level (so
``clipalign --help`` answers at once).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from rich.console import Console
from rich.markup import escape

from clipalign.models.errors import ModelLoadError
from clipalign.settings import (
    DType,
    InteractionSettings,
    Mode,
    ModelSpec,
    Normalize,
    Rule,
    TextReference,
    WordSettings,
)

if TYPE_CHECKING:
    from PIL import Image

    from clipalign.models.base import ClipAdapter
    from clipalign.results import WordAlignment

stderr = Console(stderr=True)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the help already names it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or action.default == []:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An argument parser whose help shows defaults (:class:`HelpFormatter`), for every subcommand."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    """IMAGE CAPTION, --json, and the model and word-attribution options."""
    parser.add_argument("image", help="image file")
    parser.add_argument("caption", help="caption to check")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_model_options(parser)
    add_word_options(parser)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --device, --dtype, --allow-pickle: what :func:`model_spec` reads."""
    default = ModelSpec()
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=default.name,
        help="Hub name or local directory of a CLIP-family checkpoint (`clipalign models` lists the "
        "supported families and the cached models), or 'synthetic': the small CLIP that ships with "
        f"clipalign and works offline (default: {default.name})",
    )
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    group.add_argument(
        "--dtype",
        default=default.dtype,
        choices=get_args(DType),
        help="compute dtype (auto: bf16 on a CUDA GPU that supports it, else fp32)",
    )
    group.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also load pickle weights (pytorch_model.bin, read weights-only); safetensors otherwise",
    )


def add_word_options(
    parser: argparse.ArgumentParser, *, epsilon_help: str | None = None, mode: bool = True
) -> None:
    """--layers, --epsilon, --template, --mode, --word-unit, --batch-size: what :func:`word_settings` reads.

    ``--epsilon`` defaults to None (:class:`WordSettings`'s default applies) so that a command can tell
    whether it was given; ``epsilon_help`` replaces its help text, ``mode=False`` leaves out --mode.
    """
    default = WordSettings()
    group = parser.add_argument_group("word attribution (CLIP4DM)")
    group.add_argument(
        "--layers",
        type=int,
        default=default.layers,
        help="last text layers averaged",
    )
    group.add_argument(
        "--epsilon",
        type=float,
        help=epsilon_help or f"misalignment threshold (default: {default.epsilon})",
    )
    group.add_argument(
        "--template",
        default=default.template,
        help=f"prefix read before the caption (default: {default.template!r})",
    )
    if mode:
        group.add_argument(
            "--mode", default=default.mode, choices=get_args(Mode), help="how words are flagged"
        )
    from typing import get_type_hints  # local: this module's imports are another change's

    group.add_argument(
        "--word-unit",
        default=default.unit,
        choices=get_args(get_type_hints(WordSettings)["unit"]),
        help=f'words scored: clip4dm = the authors\' (whitespace, "." and "," words of their own), '
        f'whitespace = chunks as written ("skirt.") (default {default.unit})',
    )
    group.add_argument(
        "--batch-size", type=int, default=default.batch_size, help="pairs per forward/backward"
    )


def add_quadrature_options(group: argparse._ArgumentGroup, *, given_only: bool = False) -> None:
    """--steps, --block (and per tower), --rule and --normalize. With ``given_only`` they have no
    default (None = not given), so that a preset (``eval --exclip``) fills what the user left out.

    ``--block``/``--text-block``/``--image-block`` also answer to their 0.1 names ``--layer``,
    ``--text-layer``, ``--image-layer``.
    """
    default = InteractionSettings()

    def unless_given_only(value: object) -> object:
        return None if given_only else value

    group.add_argument(
        "--steps",
        type=int,
        default=unless_given_only(default.steps),
        help=f"quadrature nodes N (default: {default.steps})",
    )
    group.add_argument(
        "--block",
        "--layer",
        type=int,
        default=unless_given_only(default.text_block),
        help=f"block attributed in both encoders, 0-based (default: {default.text_block}, the last)",
    )
    group.add_argument("--text-block", "--text-layer", type=int, help="text block, overrides --block")
    group.add_argument("--image-block", "--image-layer", type=int, help="vision block, overrides --block")
    group.add_argument(
        "--rule",
        default=unless_given_only(default.rule),
        choices=get_args(Rule),
        help=f"quadrature rule (default: {default.rule})",
    )
    group.add_argument(
        "--normalize",
        default=unless_given_only(default.normalize),
        choices=get_args(Normalize),
        help=f"quantity attributed (default: {default.normalize})",
    )


def blocks(args: argparse.Namespace) -> dict[str, Any]:
    """``text_block`` and ``image_block`` from --block and the per-tower options that override it (None
    only where --block has no default: ``add_quadrature_options(given_only=True)``)."""
    return {
        "text_block": args.block if args.text_block is None else args.text_block,
        "image_block": args.block if args.image_block is None else args.image_block,
    }


def add_interaction_options(parser: argparse.ArgumentParser) -> None:
    """The quadrature options, the text reference, the template and the chunk size."""
    default = InteractionSettings()
    group = parser.add_argument_group("interactions (second order)")
    add_quadrature_options(group)
    group.add_argument(
        "--text-reference",
        default=default.text_reference,
        choices=get_args(TextReference),
        help="text baseline: exclip = SOT, '!' (id 0), EOT, as exCLIP; pad = SOT then the pad token (0.1)",
    )
    group.add_argument(
        "--template",
        default=default.template,
        help=f"prefix read before the caption (default: {default.template!r}, none, as in the paper)",
    )
    group.add_argument(
        "--chunk", type=int, default=default.chunk, help="JVPs evaluated at once (lower = less memory)"
    )


def interaction_settings(args: argparse.Namespace) -> InteractionSettings:
    """The interaction options as one :class:`InteractionSettings`."""
    return InteractionSettings(
        **blocks(args),
        steps=args.steps,
        rule=args.rule,
        normalize=args.normalize,
        text_reference=args.text_reference,
        template=args.template,
        chunk=args.chunk,
    )


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The model options as one :class:`ModelSpec`, ``auto`` resolved for ``--device`` on this machine so
    that caches and scan metadata record the dtype that actually runs."""
    dtype = args.dtype
    if dtype == "auto":
        from clipalign.models.base import DTYPES, resolve_dtype

        resolved = resolve_dtype(dtype, args.device)
        dtype = next(name for name, value in DTYPES.items() if value == resolved)
    return ModelSpec(name=str(args.model), device=args.device, dtype=dtype, allow_pickle=args.allow_pickle)


def word_settings(args: argparse.Namespace, **defaults: Any) -> WordSettings:
    """The word options as one :class:`WordSettings`; ``defaults`` stand in for options not given."""
    given = {
        "layers": args.layers,
        "template": args.template,
        "unit": args.word_unit,
        "batch_size": args.batch_size,
    }
    if getattr(args, "mode", None) is not None:
        given["mode"] = args.mode
    if args.epsilon is not None:
        given["epsilon"] = args.epsilon
    return WordSettings(**{**defaults, **given})


def open_model(spec: ModelSpec) -> ClipAdapter:
    """Load the model quietly (no HF progress bars or info logs on the terminal)."""
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    from clipalign.models import load_model
    from clipalign.models.base import resolve_dtype

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hub_logging.set_verbosity_error()
    dtype = resolve_dtype(spec.dtype, spec.device)  # "auto" depends on the device asked for
    return load_model(spec.name, device=spec.device, dtype=dtype, allow_pickle=spec.allow_pickle)


class PairError(ValueError):
    """The pair named on the command line could not be scored (the message says why)."""


def attribute_pair(
    args: argparse.Namespace,
) -> tuple[ClipAdapter, WordSettings, WordAlignment, Image.Image]:
    """Score the one (image, caption) pair named on the command line; also return the decoded image.

    The settings, caption and image are checked before the model loads, so a mistake fails at once;
    any failure of the pair itself becomes one error saying why (see :func:`run_guarded`). The image is
    decoded once: the model scores the decoded image, and the result names the file as given.
    """
    from dataclasses import replace

    from clipalign.attribution import CLIP4DM
    from clipalign.images import describe_source, load_image
    from clipalign.results import ItemError
    from clipalign.text import validate_caption

    settings = word_settings(args)
    validate_caption(args.caption)
    image = load_image(args.image)
    model = open_model(model_spec(args))
    [result] = CLIP4DM(model, settings=settings).attribute([image], [args.caption])
    if isinstance(result, ItemError):
        raise PairError(result.error)
    return model, settings, replace(result, source=describe_source(args.image)), image


def check_output(path: str | None) -> None:
    """Refuse an output path that cannot be written, before any slow work: its folder must exist and
    be writable, and the path itself must not be a folder or a read-only file."""
    if not path:
        return
    out = Path(path)
    folder = out.resolve().parent
    if out.is_dir():
        raise ValueError(f"cannot write {path}: it is a directory")
    if not folder.is_dir():
        raise ValueError(f"cannot write {path}: its directory does not exist")
    if out.exists() and not os.access(out, os.W_OK):
        raise ValueError(f"cannot write {path}: the file is not writable")
    if not out.exists() and not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: its directory is not writable")


@contextmanager
def writing(path: str) -> Iterator[None]:
    """Turn an OSError while writing ``path`` (disk full, permission denied...) into a one-line error."""
    try:
        yield
    except OSError as exc:
        raise ValueError(f"cannot write {path}: {exc.strerror or exc}") from None


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
            stderr.print(f"[yellow]warning:[/] {printable(w.message)}", highlight=False, soft_wrap=True)


def printable(message: object) -> str:
    """``message`` safe to print: rich markup escaped, lone surrogates (from undecodable command-line
    bytes) written as ``\\udcff`` instead of failing to encode."""
    return escape(str(message).encode("utf-8", "backslashreplace").decode("utf-8"))


def run_guarded(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command with warnings on stderr; expected failures become one line and exit status 1."""
    try:
        with warnings_to_stderr():
            return func(args)
    except (ModelLoadError, ValueError) as exc:  # ImageLoadError and CaptionError are ValueErrors
        stderr.print(f"[red]error:[/] {printable(exc)}", highlight=False, soft_wrap=True)
        return 1
