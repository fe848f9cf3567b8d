"""The web demo: a Starlette app serving one static page and a small JSON API around one loaded model.

Every computation that touches the model runs on a single worker thread, so requests queue up in
order and never run the model concurrently, while the event loop keeps serving the page, uploads and
queued requests. Uploads are decoded on other threads. State (uploads, analyses and their
interactions) lives in small in-memory LRU stores, so the server's memory stays bounded.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import socket
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from importlib.resources import files
from typing import Any, Generic, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from clipalign.demo.engine import DemoEngine, DemoInputError, Upload, check_upload, heatmap_png
from clipalign.results import Interactions
from clipalign.viz.html import CSS, caption_html, legend_html, scored_words_html, scores_html
from clipalign.viz.palette import score_peak

T = TypeVar("T")
R = TypeVar("R")

MAX_PIXELS = 40_000_000
MAX_UPLOAD_BYTES = 20 * 2**20
_MAX_JSON_BYTES = 2**16


class _Store(Generic[T]):
    """At most ``capacity`` values under random ids; the least recently used is dropped first."""

    def __init__(self, capacity: int, what: str) -> None:
        self.capacity, self.what = capacity, what
        self._items: OrderedDict[str, T] = OrderedDict()

    def add(self, value: T) -> str:
        key = secrets.token_urlsafe(12)
        self._items[key] = value
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return key

    def get(self, key: object) -> T:
        if not isinstance(key, str) or key not in self._items:
            raise DemoInputError(f"Unknown or expired {self.what}: start again from the image.", 404)
        self._items.move_to_end(key)
        return self._items[key]


@dataclass
class _Analysis:
    """A checked pair; its interactions are computed on first use."""

    upload: Upload
    caption: str
    interactions: asyncio.Future[Interactions] | None = field(default=None, repr=False)


def _field(data: dict[str, Any], name: str, kind: type, what: str) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DemoInputError(f"Expected {what} in {name!r}.")
    return value


class _Demo:
    """Request handlers and their state."""

    def __init__(self, engine: DemoEngine, model_name: str, max_pixels: int, max_upload_bytes: int) -> None:
        self.engine = engine
        self.model_name = model_name
        self.max_pixels, self.max_upload_bytes = max_pixels, max_upload_bytes
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipalign-model")
        self.uploads: _Store[Upload] = _Store(16, "image")
        self.analyses: _Store[_Analysis] = _Store(64, "result")
        self.examples = json.loads((files("clipalign") / "examples" / "examples.json").read_text("utf-8"))

    async def on_model(self, func: Callable[..., R], *args: Any) -> R:
        """Run ``func`` on the model's worker thread, after every request queued before it."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, partial(func, *args))

    async def body(self, request: Request, limit: int, what: str) -> bytes:
        """The request body, refused as soon as it is known to exceed ``limit`` bytes."""
        too_big = DemoInputError(f"The {what} is larger than {limit / 2**20:.0f} MiB.", 413)
        if int(request.headers.get("content-length") or 0) > limit:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    async def json(self, request: Request) -> dict[str, Any]:
        try:
            data = json.loads(await self.body(request, _MAX_JSON_BYTES, "request"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DemoInputError("The request is not valid JSON.") from None
        if not isinstance(data, dict):
            raise DemoInputError("The request must be a JSON object.")
        return data

    async def info(self, request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "model": self.model_name,
                "examples": [{**e, "url": f"examples/{e['file']}"} for e in self.examples],
                "max_pixels": self.max_pixels,
                "max_upload_bytes": self.max_upload_bytes,
            }
        )

    async def upload(self, request: Request) -> JSONResponse:
        data = await self.body(request, self.max_upload_bytes, "file")
        upload = await asyncio.to_thread(check_upload, data, self.max_pixels)
        key = self.uploads.add(upload)
        return JSONResponse(
            {"image": key, "width": upload.width, "height": upload.height, "display": upload.display}
        )

    async def analyze(self, request: Request) -> JSONResponse:
        data = await self.json(request)
        upload = self.uploads.get(data.get("image"))
        caption = _field(data, "caption", str, "the caption (text)")
        result, warnings = await self.on_model(self.engine.words, upload, caption)
        key = self.analyses.add(_Analysis(upload, caption))
        peak = score_peak([w.score for w in result.words])
        return JSONResponse(
            {
                "analysis": key,
                "caption_html": caption_html(result),
                "legend_html": legend_html(peak, "word score; boxed = misaligned"),
                "scores_html": scores_html(result),
                "warnings": warnings,
                "result": result.to_dict(),
            }
        )

    async def interactions(self, analysis: _Analysis) -> Interactions:
        """The analysis's interactions, computed once on first use and shared by concurrent requests."""
        if analysis.interactions is None:
            analysis.interactions = asyncio.ensure_future(
                self.on_model(self.engine.token_patch, analysis.upload, analysis.caption)
            )
        return await asyncio.shield(analysis.interactions)

    async def heatmap(self, request: Request) -> JSONResponse:
        data = await self.json(request)
        analysis = self.analyses.get(data.get("analysis"))
        words = _field(data, "words", list, "a list of word indices")
        if not words or not all(isinstance(i, int) and not isinstance(i, bool) for i in words):
            raise DemoInputError("Expected a non-empty list of word indices in 'words'.")
        result = await self.interactions(analysis)
        image, peak = await asyncio.to_thread(heatmap_png, result, words, analysis.upload.display_size)
        return JSONResponse(
            {
                "image": image,
                "peak": peak,
                "words": words,
                "text": " ".join(result.words[i].word for i in sorted(set(words))),
                "legend_html": legend_html(peak, "interaction with the image"),
            }
        )

    async def box(self, request: Request) -> JSONResponse:
        data = await self.json(request)
        analysis = self.analyses.get(data.get("analysis"))
        box = _field(data, "box", list, "x, y, width, height in image pixels")
        if len(box) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box
        ):
            raise DemoInputError("Expected four numbers (x, y, width, height) in 'box'.")
        result = await self.interactions(analysis)
        x, y, width, height = (float(v) for v in box)
        pairs = result.box_word_scores((x, y, width, height))
        peak = score_peak([s for _, s in pairs])
        return JSONResponse(
            {
                "words": [{"word": w, "score": s} for w, s in pairs],
                "words_html": scored_words_html(pairs),
                "legend_html": legend_html(peak, "interaction with the box"),
            }
        )

    async def css(self, request: Request) -> Response:
        return Response(CSS, media_type="text/css")


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    """Bad input (ours, or the library's ValueError subclasses): its message, for the page to show."""
    return JSONResponse({"error": str(exc)}, status_code=getattr(exc, "status", 400))


