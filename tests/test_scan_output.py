"""Scan output safety: --overwrite deletes only clipalign's files, one writer per output, resume from
a verified manifest, paths checked before scoring, unreadable reports fail in one line, random kills."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import assert_close
from PIL import Image

from clipalign import CLIP4DM
from clipalign.cli.main import main
from clipalign.runners.local import scan
from clipalign.runners.output import MANIFEST, PartWriter, setting_changes
from clipalign.runners.sources import Columns, table_samples
from clipalign.settings import ScanSettings


def png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_pairs(folder: Path, n: int = 12) -> Path:
    """``n`` pairs over 6 images, the last three bad: a missing file, a corrupt image, an empty caption."""
    for i in range(6):
        (folder / f"{i}.png").write_bytes(png_bytes(i))
    (folder / "corrupt.png").write_bytes(b"not a png")
    rows = [{"image": f"{i % 6}.png", "caption": f"a red ball number {i}"} for i in range(n - 3)]
    rows += [
        {"image": "missing.png", "caption": "a cat"},
        {"image": "corrupt.png", "caption": "a dog"},
        {"image": "1.png", "caption": "  "},
    ]
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(adapter, pairs: Path, out: Path, **kwargs):
    """A local scan of ``pairs`` into ``out`` with parts of 3 rows."""
    options = ScanSettings(part_size=3, progress=False, overwrite=kwargs.pop("overwrite", False))
    samples = table_samples(pairs, Columns())
    return scan(samples, CLIP4DM(adapter, batch_size=3), out, {"m": 1}, options=options, **kwargs)


def stop_after(parts: int):
    """An ``on_part`` that interrupts the scan once ``parts`` parts are written."""
    written: list[Path] = []

    def on_part(path: Path) -> None:
        written.append(path)
        if len(written) == parts:
            raise KeyboardInterrupt

    return on_part


def test_overwrite_deletes_only_clipalign_files(adapter, tmp_path, monkeypatch, capsys):
    pairs = write_pairs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="did not write"):
        run(adapter, pairs, out, overwrite=True)
    (out / "notes.txt").unlink()
    run(adapter, pairs, out)
    (out / "notes.txt").write_text("mine")
    run(adapter, pairs, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert pq.read_table(out / "part-000000000000.parquet").num_rows == 3
    single = tmp_path / "scores.parquet"
    run(adapter, pairs, single)
    run(adapter, pairs, single, overwrite=True)
    assert pq.read_table(single).num_rows == 12 and (tmp_path / "0.png").exists()
    # --out . in a directory of other files: refused, nothing deleted, before any model loads
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    assert main(["scan", str(pairs), "--out", ".", "--overwrite", "--model", "no/such/model"]) == 1
    assert "did not write" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == before


def test_one_writer_per_output(tmp_path):
    for out in (tmp_path / "dir", tmp_path / "one.parquet"):
        busy = rf"being written by another scan \(pid {os.getpid()}\)"
        with PartWriter(out, {"m": 1}, ScanSettings()), pytest.raises(ValueError, match=busy):
            PartWriter(out, {"m": 1}, ScanSettings())
        with PartWriter(out, {"m": 1}, ScanSettings()) as writer:
            assert writer.completed() == 0


@pytest.mark.slow
def test_concurrent_scan_is_refused_and_the_first_completes(tiny_model_dir, tmp_path):
    # long enough (~25 s on 2 idle cores) that the first scan still runs once the second has started
    pairs = write_pairs(tmp_path, n=8000)
    out = tmp_path / "scores.parquet"
    argv = [sys.executable, "-m", "clipalign", "scan", str(pairs), "--out", str(out)]
    argv += ["--model", str(tiny_model_dir), "--part-size", "20", "--batch-size", "10", "--no-progress"]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parts = tmp_path / "scores.parquet.parts"
    deadline = time.time() + 120
    while not list(parts.glob("part-*.parquet")) and time.time() < deadline and first.poll() is None:
        time.sleep(0.1)
    assert first.poll() is None, "the first scan finished before the second started"
    second = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert second.returncode == 1
    assert f"being written by another scan (pid {first.pid})" in second.stderr
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    assert pq.read_table(out).column("index").to_pylist() == list(range(8000))


def test_interrupted_clean_up_keeps_the_complete_file(adapter, tmp_path, monkeypatch):
    pairs = write_pairs(tmp_path)
    out = tmp_path / "scores.parquet"
    calls = []
    unlink = Path.unlink

    def killed_after_first_part(self: Path, missing_ok: bool = False) -> None:
        if self.name.startswith("part-"):
            calls.append(self)
            if len(calls) == 2:
                raise KeyboardInterrupt
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", killed_after_first_part)
    with pytest.raises(KeyboardInterrupt):
        run(adapter, pairs, out)
    monkeypatch.undo()
    parts = tmp_path / "scores.parquet.parts"
    assert (
        not (parts / "part-000000000000.parquet").exists() and (parts / "part-000000000003.parquet").exists()
    )
    complete = pq.read_table(out)
    with pytest.raises(ValueError, match="already exists and is complete"):
        run(adapter, pairs, out)
    assert pq.read_table(out).equals(complete) and complete.num_rows == 12
    assert not parts.exists()  # the rerun finished the clean-up
    # the same state left by clipalign 0.1 (no manifest): refused, the complete file kept
    legacy = tmp_path / "legacy"
    run(adapter, pairs, legacy)
    (legacy / MANIFEST).unlink()
    (legacy / "part-000000000000.parquet").unlink()
    legacy.rename(parts)
    with pytest.raises(ValueError, match="leftover parts"):
        run(adapter, pairs, out)
    assert pq.read_table(out).equals(complete)


def test_resume_refuses_gaps_and_changed_parts(adapter, tmp_path):
    pairs = write_pairs(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(adapter, pairs, out, on_part=stop_after(3))
    saved = tmp_path / "saved"
    shutil.copytree(out, saved)
    (out / "part-000000000003.parquet").unlink()
    with pytest.raises(ValueError, match="gap at index 3"):
        run(adapter, pairs, out)
    shutil.copy(saved / "part-000000000003.parquet", out)
    damaged = bytearray((out / "part-000000000006.parquet").read_bytes())
    damaged[100] ^= 0x01
    (out / "part-000000000006.parquet").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="checksum"):
        run(adapter, pairs, out)
    # parts without a manifest (clipalign 0.1): a gap is refused, contiguous parts are adopted
    shutil.rmtree(out)
    shutil.copytree(saved, out)
    (out / MANIFEST).unlink()
    (out / "part-000000000003.parquet").unlink()
    with pytest.raises(ValueError, match="gap at index 3"):
        run(adapter, pairs, out)
    shutil.copy(saved / "part-000000000003.parquet", out)
    result = run(adapter, pairs, out)
    assert result.resumed_from == 9 and result.scored_now == 3
    assert pq.read_table(out).column("index").to_pylist() == list(range(12))
    with pytest.raises(ValueError, match="already exists and is complete"):
        run(adapter, pairs, out)


def test_part_missing_from_the_manifest_is_scored_again(adapter, tmp_path):
    """A kill between a part's rename and the manifest's leaves a part that was never committed."""
    pairs = write_pairs(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(adapter, pairs, out, on_part=stop_after(3))
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["parts"].pop()
    (out / MANIFEST).write_text(json.dumps(manifest))
    result = run(adapter, pairs, out)
    assert result.resumed_from == 6 and result.scored_now == 6
    assert pq.read_table(out).column("index").to_pylist() == list(range(12))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_read_only_directory_is_refused(tmp_path, capsys):
    pairs = write_pairs(tmp_path)
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["scan", str(pairs), "--out", str(locked / "x.parquet"), "--model", "no/such/model"]) == 1
    finally:
        locked.chmod(0o755)
    assert "cannot write to" in capsys.readouterr().err


def test_bad_out_paths_fail_before_the_model_loads(tmp_path, capsys):
    pairs = write_pairs(tmp_path)
    (tmp_path / "afile").write_text("x")
    pq.write_table(pa.table({"a": [1]}), tmp_path / "theirs.parquet")
    cases = {
        str(tmp_path / "afile" / "x.parquet"): "part of that path is a file",
        str(tmp_path / "afile"): "is a file",
        str(tmp_path / "pairs.jsonl.parquet"): None,
        str(tmp_path / "theirs.parquet"): "not a clipalign scan output",
    }
    (tmp_path / "pairs.jsonl.parquet").write_text("not parquet")
    for out, message in cases.items():
        assert main(["scan", str(pairs), "--out", out, "--model", "no/such/model", "--overwrite"]) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "no/such/model" not in err
        assert (message or "not a clipalign scan output") in err
    assert (tmp_path / "afile").read_text() == "x" and pq.read_table(
        tmp_path / "theirs.parquet"
    ).num_rows == 1


def test_empty_input_gives_an_empty_output_report_reads(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    for out in (tmp_path / "empty.parquet", tmp_path / "empty-dir"):
        argv = ["scan", str(tmp_path / "empty.jsonl"), "--out", str(out), "--model", str(tiny_model_dir)]
        assert main([*argv, "--no-progress"]) == 0
        capsys.readouterr()
        assert main(["report", str(out), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["items"] == 0
        assert main([*argv, "--no-progress"]) == 0
        assert "already complete with these settings" in capsys.readouterr().out
    assert pq.read_table(tmp_path / "empty.parquet").schema.names[-1] == "error"


def test_report_on_damaged_or_foreign_parquet_is_one_line(adapter, tmp_path, capsys):
    pairs = write_pairs(tmp_path)
    out = tmp_path / "scores.parquet"
    run(adapter, pairs, out)
    good = out.read_bytes()
    group = pq.ParquetFile(out).metadata.row_group(0)
    chunks = [group.column(i) for i in range(group.num_columns)]
    chunks = [c for c in chunks if c.path_in_schema in ("f_clipscore", "error")]
    ends = [(c.dictionary_page_offset or c.data_page_offset) + c.total_compressed_size for c in chunks]
    for position in [end - 8 for end in ends] + [len(good) - 2]:
        flipped = bytearray(good)
        flipped[position] ^= 0x10
        out.write_bytes(bytes(flipped))
        assert main(["report", str(out)]) == 1, position
        err = capsys.readouterr().err
        assert err.startswith("error:") and len(err.strip().splitlines()) == 1
    pq.write_table(pa.table({"index": [0], "clipscore": [0.5]}), tmp_path / "other.parquet")
    assert main(["report", str(tmp_path / "other.parquet")]) == 1
    assert "not a clipalign scan output" in capsys.readouterr().err


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    """An uninterrupted subprocess scan of 60 pairs: its rows, how long it took, and its arguments."""
    folder = tmp_path_factory.mktemp("kills")
    pairs = write_pairs(folder, n=60)
    argv = [
        str(pairs),
        "--model",
        str(tiny_model_dir),
        "--part-size",
        "7",
        "--batch-size",
        "4",
        "--no-progress",
    ]
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "clipalign", "scan", *argv, "--out", str(folder / "ref.parquet")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return pq.read_table(folder / "ref.parquet").to_pylist(), time.monotonic() - start, argv, folder


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "name"), [(0, "a.parquet"), (1, "b.parquet"), (2, "c-dir")])
def test_random_kills_then_reruns_match_an_uninterrupted_scan(reference, seed, name):
    rows, duration, argv, folder = reference
    out = folder / name
    rng = random.Random(seed)
    for attempt in range(12):
        proc = subprocess.Popen(
            [sys.executable, "-m", "clipalign", "scan", *argv, "--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if attempt < 6:
            try:
                proc.wait(timeout=rng.uniform(0.2, 1.1) * duration)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
        if proc.returncode == 0 or (proc.returncode == 1 and "already exists and is complete" in stderr):
            break
        assert proc.returncode == -signal.SIGKILL, stderr
    else:
        pytest.fail("the scan never completed")
    got = sorted(pq.read_table(out).to_pylist(), key=lambda r: r["index"])
    assert [r["index"] for r in got] == list(range(60))
    assert [r["error"] for r in got] == [r["error"] for r in rows]
    for x, y in zip(got, rows, strict=True):
        assert_close(x, y, f"row {x['index']}")


def test_identical_rerun_reports_the_finished_output_and_changed_settings_are_named(
    tiny_model_dir, tmp_path, capsys
):
    """A complete output rerun with the same settings prints its summary and succeeds; with other
    settings it is refused, each differing setting named with its old and new value."""
    pairs = write_pairs(tmp_path)
    for out in (tmp_path / "scores.parquet", tmp_path / "scores-dir"):
        argv = ["scan", str(pairs), "--out", str(out), "--model", str(tiny_model_dir), "--no-progress"]
        assert main(argv) == 0
        first = capsys.readouterr().out
        before = pq.read_table(out).to_pylist()
        assert main(argv) == 0
        again = capsys.readouterr().out
        assert f"{out} is already complete with these settings" in again
        summary = first[: first.index("wrote ")]
        assert summary in again  # the same table, failure line and frequent words
        assert main([*argv, "--epsilon", "0.001", "--layers", "2"]) == 1
        err = capsys.readouterr().err
        assert "epsilon: -5e-05 → 0.001" in err and "layers: 3 → 2" in err and "--overwrite" in err
        assert "template" not in err and len(err.strip().splitlines()) == 1
        assert pq.read_table(out).to_pylist() == before


def test_setting_changes_count_an_unrecorded_setting_as_its_old_default():
    old = {"epsilon": -5e-5, "layers": 3, "template": "A photo depicts "}
    assert setting_changes(old, {**old, "mode": "threshold"}) == []  # 0.1 output: threshold implied
    assert setting_changes(old, {**old, "mode": "most_negative"}) == ['mode: "threshold" → "most_negative"']
    assert setting_changes(old, {**old, "layers": 2, "model": "x"}) == [
        "layers: 3 → 2",
        'model: not recorded → "x"',
    ]
