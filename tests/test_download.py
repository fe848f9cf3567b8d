"""``clipalign download`` and :mod:`clipalign.datasets.download` against a local HTTP server (no internet).

The server on 127.0.0.1 (ephemeral port) serves images, a 404, non-image bytes, bodies cut short
of their Content-Length, transient 503s and slow bodies, and counts the requests per path, so that
resuming can be shown to fetch nothing.
"""

from __future__ import annotations

import ast
import hashlib
import http.server
import inspect
import io
import json
import re
import shlex
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SHARED, require
from PIL import Image
from tfrecord.writer import TFRecordWriter

from clipalign.cli import download as download_cli
from clipalign.cli.main import build_parser, main
from clipalign.datasets import BENCHMARKS, load_nocaps_foil, load_richhf
from clipalign.datasets.download import (
    DownloadOptions,
    FileResult,
    FileTask,
    PickAPicImages,
    download_all,
    fetch_one,
    nocaps_tasks,
    read_checksums,
    richhf_uids,
    safe_name,
)
from clipalign.evaluation.benchmark import LOADER_OPTIONS
from clipalign.evaluation.report import PUBLISHED, backbone_of


def image_bytes(color: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), color).save(buffer, format=fmt)
    return buffer.getvalue()


RED, GREEN, BLUE = image_bytes((255, 0, 0)), image_bytes((0, 255, 0), "JPEG"), image_bytes((0, 0, 255))


@dataclass
class Route:
    """What the server answers on one path: ``status`` and ``body``; ``cut`` sends only that many bytes
    of the body (after a Content-Length of the whole) then closes; ``fail_first`` answers 503 that many
    times first; ``delay`` sleeps between 1-byte chunks."""

    body: bytes = b""
    status: int = 200
    cut: int | None = None
    fail_first: int = 0
    delay: float = 0.0


@dataclass
class Server:
    base: str
    routes: dict[str, Route]
    hits: Counter[str] = field(default_factory=Counter)

    def url(self, path: str) -> str:
        return f"{self.base}/{path}"


@pytest.fixture
def server() -> Iterator[Server]:
    routes: dict[str, Route] = {}
    hits: Counter[str] = Counter()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.lstrip("/")
            hits[path] += 1
            route = routes.get(path)
            if route is None:
                self.send_error(404, "Not Found")
                return
            if hits[path] <= route.fail_first:
                self.send_error(503, "Service Unavailable")
                return
            self.send_response(route.status)
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            body = route.body if route.cut is None else route.body[: route.cut]
            try:
                if route.delay:
                    for i in range(len(body)):
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                        time.sleep(route.delay)
                else:
                    self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass
            if route.cut is not None:
                self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}", routes, hits)
    finally:
        httpd.shutdown()
        httpd.server_close()


FAST = DownloadOptions(workers=3, retries=2, backoff=0.0, timeout=10.0)


def leftovers(folder: Path) -> list[str]:
    """Temporary files a download left behind (none may remain, whatever happened)."""
    return sorted(p.name for p in folder.rglob("*.part"))


def write_nocaps(
    tmp_path: Path, server: Server, names: list[str], *, unlisted: tuple[str, ...] = ()
) -> tuple[Path, Path]:
    """A nocaps-FOIL file (two entries per image, as the real one may repeat images) and a nocaps meta
    file whose ``coco_url`` points at the server; ``unlisted`` images are in the FOIL file only."""
    entries = []
    for name in [*names, *unlisted]:
        for foil in ("cat", "dog"):
            entries.append(
                {
                    "image_path": name,
                    "references": ["a bird"],
                    "baseline": "a bird on a branch",
                    "foil": f"a {foil} on a branch",
                    "replacement": ["bird", foil],
                    "domain": "out-domain",
                }
            )
    meta = {
        "images": [
            {
                "id": i,
                "file_name": name,
                "coco_url": server.url(f"nocaps/val/{name}"),
                "open_images_id": name[:-4],
            }
            for i, name in enumerate(names)
        ]
    }
    foil_path, meta_path = tmp_path / "nocaps-val-foil.json", tmp_path / "nocaps_val_4500_captions.json"
    foil_path.write_text(json.dumps(entries))
    meta_path.write_text(json.dumps(meta))
    return foil_path, meta_path


