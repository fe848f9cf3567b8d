"""The web demo: its API (results, bad inputs, queued model calls) and an end-to-end run in Chromium."""

from __future__ import annotations

import base64
import io
import json
import queue
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip(
    "starlette",
    reason="the web demo tests need starlette: pip install -e '.[demo]' in the clipalign checkout",
)
pytest.importorskip(
    "uvicorn", reason="the web demo tests need uvicorn: pip install -e '.[demo]' in the clipalign checkout"
)

from clipalign import CLIP4DM
from clipalign.cli.main import main
from clipalign.demo import DemoEngine, create_app

EXAMPLE = (files("clipalign") / "examples" / "apple_and_cup.png").read_bytes()
CAPTION = "a green apple next to a blue cup"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width``×``height`` pixels but carries almost no data (decoding it fails)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))


def data_url_image(url: str) -> Image.Image:
    header, payload = url.split(",", 1)
    assert header.startswith("data:image/") and header.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(payload)))


@pytest.fixture(scope="module")
def client(adapter) -> Iterator:
    pytest.importorskip("httpx", reason="starlette's TestClient needs httpx: pip install 'clipalign[test]'")
    from starlette.testclient import TestClient

    app = create_app(
        DemoEngine(adapter),
        "tiny",
        max_pixels=40_000_000,
        max_upload_bytes=2**20,
        allowed_hosts=["testserver"],
    )
    with TestClient(app) as test_client:
        yield test_client


