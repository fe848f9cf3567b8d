"""The web demo's limits: bounded decoding and memory, refused shapes and requests, a clear port error."""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import struct
import threading
import time
import weakref
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files

import pytest
from PIL import ExifTags, Image

pytest.importorskip(
    "starlette",
    reason="the web demo tests need starlette: pip install -e '.[demo]' in the clipalign checkout",
)
pytest.importorskip("httpx", reason="starlette's TestClient needs httpx: pip install 'clipalign[test]'")

import httpx
from starlette.testclient import TestClient

import clipalign.demo.app as demo_app
from clipalign.cli.main import main
from clipalign.demo import DemoEngine, create_app
from clipalign.demo.guard import host_name

EXAMPLE = (files("clipalign") / "examples" / "apple_and_cup.png").read_bytes()
CAPTION = "a green apple next to a blue cup"
PNG = {"Content-Type": "image/png"}
JSON = {"Content-Type": "application/json"}


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width``×``height`` pixels but carries almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))


@contextmanager
def serving(adapter, **options) -> Iterator[TestClient]:
    """A TestClient on a fresh demo app (answering to TestClient's host) created with ``options``."""
    app = create_app(DemoEngine(adapter), "tiny", allowed_hosts=["testserver"], **options)
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def client(adapter) -> Iterator[TestClient]:
    with serving(adapter) as test_client:
        yield test_client


def upload(client: TestClient, data: bytes = EXAMPLE) -> str:
    response = client.post("/api/images", content=data, headers=PNG)
    assert response.status_code == 200, response.text
    return response.json()["image"]


def analyze(client: TestClient, image: str) -> str:
    response = client.post("/api/analyze", json={"image": image, "caption": CAPTION})
    assert response.status_code == 200, response.text
    return response.json()["analysis"]


def test_concurrent_uploads_decode_at_most_two_at_once(adapter, monkeypatch):
    lock, counts = threading.Lock(), {"active": 0, "most": 0}
    read_upload = demo_app.read_upload

    def counted(data: bytes, max_pixels: int):
        with lock:
            counts["active"] += 1
            counts["most"] = max(counts["most"], counts["active"])
        time.sleep(0.05)
        try:
            return read_upload(data, max_pixels)
        finally:
            with lock:
                counts["active"] -= 1

    monkeypatch.setattr(demo_app, "read_upload", counted)
    app = create_app(DemoEngine(adapter), "tiny")

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            posts = [http.post("/api/images", content=EXAMPLE, headers=PNG) for _ in range(12)]
            return [response.status_code for response in await asyncio.gather(*posts)]

    assert asyncio.run(burst()) == [200] * 12
    assert counts["most"] == demo_app.DECODE_WORKERS == 2


def test_upload_store_keeps_to_its_byte_budget(adapter):
    budget = 2 * len(EXAMPLE) + 100
    with serving(adapter, upload_store_bytes=budget) as client:
        first, second, third = (upload(client) for _ in range(3))
        store = client.app.state.demo.uploads
        assert first not in store and second in store and third in store
        assert store.nbytes == 2 * len(EXAMPLE) <= budget
        response = client.post("/api/analyze", json={"image": first, "caption": CAPTION})
        assert response.status_code == 404 and "expired" in response.json()["error"]


def test_a_result_does_not_keep_an_evicted_upload_alive(adapter):
    with serving(adapter, upload_store_bytes=len(EXAMPLE)) as client:
        store = client.app.state.demo.uploads
        image = upload(client)
        fresh, early = analyze(client, image), analyze(client, image)
        heat = client.post("/api/heatmap", json={"analysis": early, "words": [2]})
        assert heat.status_code == 200, heat.text
        alive = weakref.ref(store.get(image))
        upload(client)
        gc.collect()
        assert image not in store and alive() is None
        response = client.post("/api/heatmap", json={"analysis": fresh, "words": [2]})
        assert response.status_code == 404 and "expired" in response.json()["error"]
        computed = client.post("/api/heatmap", json={"analysis": early, "words": [5, 6]})
        assert computed.status_code == 200, computed.text


def encoded(image: Image.Image, kind: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()


def rotated_jpeg() -> bytes:
    """A 3000×1000 JPEG, left half red, whose EXIF orientation (6) turns it into 1000×3000 on display."""
    image = Image.new("RGB", (3000, 1000), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 1500, 1000))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    return encoded(image, "JPEG", exif=exif)


