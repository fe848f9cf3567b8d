"""The web demo: a Starlette app serving one static page and a small JSON API around one loaded model.

Every computation that touches the model runs on a single worker thread, so requests queue up in
order and never run the model concurrently, while the event loop keeps serving the page, uploads and
queued requests. Uploads are decoded on a small pool of threads, so a burst of large images cannot
decode them all at once. State (uploads as encoded bytes, analyses and their interactions) lives in
small in-memory LRU stores, the uploads' with a byte budget, so the server's memory stays bounded.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import socket
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from importlib.resources import files
from typing import Any, Generic, TypeVar

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from clipalign.demo.engine import (
    DemoEngine,
    DemoInputError,
    Upload,
    heatmap_png,
    read_upload,
    release_memory,
)
from clipalign.demo.guard import LOCAL_HOSTS, HostGuard, require_image_type, require_json
from clipalign.results import Interactions
from clipalign.viz.html import CSS, caption_html, legend_html, scored_words_html, scores_html
from clipalign.viz.palette import score_peak

T = TypeVar("T")
R = TypeVar("R")

MAX_PIXELS = 40_000_000
MAX_UPLOAD_BYTES = 20 * 2**20
UPLOAD_STORE_BYTES = 128 * 2**20
"""Default budget for the uploads kept in memory (their encoded bytes); the oldest are dropped beyond it."""
DECODE_WORKERS = 2
"""Default number of uploads decoded at once: each full decode can take hundreds of MB."""
_MAX_JSON_BYTES = 2**16


class _Store(Generic[T]):
    """At most ``capacity`` values (and ``max_bytes`` by ``size``) under random ids, dropping the least
    recently used first; the newest value is always kept."""

    def __init__(
        self, capacity: int, what: str, max_bytes: int | None = None, size: Callable[[T], int] | None = None
    ) -> None:
        self.capacity, self.what, self.max_bytes, self.size = capacity, what, max_bytes, size
        self._items: OrderedDict[str, tuple[T, int]] = OrderedDict()
        self.nbytes = 0

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def add(self, value: T) -> str:
        key = secrets.token_urlsafe(12)
        nbytes = self.size(value) if self.size is not None else 0
        self._items[key] = (value, nbytes)
        self.nbytes += nbytes
        while len(self._items) > 1 and (
            len(self._items) > self.capacity or (self.max_bytes is not None and self.nbytes > self.max_bytes)
        ):
            self.nbytes -= self._items.popitem(last=False)[1][1]
        return key

    def get(self, key: object) -> T:
        if not isinstance(key, str) or key not in self._items:
            raise DemoInputError(f"Unknown or expired {self.what}: start again from the image.", 404)
        self._items.move_to_end(key)
        return self._items[key][0]


@dataclass
class _Analysis:
    """A checked pair; its interactions are computed on first use.

    It names its upload by id rather than holding it, so an upload dropped from its store is freed.
    """

    image: str
    display_size: tuple[int, int]
    caption: str
    interactions: asyncio.Future[Interactions] | None = field(default=None, repr=False)


def _field(data: dict[str, Any], name: str, kind: type, what: str) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DemoInputError(f"Expected {what} in {name!r}.")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise DemoInputError(
                f"The text in {name!r} has an invalid character (a lone surrogate)."
            ) from None
    return value


def _finite(value: object) -> bool:
    """Whether ``value`` is a JSON number that is a finite float (huge integers are not)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _read_upload(data: bytes, max_pixels: int) -> tuple[Upload, str]:
    """:func:`read_upload`, then its decode buffers handed back to the OS (on a decoder thread)."""
    try:
        return read_upload(data, max_pixels)
    finally:
        release_memory()


def _amount(size: int) -> str:
    """A byte count for messages, in MiB or (below one MiB) KiB."""
    return f"{size / 2**20:.3g} MiB" if size >= 2**20 else f"{size / 2**10:.3g} KiB"