def run_cli(*argv: str | Path) -> int:
    return main(["download", *map(str, argv)])


def nocaps_cli(foil: Path, meta: Path, out: Path, *extra: str | Path) -> int:
    return run_cli(
        "nocaps",
        "--annotations",
        foil,
        "--meta",
        meta,
        "--out",
        out,
        "--no-progress",
        "--backoff",
        "0",
        *extra,
    )


# -------------------- nocaps through the command line


def test_nocaps_download_then_resume_fetches_nothing(tmp_path: Path, server: Server, capsys) -> None:
    server.routes.update({"nocaps/val/a.png": Route(RED), "nocaps/val/b.jpg": Route(GREEN)})
    foil, meta = write_nocaps(tmp_path, server, ["a.png", "b.jpg"])
    out = tmp_path / "images"

    assert nocaps_cli(foil, meta, out) == 0
    assert (out / "a.png").read_bytes() == RED
    assert (out / "b.jpg").read_bytes() == GREEN
    assert "2 downloaded, 0 already complete, 0 failed" in capsys.readouterr().out
    assert server.hits == Counter({"nocaps/val/a.png": 1, "nocaps/val/b.jpg": 1})  # each image once
    assert leftovers(out) == [] and not (out / "download-failures.jsonl").exists()

    assert nocaps_cli(foil, meta, out) == 0
    assert "0 downloaded, 2 already complete, 0 failed" in capsys.readouterr().out
    assert sum(server.hits.values()) == 2  # the second run asked the server for nothing

    # what the evaluation reads: every item's image exists
    items = load_nocaps_foil(foil, out)
    assert len(items) == 8 and all(item.image.is_file() for item in items)


def test_nocaps_failures_are_rows_and_exit_1(tmp_path: Path, server: Server, capsys) -> None:
    server.routes.update(
        {
            "nocaps/val/good.png": Route(RED),
            "nocaps/val/html.jpg": Route(b"<html>rate limited</html>"),
            "nocaps/val/cut.png": Route(BLUE, cut=len(BLUE) // 2),
        }
    )
    names = ["good.png", "missing.jpg", "html.jpg", "cut.png"]
    foil, meta = write_nocaps(tmp_path, server, names, unlisted=("nowhere.jpg",))
    out = tmp_path / "images"
    failures = tmp_path / "failed.jsonl"

    assert nocaps_cli(foil, meta, out, "--retries", "1", "--failures", failures) == 1
    captured = capsys.readouterr()
    assert "1 downloaded, 0 already complete, 4 failed" in captured.out
    rows = {row["name"]: row for row in map(json.loads, failures.read_text().splitlines())}
    assert set(rows) == {"missing.jpg", "html.jpg", "cut.png", "nowhere.jpg"}
    assert rows["missing.jpg"]["error"] == "HTTP 404 Not Found"
    assert rows["missing.jpg"]["url"] == server.url("nocaps/val/missing.jpg")
    assert rows["html.jpg"]["error"].startswith("not a decodable image (UnidentifiedImageError")
    assert rows["cut.png"]["error"] == f"truncated: got {len(BLUE) // 2} of {len(BLUE)} bytes"
    assert rows["nowhere.jpg"] == {
        "name": "nowhere.jpg",
        "url": None,
        "error": "not listed in nocaps_val_4500_captions.json",
    }
    for name in rows:  # one readable line each on stderr
        assert f"failed: {name}: " in captured.err
    # nothing but the complete image under a final name, and no temporary file left
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]
    # a 404 is not retried; a bad body is (--retries 1: two requests)
    assert server.hits["nocaps/val/missing.jpg"] == 1
    assert server.hits["nocaps/val/html.jpg"] == 2 and server.hits["nocaps/val/cut.png"] == 2

    # once the server is fixed, a rerun fetches only what failed and clears the failures file
    server.routes["nocaps/val/html.jpg"] = Route(GREEN)
    server.routes["nocaps/val/cut.png"] = Route(BLUE)
    server.routes["nocaps/val/missing.jpg"] = Route(GREEN)
    write_nocaps(tmp_path, server, [*names, "nowhere.jpg"])
    server.routes["nocaps/val/nowhere.jpg"] = Route(RED)
    assert nocaps_cli(foil, meta, out, "--failures", failures) == 0
    assert "4 downloaded, 1 already complete, 0 failed" in capsys.readouterr().out
    assert not failures.exists() and server.hits["nocaps/val/good.png"] == 1