async def _failed(request: Request, exc: Exception) -> JSONResponse:
    """Anything else: a readable message for the page (uvicorn logs the traceback)."""
    return JSONResponse(
        {"error": f"Internal error ({type(exc).__name__}: {exc}). The server keeps running."}, 500
    )


def create_app(
    engine: DemoEngine,
    model_name: str,
    max_pixels: int = MAX_PIXELS,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
) -> Starlette:
    """The demo's ASGI app around an engine (a model loaded once)."""
    demo = _Demo(engine, model_name, max_pixels, max_upload_bytes)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        demo.worker.shutdown(wait=False, cancel_futures=True)

    routes = [
        Route("/api/info", demo.info),
        Route("/api/images", demo.upload, methods=["POST"]),
        Route("/api/analyze", demo.analyze, methods=["POST"]),
        Route("/api/heatmap", demo.heatmap, methods=["POST"]),
        Route("/api/box", demo.box, methods=["POST"]),
        Route("/caption.css", demo.css),
        Mount("/examples", StaticFiles(packages=[("clipalign", "examples")])),
        Mount("/", StaticFiles(packages=[("clipalign.demo", "static")], html=True)),
    ]
    handlers = {ValueError: _refused, Exception: _failed}
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (port 0: any free one); a clear error if that is impossible."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def serve(app: Starlette, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` with uvicorn until interrupted, after printing its address."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"clipalign demo: http://{shown}:{port}/  (Ctrl-C stops it)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