def upload(client, data: bytes = EXAMPLE) -> str:
    response = client.post("/api/images", content=data, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    return response.json()["image"]


def analyze(client, caption: str = CAPTION) -> dict:
    response = client.post("/api/analyze", json={"image": upload(client), "caption": caption})
    assert response.status_code == 200, response.text
    return response.json()


def test_page_examples_and_styles_are_served(client):
    assert "clipalign" in client.get("/").text
    assert client.get("/app.js").status_code == 200
    assert ".ca-word" in client.get("/caption.css").text
    examples = client.get("/api/info").json()["examples"]
    assert len(examples) >= 3
    for example in examples:
        response = client.get(f"/{example['url']}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert example["caption"] and example["title"]


def test_analysis_heatmap_and_box_match_the_library(client, adapter):
    data = analyze(client)
    [expected] = CLIP4DM(adapter).attribute([Image.open(io.BytesIO(EXAMPLE))], [CAPTION])
    assert [w["word"] for w in data["result"]["words"]] == CAPTION.split()
    assert [w["score"] for w in data["result"]["words"]] == pytest.approx([w.score for w in expected.words])
    assert data["result"]["cosine"] == pytest.approx(expected.cosine)
    assert data["caption_html"].count('class="ca-word') == len(CAPTION.split())
    assert "CLIPScore" in data["scores_html"] and data["warnings"] == []

    heat = client.post("/api/heatmap", json={"analysis": data["analysis"], "words": [5, 6]})
    assert heat.status_code == 200, heat.text
    body = heat.json()
    image = data_url_image(body["image"])
    assert image.format == "PNG" and image.mode == "RGBA" and image.size == (640, 480)
    assert body["text"] == "a blue" and body["peak"] > 0

    box = client.post("/api/box", json={"analysis": data["analysis"], "box": [300, 100, 200, 200]})
    assert box.status_code == 200, box.text
    assert [w["word"] for w in box.json()["words"]] == CAPTION.split()


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b"", 400, "empty"),
        (b"just some text, not a picture", 400, "not an image"),
        (EXAMPLE[: len(EXAMPLE) // 2], 400, "cannot be read"),
        (png_header(12_000, 12_000), 413, "12000×12000"),
        (png_header(20_000, 20_000), 413, "too large"),
        (EXAMPLE + b"\0" * 2**20, 413, "larger than"),
    ],
    ids=["empty", "not-an-image", "truncated", "12k-by-12k", "decompression-bomb", "too-many-bytes"],
)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bad_uploads_get_a_readable_message_and_the_server_keeps_serving(client, data, status, message):
    response = client.post("/api/images", content=data, headers={"Content-Type": "image/png"})
    assert response.status_code == status
    assert message in response.json()["error"]
    assert upload(client)


def test_bad_captions_and_requests_get_a_readable_message(client):
    image = upload(client)
    cases = [
        ({"image": image, "caption": ""}, 400, "caption is empty"),
        ({"image": image, "caption": "   \n"}, 400, "caption is empty"),
        ({"image": image, "caption": 42}, 400, "caption"),
        ({"image": "no-such-image", "caption": CAPTION}, 404, "expired"),
    ]
    for body, status, message in cases:
        response = client.post("/api/analyze", json=body)
        assert response.status_code == status and message in response.json()["error"], response.text
    response = client.post("/api/analyze", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "JSON" in response.json()["error"]

    analysis = analyze(client)["analysis"]
    bad = [
        ("/api/heatmap", {"analysis": analysis, "words": [99]}, "out of range"),
        ("/api/heatmap", {"analysis": analysis, "words": []}, "word indices"),
        ("/api/heatmap", {"analysis": analysis, "words": "apple"}, "word indices"),
        ("/api/box", {"analysis": analysis, "box": [1, 2, 3]}, "four numbers"),
        ("/api/box", {"analysis": analysis, "box": [600, 400, 500, 500]}, "outside"),
        ("/api/box", {"analysis": "gone", "box": [1, 2, 3, 4]}, "expired"),
    ]
    for path, body, message in bad:
        response = client.post(path, json=body)
        assert response.status_code in (400, 404) and message in response.json()["error"], response.text
    assert analyze(client)["result"]["words"]


def test_long_caption_is_scored_with_a_truncation_warning(client):
    caption = " ".join(f"word{i}" for i in range(200))
    data = analyze(client, caption)
    assert data["result"]["truncated_words"]
    [warning] = data["warnings"]
    assert f"its last {len(data['result']['truncated_words'])} words were not scored" in warning
    assert 'class="ca-cut"' in data["caption_html"]


class SlowEngine(DemoEngine):
    """Records how many word attributions run at once; each takes a while."""

    active = 0
    most = 0

    def words(self, upload, caption):
        SlowEngine.active += 1
        SlowEngine.most = max(SlowEngine.most, SlowEngine.active)
        time.sleep(0.3)
        SlowEngine.active -= 1
        return super().words(upload, caption)


def request(url: str, body: bytes | None = None, content_type: str = "application/json") -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
def test_model_calls_queue_on_one_worker_while_the_page_stays_responsive(adapter):
    import uvicorn

    app = create_app(SlowEngine(adapter), "tiny")
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        _, image = request(f"{url}/api/images", EXAMPLE, "image/png")
        body = json.dumps({"image": image["image"], "caption": CAPTION}).encode()
        with ThreadPoolExecutor(6) as pool:
            started = time.monotonic()
            analyses = [pool.submit(request, f"{url}/api/analyze", body) for _ in range(5)]
            time.sleep(0.1)
            page = pool.submit(request, f"{url}/api/info")
            assert page.result()[0] == 200
            page_seconds = time.monotonic() - started
            results = [f.result() for f in analyses]
            all_seconds = time.monotonic() - started
        assert [status for status, _ in results] == [200] * 5
        assert SlowEngine.most == 1
        assert all_seconds >= 5 * 0.3
        assert page_seconds < all_seconds / 2
    finally:
        server.should_exit = True
        thread.join(10)


def test_demo_command_reports_a_busy_port_in_one_line(tiny_model_dir, capsys):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = str(busy.getsockname()[1])
        assert main(["demo", "--model", str(tiny_model_dir), "--port", port]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


@pytest.fixture(scope="module")
def demo_server(tiny_model_dir, tmp_path_factory) -> Iterator[tuple[str, float]]:
    """``clipalign demo`` in a subprocess on a free port: its URL and how long it took to start."""
    log = tmp_path_factory.mktemp("demo") / "server.log"
    command = [sys.executable, "-m", "clipalign", "demo", "--model", str(tiny_model_dir), "--port", "0"]
    started = time.monotonic()
    with log.open("w") as err:
        proc = subprocess.Popen([*command, "--device", "cpu"], stdout=subprocess.PIPE, stderr=err, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        line = lines.get(timeout=60)
    except queue.Empty:
        proc.kill()
        pytest.fail(f"the demo did not start within 60 s: {log.read_text()}")
    match = re.search(r"http://\S+/", line)
    assert match, line
    try:
        yield match.group(0), time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.mark.slow
def test_demo_server_answers_concurrent_requests(demo_server):
    url, startup = demo_server
    assert startup < 30
    _, image = request(f"{url}api/images", EXAMPLE, "image/png")
    good = json.dumps({"image": image["image"], "caption": CAPTION}).encode()
    empty = json.dumps({"image": image["image"], "caption": ""}).encode()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(request, f"{url}api/analyze", good if i % 2 else empty) for i in range(8)]
        futures.append(pool.submit(request, f"{url}api/images", b"not an image", "image/png"))
        results = [f.result() for f in futures]
    assert [status for status, _ in results] == [400, 200] * 4 + [400]
    assert all("error" in body for status, body in results if status == 400)
    assert request(f"{url}api/info")[0] == 200


@pytest.mark.slow
def test_browser_end_to_end(demo_server, tmp_path):
    """Pick an example, check a caption, click words for heatmaps, drag a box; bad input shows a message."""
    pytest.importorskip(
        "playwright", reason="the browser test needs playwright: pip install 'clipalign[test]'"
    )
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).exists(), f"Chromium not found at {CHROMIUM}: apt-get install chromium"
    url, _ = demo_server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.set_default_timeout(20_000)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url)

        page.click('[data-example="apple_and_cup"]')
        expect(page.locator("#photo")).to_be_visible()
        expect(page.locator("#caption")).to_have_value(CAPTION)
        page.click("#check")
        words = page.locator("#words .ca-word")
        expect(words).to_have_count(len(CAPTION.split()))
        assert words.all_inner_texts() == CAPTION.split()
        expect(page.locator("#scores")).to_contain_text("F-CLIPScore")

        words.nth(2).click()
        expect(page.locator("#heat")).to_be_visible()
        expect(page.locator("#heat-label")).to_contain_text("“apple”")
        assert page.eval_on_selector("#heat", "el => el.complete && el.naturalWidth") == 640
        words.nth(6).click(modifiers=["Shift"])
        expect(page.locator("#heat-label")).to_contain_text("“apple next to a blue”")
        first, last = words.nth(5).bounding_box(), words.nth(7).bounding_box()
        assert first is not None and last is not None
        page.mouse.move(first["x"] + 2, first["y"] + first["height"] / 2)
        page.mouse.down()
        page.mouse.move(last["x"] + last["width"] - 2, last["y"] + last["height"] / 2, steps=5)
        page.mouse.up()
        expect(page.locator("#heat-label")).to_contain_text("“a blue cup”")

        photo = page.locator("#photo").bounding_box()
        assert photo is not None
        page.mouse.move(photo["x"] + 0.55 * photo["width"], photo["y"] + 0.2 * photo["height"])
        page.mouse.down()
        page.mouse.move(photo["x"] + 0.8 * photo["width"], photo["y"] + 0.65 * photo["height"], steps=5)
        page.mouse.up()
        expect(page.locator("#region .ca-word")).to_have_count(len(CAPTION.split()))
        page.screenshot(path=tmp_path / "demo.png", full_page=True)
        assert_underline_inside(page, "#words")

        not_an_image = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hi"}
        page.set_input_files("#upload", files=[not_an_image])
        expect(page.locator("#message")).to_contain_text("not an image")
        page.fill("#caption", "   ")
        page.click("#check")
        expect(page.locator("#message")).to_contain_text("caption is empty")
        page.fill("#caption", " ".join(["a red apple"] * 70))
        page.click("#check")
        expect(page.locator("#message")).to_contain_text("were not scored")
        expect(page.locator("#words .ca-cut")).to_be_visible()
        page.screenshot(path=tmp_path / "demo-long-caption.png", full_page=True)
        browser.close()
    assert errors == []


# --- Screenshots: the misaligned words' wavy underline is drawn whole, small images shown large ----


def underline_pixels(page, word) -> tuple[np.ndarray, int, int]:
    """Where the wavy underline of ``word`` (a misaligned ``.ca-word``) is drawn, as a mask over its
    box's pixels (the box as screenshot with the underline, minus without), and the box's size."""
    box = word.bounding_box()
    assert box is not None
    clip = {k: box[k] for k in ("x", "y", "width", "height")}
    shown = np.asarray(Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB")).astype(int)
    hide = page.add_style_tag(content=".ca-misaligned { text-decoration-color: transparent !important; }")
    hidden = np.asarray(Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB")).astype(int)
    hide.evaluate("element => element.remove()")
    return np.abs(shown - hidden).max(axis=-1) > 40, shown.shape[1], shown.shape[0]


def assert_underline_inside(page, selector: str) -> int:
    """Every misaligned word under ``selector`` shows its whole underline inside its box: under most
    of the word, with at least one blank pixel row between it and the 2-pixel bottom border (an
    underline that reaches the border is drawn over by it: clipped). Returns how many were checked."""
    words = page.locator(f"{selector} .ca-misaligned")
    assert words.count() > 0
    for i in range(words.count()):
        mask, width, height = underline_pixels(page, words.nth(i))
        rows, cols = np.nonzero(mask)
        assert rows.size, f"word {i}: no underline drawn"
        assert cols.max() - cols.min() >= 0.5 * (width - 8), f"word {i}: underline under part of it"
        assert rows.min() > 2 and rows.max() < height - 3, (
            f"word {i}: underline rows {rows.min()}..{rows.max()} of {height}"
        )
    return words.count()


@pytest.mark.slow
def test_words_html_page_in_the_browser_shows_a_small_image_large_and_whole_underlines(adapter, tmp_path):
    """``words --html`` of a 64×48 image: shown at least 384 pixels high, pixel-sharp, and the
    misaligned words' underlines are not clipped."""
    pytest.importorskip(
        "playwright", reason="the browser test needs playwright: pip install 'clipalign[test]'"
    )
    from playwright.sync_api import sync_playwright

    from clipalign.viz.html import save_html

    assert Path(CHROMIUM).exists(), f"Chromium not found at {CHROMIUM}: apt-get install chromium"
    small = Image.open(io.BytesIO(EXAMPLE)).convert("RGB").resize((64, 48), Image.NEAREST)
    [scored] = CLIP4DM(adapter).attribute([small], [CAPTION])
    epsilon = float(np.median([w.score for w in scored.words]))
    [result] = CLIP4DM(adapter, epsilon=epsilon).attribute([small], [CAPTION])
    page_file = save_html(small, result, tmp_path / "page.html")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.goto(page_file.as_uri())
        image = page.locator("figure img").bounding_box()
        assert image is not None and image["height"] >= 384 and image["width"] == pytest.approx(512, abs=1)
        assert page.eval_on_selector("figure img", "el => getComputedStyle(el).imageRendering") == "pixelated"
        assert assert_underline_inside(page, ".ca-caption") == len(result.misaligned_words)
        page.screenshot(path=tmp_path / "page.png", full_page=True)
        browser.close()