def test_checksums_mismatch_fails_and_match_passes(tmp_path: Path, server: Server, capsys) -> None:
    server.routes.update({"nocaps/val/a.png": Route(RED), "nocaps/val/b.png": Route(BLUE)})
    foil, meta = write_nocaps(tmp_path, server, ["a.png", "b.png"])
    sums = tmp_path / "MD5SUMS"
    wrong = hashlib.md5(b"something else").hexdigest()
    sums.write_text(f"{hashlib.md5(RED).hexdigest()}  a.png\n{wrong} *b.png\n")
    assert read_checksums(sums) == {"a.png": hashlib.md5(RED).hexdigest(), "b.png": wrong}
    out = tmp_path / "images"

    assert nocaps_cli(foil, meta, out, "--checksums", sums, "--retries", "0") == 1
    [row] = map(json.loads, (out / "download-failures.jsonl").read_text().splitlines())
    assert row["name"] == "b.png"
    assert row["error"] == f"MD5 mismatch (expected {wrong}, got {hashlib.md5(BLUE).hexdigest()})"
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "download-failures.jsonl"]
    capsys.readouterr()

    # an existing file that fails its checksum is not counted as complete: it is fetched again
    (out / "a.png").write_bytes(BLUE)
    sums.write_text(f"{hashlib.md5(RED).hexdigest()}  a.png\n{hashlib.md5(BLUE).hexdigest()}  b.png\n")
    assert nocaps_cli(foil, meta, out, "--checksums", sums) == 0
    assert (out / "a.png").read_bytes() == RED and (out / "b.png").read_bytes() == BLUE


def test_bad_checksum_file_and_missing_inputs_are_one_line_errors(
    tmp_path: Path, server: Server, capsys
) -> None:
    foil, meta = write_nocaps(tmp_path, server, ["a.png"])
    bad = tmp_path / "sums"
    bad.write_text("not-a-digest  a.png\n")
    out = tmp_path / "o"
    assert nocaps_cli(foil, meta, out, "--checksums", bad) == 1
    assert "line 1 is not '<md5>  <file name>'" in capsys.readouterr().err
    assert nocaps_cli(foil, tmp_path / "absent.json", out) == 1
    assert "nocaps meta file not found" in capsys.readouterr().err
    assert nocaps_cli(foil, meta, out, "--workers", "0") == 1
    assert "workers must be at least 1" in capsys.readouterr().err
    assert not out.exists()


def test_limit_and_existing_damaged_file(tmp_path: Path, server: Server, capsys) -> None:
    server.routes.update({f"nocaps/val/{c}.png": Route(RED) for c in "abc"})
    foil, meta = write_nocaps(tmp_path, server, ["a.png", "b.png", "c.png"])
    out = tmp_path / "images"
    out.mkdir()
    (out / "a.png").write_bytes(RED[:20])  # left half-written by some other tool
    assert nocaps_cli(foil, meta, out, "--limit", "2", "--workers", "1") == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    assert (out / "a.png").read_bytes() == RED
    assert "2 downloaded, 0 already complete, 0 failed" in capsys.readouterr().out


