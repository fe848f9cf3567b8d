"""Request checks that keep other web sites out of the local demo: the Host header and the content type.

A page on another site can make a browser send "simple" requests (``text/plain``, forms) to a local
server without asking, and DNS rebinding can point its own host name at 127.0.0.1. Answering only the
host names the server is bound to, and only the content types a page must ask permission to send,
closes both doors.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from clipalign.demo.engine import DemoInputError

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
"""Host names the demo always answers to."""


def host_name(header: str) -> str:
    """The host name in a Host header (or a bare address), without port or IPv6 brackets, lower case."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else ""
    return value.rsplit(":", 1)[0].rstrip(".") if value.count(":") <= 1 else value


class HostGuard:
    """ASGI middleware: requests whose Host header names another host get a 400 (against DNS rebinding)."""

    def __init__(self, app: ASGIApp, hosts: Iterable[str]) -> None:
        self.app = app
        self.hosts = frozenset(host_name(h) for h in hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and host_name(Headers(scope=scope).get("host", "")) not in self.hosts:
            allowed = ", ".join(sorted(self.hosts))
            response = JSONResponse(
                {"error": f"Unexpected Host header: the demo answers only to {allowed}."}, 400
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def media_type(request: Request) -> str:
    """The request's media type, lower case, without parameters such as ``charset``."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def require_json(request: Request) -> None:
    """Refuse (415) a JSON route's request that is not sent as ``application/json``."""
    if media_type(request) != "application/json":
        raise DemoInputError("Send the request as JSON (Content-Type: application/json).", 415)


def require_image_type(request: Request) -> None:
    """Refuse (415) an upload not sent as ``application/octet-stream`` or ``image/*``."""
    kind = media_type(request)
    if kind != "application/octet-stream" and not kind.startswith("image/"):
        raise DemoInputError(
            "Send the image file as the request body (Content-Type: application/octet-stream or image/*).",
            415,
        )
