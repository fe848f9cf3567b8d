"""``clipalign finetune DATA --model M --out DIR``: adapt a CLIP to a domain, staying near where it began.

Only argparse and the shared option helpers are imported at start-up; torch, transformers and the
training code load when the command runs. Under ``torchrun --nproc-per-node N -m clipalign finetune ...``
the run is data-parallel (see :mod:`clipalign.training.distributed`).
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import replace
from typing import TYPE_CHECKING

from clipalign.cli.common import Parser, add_model_options, model_spec, open_model, stderr, word_settings
from clipalign.settings import WordSettings

if TYPE_CHECKING:
    from clipalign.training import Evaluation, FinetuneSettings


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a CLIP on image-caption pairs (contrastive loss, L2 pull to the starting weights)",
    )
    p.add_argument(
        "input", help="JSONL/CSV/Parquet table, tar shards ('shards/{00000..00099}.tar'), or an image dir"
    )
    p.add_argument(
        "--out", required=True, help="output folder: a Hugging Face checkpoint, loadable with --model"
    )
    p.add_argument(
        "--captions", help="with an image directory: JSON {file: caption} or [{file_name, caption}]"
    )
    p.add_argument("--image-column", default="image", help="table column with image paths")
    p.add_argument("--caption-column", default="caption", help="caption column / tar JSON field")
    p.add_argument("--key-column", help="table column with a unique key (default: the image path)")
    p.add_argument("--base-dir", help="resolve relative image paths here (default: the table's directory)")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run in --out and start again")
    _add_training_options(p)
    _add_eval_options(p)
    add_model_options(p)
    p.set_defaults(func=run)


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    from clipalign.training.settings import FinetuneSettings

    d = FinetuneSettings()
    g = parser.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=d.epochs, help="passes over the data")
    g.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (default: all epochs)")
    g.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="pairs per contrastive batch, all processes together",
    )
    g.add_argument("--accumulate", type=int, default=d.accumulate, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (AdamW)")
    g.add_argument(
        "--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay (the paper's)"
    )
    g.add_argument("--warmup", type=int, default=d.warmup, help="linear warm-up steps")
    g.add_argument("--min-lr", type=float, default=d.min_lr, help="the cosine ends at this fraction of --lr")
    g.add_argument(
        "--l2-init", type=float, default=d.l2_init, help="λ of λ·Σ‖θ − θ₀‖², the pull to the starting weights"
    )
    g.add_argument(
        "--max-grad-norm", type=float, help="clip the gradient norm to this (default: no clipping)"
    )
    g.add_argument(
        "--freeze",
        action="append",
        default=[],
        help="keep fixed: vision, text (a tower), vision:N, text:N (its embeddings and first N blocks), "
        "logit (the temperature); repeat or comma-separate",
    )
    g.add_argument("--template", default=d.template, help="read before every caption, as the scorers read it")
    g.add_argument("--seed", type=int, default=d.seed, help="data order and any dropout")
    g.add_argument("--shuffle-buffer", type=int, default=d.shuffle_buffer, help="pairs held to shuffle")
    g.add_argument("--save-every", type=int, default=d.save_every, help="steps between checkpoints")
    g.add_argument("--keep", type=int, default=d.keep, help="checkpoints kept")
    g.add_argument("--workers", type=int, default=d.workers, help="threads decoding images")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_eval_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("evaluation during training")
    g.add_argument(
        "--eval",
        action="append",
        default=[],
        metavar="'BENCHMARK --annotations FILE --images DIR ...'",
        help="a `clipalign eval` run on the current weights (its arguments in one string; repeatable); "
        "the starting model is evaluated first, then every --eval-every steps and at the end",
    )
    g.add_argument("--eval-every", type=int, help="steps between evaluations (default: start and end only)")


def training_settings(args: argparse.Namespace) -> FinetuneSettings:
    """The training options as one :class:`~clipalign.training.FinetuneSettings`: each option sets the
    field of its name, ``--freeze`` entries split at commas, ``--no-progress`` turns ``progress`` off."""
    from dataclasses import fields

    from clipalign.training import FinetuneSettings

    named = {f.name: getattr(args, f.name) for f in fields(FinetuneSettings) if f.name in vars(args)}
    freeze = tuple(part.strip() for entry in args.freeze for part in entry.split(",") if part.strip())
    return FinetuneSettings(**{**named, "freeze": freeze, "progress": not args.no_progress})


def parse_evaluation(text: str) -> Evaluation:
    """One ``--eval`` string, read by ``clipalign eval``'s own parser, its items loaded now."""
    from clipalign.cli import evaluate
    from clipalign.evaluation.benchmark import LOADER_OPTIONS, default_word_settings, is_pointing, load_items
    from clipalign.training import Evaluation

    parser = Parser(prog="clipalign finetune --eval", add_help=False)
    evaluate.register(parser.add_subparsers(dest="command", parser_class=Parser))
    try:
        args = parser.parse_args(["eval", *shlex.split(text)])
    except SystemExit:
        raise ValueError(f"--eval {text!r}: not valid `clipalign eval` arguments (see above)") from None
    options = {name: getattr(args, name) for name in LOADER_OPTIONS}
    items = load_items(args.benchmark, args.annotations, args.images, limit=args.limit, **options)
    pointing = is_pointing(args.benchmark)
    words: WordSettings | None = None
    if not pointing:
        words = word_settings(args, **default_word_settings(args.benchmark))
    return Evaluation(
        args.benchmark,
        items,
        words=words,
        interactions=evaluate.pointing_settings(args),
        methods=evaluate.pointing_methods(args) if pointing else ("interactions",),
    )


def run(args: argparse.Namespace) -> int:
    from clipalign.runners.sources import Columns
    from clipalign.training import DataSpec, finetune
    from clipalign.training.distributed import init_from_env, rank_and_size

    settings = training_settings(args)
    data = DataSpec(
        source=args.input,
        captions=args.captions,
        columns=Columns(args.image_column, args.caption_column, args.key_column),
        base_dir=args.base_dir,
    )
    evaluations = [parse_evaluation(text) for text in args.eval]
    names = [ev.benchmark for ev in evaluations]
    if len(set(names)) != len(names):
        raise ValueError("--eval: each benchmark at most once")
    args.device = init_from_env(args.device)
    spec = model_spec(args)
    identity = {"model": spec.name, "input": args.input, "captions": args.captions}
    result = finetune(
        data,
        open_model(replace(spec, dtype="fp32")),  # weights train in fp32; --dtype is the autocast
        args.out,
        settings=settings,
        evaluations=evaluations,
        dtype=spec.dtype,
        overwrite=args.overwrite,
        identity=identity,
    )
    if rank_and_size()[0] == 0:
        if result.resumed_from is not None:
            print(f"resumed after step {result.resumed_from}")
        loss = "-" if result.final_loss is None else f"{result.final_loss:.4f}"
        print(f"{result.steps} steps, {result.pairs} pairs, final loss {loss}")
        if result.skipped.total:
            stderr.print(f"[yellow]{result.skipped.total} pair(s) skipped[/], e.g.", highlight=False)
            for line in result.skipped.examples:
                stderr.print(f"  {line}", highlight=False, soft_wrap=True, markup=False)
        print(f"wrote {result.out} (load it with --model {result.out})")
    return 0