def test_real_nocaps_foil_file(tmp_path: Path) -> None:
    """The released nocaps-FOIL file: one task per distinct image, in file order, each its meta URL."""
    foil = require(SHARED / "annotations" / "nocaps-val-foil.json")
    names = list(dict.fromkeys(entry["image_path"] for entry in json.loads(foil.read_text())))
    meta = tmp_path / "meta.json"
    images = [{"file_name": n, "coco_url": f"http://mirror.invalid/{n}"} for n in names]
    meta.write_text(json.dumps({"images": images}))
    tasks = nocaps_tasks(foil, meta)
    assert len(tasks) == len(names) == 2500
    assert tasks[:2] == [FileTask(n, url=f"http://mirror.invalid/{n}") for n in names[:2]]
    assert all(isinstance(t, FileTask) and t.url == f"http://mirror.invalid/{t.name}" for t in tasks)


def test_command_module_imports_only_the_standard_library_at_top() -> None:
    """``clipalign.cli.download`` must not slow ``clipalign --help``: its top-level imports are standard
    library modules only; Pillow, pyarrow, tqdm and the download code load inside ``run``."""
    source = Path(download_cli.__file__).read_text(encoding="utf-8")
    top = [node for node in ast.parse(source).body if isinstance(node, ast.Import | ast.ImportFrom)]
    names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert names and all(name.split(".")[0] in sys.stdlib_module_names for name in names), names


# -------------------- the library


def test_transient_errors_are_retried(tmp_path: Path, server: Server) -> None:
    server.routes["x.png"] = Route(RED, fail_first=2)
    result = fetch_one(FileTask("x.png", url=server.url("x.png")), tmp_path, FAST)
    assert result == FileResult("x.png", "ok", url=server.url("x.png"))
    assert server.hits["x.png"] == 3
    server.routes["y.png"] = Route(RED, fail_first=5)
    result = fetch_one(FileTask("y.png", url=server.url("y.png")), tmp_path, FAST)
    assert (result.status, result.error) == ("failed", "HTTP 503 Service Unavailable")
    assert server.hits["y.png"] == 3 and not (tmp_path / "y.png").exists()


def test_unreachable_host_is_a_failure(tmp_path: Path) -> None:
    options = DownloadOptions(retries=0, timeout=5.0)
    result = fetch_one(FileTask("z.png", url="http://127.0.0.1:9/z.png"), tmp_path, options)
    assert result.status == "failed" and result.error.startswith("cannot reach http://127.0.0.1:9/z.png")
    assert leftovers(tmp_path) == [] and not (tmp_path / "z.png").exists()


def test_unsafe_names_are_refused(tmp_path: Path) -> None:
    assert safe_name("sub/a.png") == safe_name("sub//a.png") == "sub/a.png"
    for name in ("../a.png", "/etc/a.png", "a/../../b.png", "..\\a.png", ""):
        assert safe_name(name) is None, name
        result = fetch_one(FileTask(name, data=RED), tmp_path / "out", FAST)
        assert result.status == "failed" and "unsafe file name" in (result.error or "")
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "out").exists()


def test_task_must_have_one_source_and_a_hex_md5() -> None:
    with pytest.raises(ValueError, match="exactly one of url and data"):
        FileTask("a.png")
    with pytest.raises(ValueError, match="exactly one of url and data"):
        FileTask("a.png", url="http://x", data=b"x")
    with pytest.raises(ValueError, match="32 hex digits"):
        FileTask("a.png", data=b"x", md5="abc")


def test_stopped_download_leaves_no_file(tmp_path: Path, server: Server) -> None:
    """Ctrl-C during a transfer: the worker stops between chunks and removes its temporary file."""
    server.routes["slow.png"] = Route(RED, delay=0.05)
    stop = threading.Event()
    timer = threading.Timer(0.15, stop.set)
    timer.start()
    result = fetch_one(FileTask("slow.png", url=server.url("slow.png")), tmp_path, FAST, stop=stop)
    timer.join()
    assert (result.status, result.error) == ("failed", "interrupted")
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_stops_the_pool_and_cleans_up(tmp_path: Path, server: Server) -> None:
    server.routes["fast.png"] = Route(RED)
    server.routes.update({f"slow{i}.png": Route(BLUE, delay=0.05) for i in range(3)})
    tasks = [FileTask("fast.png", url=server.url("fast.png"))]
    tasks += [FileTask(f"slow{i}.png", url=server.url(f"slow{i}.png")) for i in range(3)]

    def interrupt(result: FileResult) -> None:
        raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        download_all(tasks, tmp_path, FAST, on_result=interrupt)
    assert time.monotonic() - started < len(BLUE) * 0.05 / 2  # did not wait for the slow bodies
    assert [p.name for p in tmp_path.iterdir()] == ["fast.png"]