class _Demo:
    """Request handlers and their state."""

    def __init__(
        self,
        engine: DemoEngine,
        model_name: str,
        max_pixels: int,
        max_upload_bytes: int,
        upload_store_bytes: int,
        decode_workers: int,
    ) -> None:
        self.engine = engine
        self.model_name = model_name
        self.max_pixels, self.max_upload_bytes = max_pixels, max_upload_bytes
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipalign-model")
        self.decoder = ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="clipalign-decode")
        self.uploads: _Store[Upload] = _Store(16, "image", upload_store_bytes, lambda u: len(u.data))
        self.analyses: _Store[_Analysis] = _Store(64, "result")
        self.examples = json.loads((files("clipalign") / "examples" / "examples.json").read_text("utf-8"))

    async def on_model(self, func: Callable[..., R], *args: Any) -> R:
        """Run ``func`` on the model's worker thread, after every request queued before it."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, partial(func, *args))

    async def body(self, request: Request, limit: int, what: str) -> bytes:
        """The request body, refused as soon as it is known to exceed ``limit`` bytes."""
        too_big = DemoInputError(f"The {what} is larger than {_amount(limit)}.", 413)
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
        """The request's JSON object; bad, oversized or too deeply nested JSON is refused with a message."""
        require_json(request)
        body = await self.body(request, _MAX_JSON_BYTES, "request")
        try:
            data = json.loads(body)
        except RecursionError:
            raise DemoInputError("The request's JSON is nested too deeply.") from None
        except ValueError:  # not UTF-8, not JSON, or an integer with too many digits
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
        require_image_type(request)
        data = await self.body(request, self.max_upload_bytes, "file")
        loop = asyncio.get_running_loop()
        upload, display = await loop.run_in_executor(self.decoder, _read_upload, data, self.max_pixels)
        key = self.uploads.add(upload)
        return JSONResponse(
            {"image": key, "width": upload.width, "height": upload.height, "display": display}
        )

    async def analyze(self, request: Request) -> JSONResponse:
        data = await self.json(request)
        image = data.get("image")
        upload = self.uploads.get(image)
        caption = _field(data, "caption", str, "the caption (text)")
        result, warnings = await self.on_model(self.engine.words, upload, caption)
        key = self.analyses.add(_Analysis(str(image), upload.display_size, caption))
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
            upload = self.uploads.get(analysis.image)
            analysis.interactions = asyncio.ensure_future(
                self.on_model(self.engine.token_patch, upload, analysis.caption)
            )
        return await asyncio.shield(analysis.interactions)

    async def heatmap(self, request: Request) -> JSONResponse:
        data = await self.json(request)
        analysis = self.analyses.get(data.get("analysis"))
        words = _field(data, "words", list, "a list of word indices")
        if not words or not all(isinstance(i, int) and not isinstance(i, bool) for i in words):
            raise DemoInputError("Expected a non-empty list of word indices in 'words'.")
        result = await self.interactions(analysis)
        image, peak = await asyncio.to_thread(heatmap_png, result, words, analysis.display_size)
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
        if len(box) != 4 or not all(_finite(v) for v in box):
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
    *,
    allowed_hosts: Iterable[str] = (),
    upload_store_bytes: int = UPLOAD_STORE_BYTES,
    decode_workers: int = DECODE_WORKERS,
) -> Starlette:
    """The demo's ASGI app around an engine (a model loaded once).

    It answers to localhost, 127.0.0.1, ::1 and ``allowed_hosts`` (e.g. the address it is served on);
    other Host headers get a 400. ``upload_store_bytes`` bounds the uploads kept, ``decode_workers`` the
    uploads decoded at once. The handlers' state is ``app.state.demo``.
    """
    demo = _Demo(engine, model_name, max_pixels, max_upload_bytes, upload_store_bytes, decode_workers)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        demo.worker.shutdown(wait=False, cancel_futures=True)
        demo.decoder.shutdown(wait=False, cancel_futures=True)

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
    guard = Middleware(HostGuard, hosts=[*LOCAL_HOSTS, *allowed_hosts])
    app = Starlette(routes=routes, middleware=[guard], exception_handlers=handlers, lifespan=lifespan)
    app.state.demo = demo
    return app


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (port 0: any free one); a clear error if that is impossible."""
    if not 0 <= port <= 65535:
        raise ValueError(f"cannot listen on {host}: port {port} is not between 0 and 65535")
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
