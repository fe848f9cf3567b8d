"""Dataset scans: every input format, bad data recorded, kill-and-resume, bounded memory, summaries."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipalign import CLIP4DM
from clipalign.cli.main import main
from clipalign.runners.local import METADATA_KEY, scan
from clipalign.runners.sources import Columns, directory_samples, open_source, table_samples, tar_samples
from clipalign.runners.summary import summarize
from clipalign.settings import ScanSettings


def png_bytes(seed: int, size=(20, 16)) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path):
    for i in range(12):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(i))
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    return tmp_path


def write_jsonl(path, rows, extra_lines=()):
    with path.open("wb") as f:
        for row in rows:
            f.write((json.dumps(row) + "\n").encode())
        for line in extra_lines:
            f.write(line + b"\n")


def test_table_sources_agree(folder):
    rows = [{"image": f"{i}.png", "caption": f"a red ball {i}", "id": f"k{i}"} for i in range(4)]
    write_jsonl(folder / "p.jsonl", rows)
    with (folder / "p.csv").open("w") as f:
        f.write("image,caption,id\n" + "".join(f"{r['image']},{r['caption']},{r['id']}\n" for r in rows))
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows), folder / "p.parquet")
    columns = Columns(key="id")
    got = [list(table_samples(folder / f"p.{ext}", columns)) for ext in ("jsonl", "csv", "parquet")]
    assert got[0] == got[1] == got[2]
    assert [s.key for s in got[0]] == ["k0", "k1", "k2", "k3"] and got[0][2].image == folder / "2.png"


def test_bad_rows_are_reported_not_dropped(folder):
    rows = [
        {"image": "0.png", "caption": "ok"},
        {"image": "0.png", "caption": "ok"},  # the same pair again
        {"image": "0.png", "caption": "another caption of the same image"},
        {"caption": "no image"},
    ]
    write_jsonl(folder / "p.jsonl", rows, [b'{"image": "1.png", "caption": "caf\xe9"}', b"{not json"])
    samples = list(table_samples(folder / "p.jsonl", Columns()))
    assert [s.index for s in samples] == list(range(6))
    errors = [s.error for s in samples]
    assert errors[0] is None and errors[2] is None
    assert "duplicate pair" in errors[1] and "no 'image' column" in errors[3]
    assert "not valid UTF-8" in errors[4] and "invalid JSON" in errors[5]


def test_tar_shards_with_braces(folder):
    shard_dir = folder / "shards"
    shard_dir.mkdir()
    for shard in range(2):
        with tarfile.open(shard_dir / f"{shard:05d}.tar", "w") as tar:
            for i in range(3):
                key = f"{shard:05d}{i:04d}"
                members = {f"{key}.jpg": png_bytes(i), f"{key}.txt": f"a dog {i}".encode()}
                if (shard, i) == (1, 1):
                    members = {
                        f"{key}.json": json.dumps({"caption": "from json"}).encode(),
                        f"{key}.png": png_bytes(9),
                    }
                if (shard, i) == (1, 2):
                    members = {f"{key}.txt": b"no image here"}
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    samples = list(tar_samples(str(shard_dir / "{00000..00001}.tar"), Columns()))
    assert [s.index for s in samples] == list(range(6))
    assert samples[4].caption == "from json" and isinstance(samples[4].image, bytes)
    assert samples[5].error == "no image member"
    with pytest.raises(ValueError, match="not found"):
        list(tar_samples(str(shard_dir / "{00000..00003}.tar"), Columns()))


def test_directory_with_captions(folder):
    (folder / "captions.json").write_text(json.dumps({"0.png": "a cat", "1.png": "a dog"}))
    samples = list(directory_samples(folder, folder / "captions.json"))
    assert [s.caption for s in samples[:2]] == ["a cat", "a dog"]
    uncaptioned = [s for s in samples[2:]]
    assert len(uncaptioned) == 11 and all(s.error == "no caption for this image" for s in uncaptioned)
    with pytest.raises(ValueError, match="--captions"):
        open_source(str(folder), Columns())


def test_scan_output_schema_errors_and_metadata(adapter, folder):
    rows = [{"image": f"{i}.png", "caption": f"a red ball {i}"} for i in range(6)]
    rows += [{"image": "missing.png", "caption": "x"}, {"image": "corrupt.png", "caption": "y"}]
    rows += [{"image": "1.png", "caption": "   "}, {"image": "2.png"}]
    write_jsonl(folder / "p.jsonl", rows)
    settings = {"model": "tiny", "layers": 3}
    out = folder / "scores.parquet"
    result = scan(
        table_samples(folder / "p.jsonl", Columns()),
        CLIP4DM(adapter, batch_size=4),
        out,
        settings,
        options=ScanSettings(part_size=3, progress=False),
    )
    assert result.scored_now == 10 and not (folder / "scores.parquet.parts").exists()
    table = pq.read_table(out)
    assert table.column("index").to_pylist() == list(range(10))
    data = table.to_pylist()
    assert all(r["error"] is None and r["cosine"] is not None for r in data[:6])
    assert "no such file" in data[6]["error"] and "corrupt.png" in data[7]["error"]
    assert "empty" in data[8]["error"] and data[9]["error"] == "no caption" and data[9]["cosine"] is None
    [direct] = CLIP4DM(adapter).attribute([folder / "0.png"], ["a red ball 0"])
    assert data[0]["cosine"] == pytest.approx(direct.cosine, abs=1e-6)
    assert data[0]["word_scores"] == pytest.approx([w.score for w in direct.words], abs=1e-9)
    assert json.loads(pq.read_schema(out).metadata[METADATA_KEY]) == settings
    summary = summarize(out)
    assert summary.items == 10 and summary.failed == 4
    assert summary.failures == {
        "missing file": 1,
        "corrupt image": 1,
        "empty caption": 1,
        "missing caption": 1,
    }
    with pytest.raises(ValueError, match="already exists"):
        scan(
            table_samples(folder / "p.jsonl", Columns()),
            CLIP4DM(adapter),
            out,
            settings,
            options=ScanSettings(progress=False),
        )


@pytest.mark.slow
def test_resume_skips_written_parts_and_rejects_other_settings(adapter, folder, monkeypatch):
    write_jsonl(folder / "p.jsonl", [{"image": f"{i}.png", "caption": f"a ball {i}"} for i in range(12)])
    out = folder / "scores"
    attributor = CLIP4DM(adapter, batch_size=2)

    def parts_then_stop(limit):
        written = []

        def on_part(path):
            written.append(path)
            if len(written) == limit:
                raise KeyboardInterrupt

        return on_part

    with pytest.raises(KeyboardInterrupt):
        scan(
            table_samples(folder / "p.jsonl", Columns()),
            attributor,
            out,
            {"m": 1},
            options=ScanSettings(part_size=4, progress=False),
            on_part=parts_then_stop(2),
        )
    assert len(list(out.glob("part-*.parquet"))) == 2
    seen = []
    original = attributor.score_prepared
    monkeypatch.setattr(
        attributor, "score_prepared", lambda batch, **kw: seen.extend(batch.captions) or original(batch, **kw)
    )
    result = scan(
        table_samples(folder / "p.jsonl", Columns()),
        attributor,
        out,
        {"m": 1},
        options=ScanSettings(part_size=4, progress=False),
    )
    assert result.resumed_from == 8 and seen == [f"a ball {i}" for i in range(8, 12)]
    indices = pq.read_table(out).column("index").to_pylist()
    assert sorted(indices) == list(range(12))
    with pytest.raises(ValueError, match="other settings"):
        scan(
            table_samples(folder / "p.jsonl", Columns()),
            attributor,
            out,
            {"m": 2},
            options=ScanSettings(progress=False),
        )
    scan(
        table_samples(folder / "p.jsonl", Columns()),
        attributor,
        out,
        {"m": 2},
        options=ScanSettings(progress=False, overwrite=True),
    )
    assert sorted(pq.read_table(out).column("index").to_pylist()) == list(range(12))


def run_scan(args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "clipalign", "scan", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.mark.slow
def test_killed_process_resumes_without_duplicates_or_gaps(tiny_model_dir, folder):
    write_jsonl(
        folder / "p.jsonl",
        [{"image": f"{i % 12}.png", "caption": f"a red ball number {i}"} for i in range(3000)],
    )
    out = folder / "scores.parquet"
    args = [
        str(folder / "p.jsonl"),
        "--out",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--part-size",
        "100",
        "--batch-size",
        "50",
        "--no-progress",
    ]
    proc = run_scan(args)
    parts = folder / "scores.parquet.parts"
    deadline = time.time() + 240
    while len(list(parts.glob("part-*.parquet"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the scan finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(list(parts.glob("part-*.parquet")))
    assert 3 <= written < 30
    proc = run_scan(args)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert "resumed after" in stdout
    indices = pq.read_table(out).column("index").to_pylist()
    assert len(indices) == 3000 and sorted(indices) == list(range(3000))


@pytest.mark.slow
def test_memory_is_bounded_regardless_of_size(tiny_model_dir, folder):
    """Peak RSS of a 20,000-pair scan stays within a small margin of a 2,000-pair scan's."""

    def peak_rss(n):
        write_jsonl(
            folder / f"p{n}.jsonl", [{"image": f"{i % 12}.png", "caption": f"a dog {i}"} for i in range(n)]
        )
        argv = [f"{folder}/p{n}.jsonl", "--out", f"{folder}/o{n}", "--model", str(tiny_model_dir)]
        argv += ["--batch-size", "64", "--part-size", "1000", "--no-progress"]
        code = (
            "import resource, sys; from clipalign.cli.main import main; "
            f"rc = main(['scan', *{argv!r}]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.strip().splitlines()[-1]) / 1024  # MiB

    small, large = peak_rss(2000), peak_rss(20000)
    assert pq.ParquetDataset(folder / "o20000").read().num_rows == 20000
    assert large - small < 60, f"peak RSS grew from {small:.0f} MiB to {large:.0f} MiB"


def test_cli_scan_and_report(tiny_model_dir, folder, capsys):
    (folder / "captions.json").write_text(json.dumps({f"{i}.png": f"a red ball {i}" for i in range(5)}))
    out = folder / "out.parquet"
    argv = ["scan", str(folder), "--captions", str(folder / "captions.json"), "--out", str(out)]
    assert (
        main([*argv, "--model", str(tiny_model_dir), "--no-progress", "--histogram", str(folder / "h.png")])
        == 0
    )
    printed = capsys.readouterr().out
    assert "failed: 8" in printed and "no caption" not in printed
    assert Image.open(folder / "h.png").format == "PNG"
    assert main(["report", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["items"] == 13 and report["failures"] == {"missing caption": 8}
    assert report["settings"]["model"] == str(tiny_model_dir)
    os.remove(out)
    assert main(["report", str(out)]) == 1


def test_jpeg_draft_size_comes_from_the_model_input_and_is_off_without_a_fixed_one(
    adapter, tmp_path, monkeypatch
):
    """``--jpeg-draft`` reduces a JPEG to twice the model input: CLIP's crop, SigLIP's square; NaFlex
    SigLIP 2 keeps each image's aspect ratio (its pixels are patch rows, not an image), so no draft, and a
    draft scan with it decodes every image whole."""
    import clipalign.runners.local as local
    from clipalign import load_model
    from clipalign.testing import save_random_siglip, save_random_siglip2

    siglip = load_model(save_random_siglip(tmp_path / "siglip", seed=0), device="cpu")
    naflex = load_model(save_random_siglip2(tmp_path / "siglip2", seed=0), device="cpu")
    side = siglip.image_geometry(10, 10).crop[2]
    assert local.draft_size(adapter) == (64, 64) and local.draft_size(siglip) == (2 * side, 2 * side)
    assert local.draft_size(naflex) is None

    drafts = []
    original = local.load_image

    def spy(source, *, draft=None, **kwargs):
        drafts.append(draft)
        return original(source, draft=draft, **kwargs)

    monkeypatch.setattr(local, "load_image", spy)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(np.full((96, 128, 3), 40 * i, dtype=np.uint8)).save(photos / f"{i}.jpg")
    (tmp_path / "captions.json").write_text(json.dumps({"0.jpg": "a red ball", "1.jpg": "a blue cube"}))
    samples = directory_samples(photos, tmp_path / "captions.json")
    options = ScanSettings(workers=1, progress=False, jpeg_draft=True)
    scan(samples, CLIP4DM(naflex, batch_size=2), tmp_path / "out.parquet", {"t": 1}, options=options)
    assert drafts == [None, None]