def test_download_all_counts_and_passes_decided_results(tmp_path: Path, server: Server) -> None:
    server.routes.update({f"{i}.png": Route(RED) for i in range(10)})
    decided = FileResult("gone.png", "failed", "not listed")
    tasks: list[FileTask | FileResult] = [FileTask(f"{i}.png", url=server.url(f"{i}.png")) for i in range(10)]
    seen: list[FileResult] = []
    summary = download_all([decided, *tasks], tmp_path, FAST, on_result=seen.append)
    assert (summary.ok, summary.skipped, summary.failures) == (10, 0, [decided])
    assert len(seen) == 11 and seen[0] == decided
    again = download_all(tasks, tmp_path, FAST)
    assert (again.ok, again.skipped, again.failed) == (0, 10, 0)


def test_data_without_checksum_must_decode(tmp_path: Path) -> None:
    ok = fetch_one(FileTask("a.png", data=RED), tmp_path, FAST)
    bad = fetch_one(FileTask("b.png", data=RED[:-30]), tmp_path, FAST)
    assert ok.status == "ok" and (tmp_path / "a.png").read_bytes() == RED
    assert bad.status == "failed" and bad.error.startswith("not a decodable image")
    raw = DownloadOptions(verify_image=False)
    assert fetch_one(FileTask("c.bin", data=b"\x00\x01"), tmp_path, raw).status == "ok"
    assert fetch_one(FileTask("d.bin", data=b""), tmp_path, raw).error == "empty file"
    assert leftovers(tmp_path) == [] and not (tmp_path / "b.png").exists()


def test_nocaps_tasks_follow_the_foil_file(tmp_path: Path, server: Server) -> None:
    foil, meta = write_nocaps(tmp_path, server, ["b.png", "a.png"], unlisted=("c.png",))
    tasks = nocaps_tasks(foil, meta, checksums={"a.png": "0" * 32})
    assert tasks == [
        FileTask("b.png", url=server.url("nocaps/val/b.png")),
        FileTask("a.png", url=server.url("nocaps/val/a.png"), md5="0" * 32),
        FileResult("c.png", "failed", "not listed in nocaps_val_4500_captions.json"),
    ]
    assert nocaps_tasks(foil, meta, limit=1) == tasks[:1]
    meta.write_text(json.dumps({"images": [{"file_name": "a.png"}]}))
    with pytest.raises(ValueError, match=r"images\[0\] has no 'coco_url'"):
        nocaps_tasks(foil, meta)


# -------------------- Rich-HF from Pick-a-Pic tables


def write_tfrecord(path: Path, filenames: list[str]) -> Path:
    writer = TFRecordWriter(str(path))
    for name in filenames:
        writer.write(
            {
                "filename": (name.encode(), "byte"),
                "misalignment_score": (0.5, "float"),
                "prompt_misalignment_label": (b"1 0 1", "byte"),  # three prompt tokens, the 2nd misaligned
            }
        )
    writer.close()
    return path


PAIRS = [  # (caption, uid 0, image 0, uid 1, image 1): one Pick-a-Pic row each
    ("a red cube", "u1", RED, "other1", BLUE),
    ("a green ball", "other2", RED, "u2", GREEN),
    ("a blue sky", "u3", BLUE, "u1", RED),  # u1 again, in a later row
]


