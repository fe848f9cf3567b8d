"""``clipalign demo``: a local web page to check captions against images, with heatmaps."""

from __future__ import annotations

import argparse
import importlib.util

from clipalign.cli.common import add_model_options, add_word_options, model_spec, open_model, word_settings
from clipalign.settings import InteractionSettings


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="web page: pick or upload an image, check a caption, see heatmaps")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860; 0 picks a free one)")
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer to this host name (repeatable; localhost and --host always are), e.g. the "
        "machine's name when --host is 0.0.0.0; other Host headers are refused against DNS rebinding",
    )
    steps = InteractionSettings().steps
    p.add_argument(
        "--steps",
        type=int,
        default=steps,
        help=f"heatmaps: quadrature nodes (fewer = faster; default: {steps})",
    )
    p.add_argument(
        "--max-pixels", type=int, default=40_000_000, help="largest image accepted, in pixels (default: 40M)"
    )
    p.add_argument(
        "--max-upload-mb", type=float, default=20, help="largest upload accepted (default: 20 MiB)"
    )
    add_model_options(p)
    add_word_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(
            f"the demo needs {' and '.join(missing)}: pip install -e '.[demo]' in the clipalign checkout"
        )
    from clipalign.demo import DemoEngine, create_app, listen, serve
    from clipalign.models.base import InteractionAdapter

    sock = listen(args.host, args.port)
    model = open_model(model_spec(args))
    if not isinstance(model, InteractionAdapter):
        raise ValueError(f"{model.name}: the demo's heatmaps need a model that supports interactions")
    engine = DemoEngine(model, words=word_settings(args), interactions=InteractionSettings(steps=args.steps))
    app = create_app(
        engine,
        model.name,
        args.max_pixels,
        int(args.max_upload_mb * 2**20),
        allowed_hosts=[args.host, *args.allow_host],
    )
    serve(app, sock)
    return 0