@pytest.mark.parametrize(
    ("data", "size", "display"),
    [
        (rotated_jpeg(), (1000, 3000), (341, 1024)),
        (encoded(Image.new("P", (2048, 1024), 3), "GIF"), (2048, 1024), (1024, 512)),
        (encoded(Image.new("LA", (4000, 3000), (128, 0)), "PNG"), (4000, 3000), (1024, 768)),
        (encoded(Image.new("I;16", (1600, 1600), 40_000), "PNG"), (1600, 1600), (1024, 1024)),
    ],
    ids=["exif-rotated-jpeg", "palette-gif", "transparent-png", "16-bit-png"],
)
def test_uploads_report_their_full_size_and_show_a_small_rgb_copy(client, data, size, display):
    response = client.post("/api/images", content=data, headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == size
    shown = Image.open(io.BytesIO(base64.b64decode(body["display"].split(",", 1)[1])))
    assert shown.size == display and shown.mode == "RGB"
    if size == (1000, 3000):
        assert shown.getpixel((170, 100))[0] > 200 and shown.getpixel((170, 900))[2] > 200


def test_each_upload_hands_its_decode_buffers_back(client, monkeypatch):
    calls: list[None] = []
    monkeypatch.setattr(demo_app, "release_memory", lambda: calls.append(None))
    upload(client)
    client.post("/api/images", content=b"not an image", headers=PNG)
    assert len(calls) == 2


@pytest.mark.parametrize(
    "size", [(40_000_000, 1), (1, 60_000), (5_100, 100)], ids=["40M-by-1", "1-by-60k", "51-to-1"]
)
def test_long_thin_images_are_refused_from_the_header(client, size):
    response = client.post("/api/images", content=png_header(*size), headers=PNG)
    assert response.status_code == 413
    assert f"{size[0]}×{size[1]}" in response.json()["error"] and "50:1" in response.json()["error"]


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_demo_command_reports_a_port_out_of_range_in_one_line(tiny_model_dir, capsys, monkeypatch, port):
    def no_model(spec):
        raise AssertionError("the model was opened before the port was checked")

    monkeypatch.setattr("clipalign.cli.demo.open_model", no_model)
    assert main(["demo", "--port", port, "--model", str(tiny_model_dir)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"port {port} is not between 0 and 65535" in err


def test_oversized_json_names_its_limit_in_kib(client):
    body = b'{"caption": "' + b"a" * 2**16 + b'"}'
    response = client.post("/api/analyze", content=body, headers=JSON)
    assert response.status_code == 413 and "larger than 64 KiB" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 30_000 + b"]" * 30_000, "nested too deeply"),
        (b'{"caption": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", "nested too deeply"),
        (b'{"caption": 1' + b"0" * 5000 + b"}", "not valid JSON"),
        (b'{"image": "x", "caption": "a \\ud800 cat"}', "surrogate"),
    ],
    ids=["deep-list", "deep-field", "long-integer", "lone-surrogate"],
)
def test_malformed_json_gets_a_400_with_a_message(client, body, message):
    image = upload(client)
    response = client.post("/api/analyze", content=body.replace(b'"x"', f'"{image}"'.encode()), headers=JSON)
    assert response.status_code == 400 and message in response.json()["error"], response.text


def test_huge_numbers_in_a_box_get_a_400(client):
    analysis = analyze(client, upload(client))
    for huge in (b"1" + b"0" * 400, b"-1" + b"0" * 400, b"1e400"):
        body = b'{"analysis": "%s", "box": [0, 0, 10, %s]}' % (analysis.encode(), huge)
        response = client.post("/api/box", content=body, headers=JSON)
        assert response.status_code == 400 and "four numbers" in response.json()["error"], response.text


@pytest.mark.parametrize(
    "kind", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""]
)
def test_requests_other_sites_could_send_unasked_get_a_415(client, kind):
    headers = {"Content-Type": kind} if kind else {}
    for path in ("/api/analyze", "/api/heatmap", "/api/box"):
        response = client.post(path, content=b'{"image": "x", "caption": "a cat"}', headers=headers)
        assert response.status_code == 415 and "application/json" in response.json()["error"], response.text
    response = client.post("/api/images", content=EXAMPLE, headers=headers)
    assert response.status_code == 415 and "octet-stream" in response.json()["error"], response.text


def test_json_with_a_charset_and_uploads_as_octet_stream_are_accepted(client):
    response = client.post(
        "/api/images", content=EXAMPLE, headers={"Content-Type": "application/octet-stream"}
    )
    assert response.status_code == 200, response.text
    body = f'{{"image": "{response.json()["image"]}", "caption": "{CAPTION}"}}'.encode()
    analyzed = client.post(
        "/api/analyze", content=body, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert analyzed.status_code == 200, analyzed.text


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:7860", "127.0.0.1.evil.example", "[::2]:80", ""]
)
def test_unknown_host_headers_get_a_400(client, host):
    for path in ("/", "/api/info"):
        response = client.get(path, headers={"Host": host})
        assert response.status_code == 400 and "Host" in response.json()["error"], response.text
    response = client.post("/api/images", content=EXAMPLE, headers={**PNG, "Host": host})
    assert response.status_code == 400


@pytest.mark.parametrize("host", ["localhost", "localhost:7860", "127.0.0.1:80", "[::1]:7860", "LocalHost"])
def test_local_host_headers_are_answered_without_allowed_hosts(adapter, host):
    with TestClient(create_app(DemoEngine(adapter), "tiny")) as client:
        assert client.get("/api/info", headers={"Host": host}).status_code == 200
        assert client.get("/api/info").status_code == 400


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("Example.COM:80", "example.com"),
        ("[::1]:7860", "::1"),
        ("::1", "::1"),
        ("localhost.", "localhost"),
        ("", ""),
    ],
)
def test_host_name_drops_port_brackets_and_case(header, name):
    assert host_name(header) == name


def test_demo_command_answers_to_its_host_and_allowed_hosts(tiny_model_dir, monkeypatch):
    served: list = []
    monkeypatch.setattr("clipalign.demo.listen", lambda host, port: None)
    monkeypatch.setattr("clipalign.demo.serve", lambda app, sock: served.append(app))
    argv = ["demo", "--model", str(tiny_model_dir), "--device", "cpu", "--host", "0.0.0.0"]
    assert main([*argv, "--allow-host", "box.lan", "--allow-host", "[fe80::1]"]) == 0
    with TestClient(served[0]) as client:
        for host in ("box.lan:7860", "0.0.0.0:7860", "[fe80::1]:7860", "localhost:7860"):
            assert client.get("/api/info", headers={"Host": host}).status_code == 200, host
        assert client.get("/api/info", headers={"Host": "evil.example:7860"}).status_code == 400