def write_pickapic(folder: Path, *, urls: Server | None = None, row_group_size: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    columns: dict[str, list] = {"caption": [], "image_0_uid": [], "image_1_uid": [], "label_0": []}
    for side in "01":
        columns[f"image_{side}_url" if urls else f"jpg_{side}"] = []
    for caption, uid0, img0, uid1, img1 in PAIRS:
        columns["caption"].append(caption)
        columns["image_0_uid"].append(uid0)
        columns["image_1_uid"].append(uid1)
        columns["label_0"].append(1.0)
        for side, uid, img in (("0", uid0, img0), ("1", uid1, img1)):
            if urls:
                urls.routes[f"pickapic/{uid}.png"] = Route(img)
                columns[f"image_{side}_url"].append(urls.url(f"pickapic/{uid}.png"))
            else:
                columns[f"jpg_{side}"].append(img)
    pq.write_table(pa.table(columns), folder / "test-00000.parquet", row_group_size=row_group_size)
    return folder


def richhf_cli(tfrecord: Path, pickapic: Path, out: Path, *extra: str) -> int:
    return run_cli(
        "richhf",
        "--annotations",
        tfrecord,
        "--pickapic",
        pickapic,
        "--out",
        out,
        "--no-progress",
        "--backoff",
        "0",
        *extra,
    )


def test_richhf_images_from_embedded_bytes_feed_the_loader(tmp_path: Path, capsys) -> None:
    tfrecord = write_tfrecord(
        tmp_path / "test.tfrecord", ["pickapic/u1.png", "pickapic/u2.png", "pickapic/u3.png"]
    )
    pickapic = write_pickapic(tmp_path / "pickapic")
    out = tmp_path / "richhf"
    assert richhf_cli(tfrecord, pickapic, out) == 0
    assert "3 downloaded, 0 already complete, 0 failed" in capsys.readouterr().out
    assert (out / "u1.png").read_bytes() == RED  # first row that has it
    assert (out / "u2.jpg").read_bytes() == GREEN  # suffix from the bytes: a JPEG
    assert (out / "u3.png").read_bytes() == BLUE
    prompts = json.loads((out / "prompts.json").read_text())
    assert prompts == {"u1": "a red cube", "u2": "a green ball", "u3": "a blue sky"}

    items = load_richhf(tfrecord, out, prompts=out / "prompts.json")
    assert [(i.id, i.image.name, i.caption, i.misaligned_phrases) for i in items] == [
        ("u1", "u1.png", "a red cube", ("red",)),
        ("u2", "u2.jpg", "a green ball", ("green",)),
        ("u3", "u3.png", "a blue sky", ("blue",)),
    ]
    assert richhf_cli(tfrecord, pickapic, out) == 0
    assert "0 downloaded, 3 already complete, 0 failed" in capsys.readouterr().out


def test_richhf_urls_missing_uids_and_limit(tmp_path: Path, server: Server, capsys) -> None:
    tfrecord = write_tfrecord(tmp_path / "test.tfrecord", ["a/u3.png", "a/u9.png", "a/u1.png", "a/u3.png"])
    assert richhf_uids(tfrecord) == ["u3", "u9", "u1"]
    assert richhf_uids(tfrecord, limit=2) == ["u3", "u9"]
    pickapic = write_pickapic(tmp_path / "pickapic", urls=server)
    out = tmp_path / "richhf"
    assert richhf_cli(tfrecord, pickapic / "test-00000.parquet", out) == 1
    assert "2 downloaded, 0 already complete, 1 failed" in capsys.readouterr().out
    [row] = map(json.loads, (out / "download-failures.jsonl").read_text().splitlines())
    assert row == {"name": "u9", "url": None, "error": "uid not found in the Pick-a-Pic tables"}
    assert (out / "u3.png").read_bytes() == BLUE and (out / "u1.png").read_bytes() == RED
    assert json.loads((out / "prompts.json").read_text()) == {"u1": "a red cube", "u3": "a blue sky"}
    assert server.hits["pickapic/other1.png"] == 0  # only the wanted images are fetched

    out2 = tmp_path / "limited"
    assert richhf_cli(tfrecord, pickapic, out2, "--limit", "1") == 0
    assert sorted(p.name for p in out2.iterdir()) == ["prompts.json", "u3.png"]


def test_pickapic_reads_image_columns_only_where_needed(tmp_path: Path, monkeypatch) -> None:
    pickapic = write_pickapic(tmp_path / "p", row_group_size=1)
    reads: list[tuple[int, tuple[str, ...]]] = []
    original = pq.ParquetFile.read_row_group

    def spy(self, i, columns=None, **kwargs):
        reads.append((i, tuple(columns)))
        return original(self, i, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    plan = PickAPicImages(["u2"], pickapic)
    assert [t.name for t in plan if isinstance(t, FileTask)] == ["u2.jpg"]
    assert [i for i, cols in reads if "jpg_0" in cols] == [1]  # the image bytes of row group 1 only
    assert [i for i, _ in reads] == [0, 1, 1]  # and it stops once every uid is found


def test_pickapic_table_errors(tmp_path: Path) -> None:
    pq.write_table(pa.table({"uid": ["a"], "caption": ["x"]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="not a Pick-a-Pic table"):
        list(PickAPicImages(["a"], tmp_path / "x.parquet"))
    pq.write_table(
        pa.table({"image_0_uid": ["a"], "image_1_uid": ["b"], "caption": ["x"]}), tmp_path / "y.parquet"
    )
    with pytest.raises(ValueError, match="neither jpg_0/jpg_1"):
        list(PickAPicImages(["a"], tmp_path / "y.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no \.parquet files"):
        PickAPicImages(["a"], tmp_path / "empty")


# -------------------- docs/reproduce.md stays true to the command line and the published table

DOC = Path(__file__).resolve().parents[1] / "docs" / "reproduce.md"
BACKBONES = {
    "B/32": "openai/clip-vit-base-patch32",
    "B/16": "openai/clip-vit-base-patch16",
    "L/14": "openai/clip-vit-large-patch14",
    "H/14": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
}


def doc_sections() -> dict[str, str]:
    """``## Title (`benchmark`)`` sections of the document by benchmark name."""
    text = DOC.read_text(encoding="utf-8")
    parts = re.split(r"^## .*?\(`([a-z0-9-]+)`\)\s*$", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1].split("\n## ")[0] for i in range(1, len(parts), 2)}


def doc_commands(text: str) -> list[list[str]]:
    """Every ``clipalign ...`` line of the text's code blocks, split like a shell would."""
    return [shlex.split(m.group(1)) for m in re.finditer(r"^\s*(clipalign .+)$", text, flags=re.MULTILINE)]


def test_reproduce_doc_commands_parse() -> None:
    parser = build_parser()
    commands = doc_commands(DOC.read_text(encoding="utf-8"))
    assert len(commands) >= 30
    for argv in commands:
        args = parser.parse_args(argv[1:])  # an unknown option or benchmark exits here
        if args.command == "eval":
            accepted = inspect.signature(BENCHMARKS[args.benchmark]).parameters
            for option in LOADER_OPTIONS:
                assert getattr(args, option) is None or option in accepted, argv


def test_reproduce_doc_rows_match_the_published_table() -> None:
    sections = doc_sections()
    assert set(PUBLISHED) <= set(sections)
    for benchmark, text in sections.items():
        for backbone, model in BACKBONES.items():
            runs = [a for a in doc_commands(text) if a[1] == "eval" and a[2] == benchmark and model in a]
            assert runs, f"{benchmark}: no command for {backbone}"
            if benchmark in PUBLISHED:
                [row] = [line for line in text.splitlines() if line.startswith(f"| {backbone} |")]
                published = PUBLISHED[benchmark].get(backbone)
                numbers = [float(x) for x in re.findall(r"\d+\.\d+", row)]
                if published is None:
                    assert numbers == [] and "see the paper" in row, row
                else:
                    assert numbers == list(published.values()), row
                    assert backbone_of(model) == backbone
