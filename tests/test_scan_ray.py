"""The Ray Data engine on a local Ray instance: the same output as the local engine, row by row."""

from __future__ import annotations

import functools
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

pytest.importorskip(
    "ray", reason="the Ray engine tests need Ray: pip install -e '.[ray]' in the clipalign checkout"
)
pytest.importorskip(
    "ray.data", reason="the Ray engine tests need Ray Data: pip install -e '.[ray]' in the clipalign checkout"
)

import ray
from conftest import assert_close

from clipalign import CLIP4DM, load_model
from clipalign.cli.main import main
from clipalign.runners.local import METADATA_KEY, scan
from clipalign.runners.ray_engine import scan_ray
from clipalign.runners.sources import Columns, open_source
from clipalign.settings import ModelSpec, ScanSettings, WordSettings

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def pairs(tmp_path):
    """40 JSONL pairs: 36 scorable, a missing file, a corrupt image, no caption and a repeated pair."""
    for i in range(6):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(i))
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    rows = [{"image": f"{i % 6}.png", "caption": f"a red ball number {i} on the grass"} for i in range(36)]
    rows[5]["caption"] = "a " + "very " * 90 + "long caption"  # truncated to 77 tokens
    rows += [
        {"image": "missing.png", "caption": "a cat"},
        {"image": "corrupt.png", "caption": "a dog"},
        {"image": "1.png"},
        dict(rows[3]),
    ]
    with (tmp_path / "pairs.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return tmp_path / "pairs.jsonl"


def assert_same_rows(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(sorted(a, key=lambda r: r["index"]), sorted(b, key=lambda r: r["index"]), strict=True):
        assert x.keys() == y.keys()
        for name in x:
            assert_close(x[name], y[name], f"row {x['index']} {name}")


def test_cli_ray_engine_matches_local_engine(local_ray, tiny_model_dir, pairs, capsys):
    """``clipalign scan --engine ray`` writes what the local engine writes: rows, schema, metadata."""
    argv = ["scan", str(pairs), "--model", str(tiny_model_dir), "--batch-size", "8", "--part-size", "16"]
    local_out, ray_out = pairs.parent / "local.parquet", pairs.parent / "ray.parquet"
    assert main([*argv, "--out", str(local_out), "--no-progress"]) == 0
    ray_flags = ["--engine", "ray", "--concurrency", "2", "--num-cpus", "0.5", "--no-progress"]
    assert main([*argv, "--out", str(ray_out), *ray_flags]) == 0
    assert "40 items, 4 failed" in capsys.readouterr().out
    assert not (pairs.parent / "ray.parquet.parts").exists()
    local_table, ray_table = pq.read_table(local_out), pq.read_table(ray_out)
    assert ray_table.schema == local_table.schema
    assert ray_table.schema.metadata[METADATA_KEY] == local_table.schema.metadata[METADATA_KEY]
    ray_rows = ray_table.to_pylist()
    assert [r["index"] for r in ray_rows] == list(range(40))
    errors = {r["index"]: r["error"] for r in ray_rows if r["error"] is not None}
    assert sorted(errors) == [36, 37, 38, 39] and "no such file" in errors[36]
    assert ray_rows[5]["truncated_words"]
    assert_same_rows(ray_rows, local_table.to_pylist())

    assert main(["report", str(ray_out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["items"] == 40 and report["failed"] == 4
    assert report["failures"] == {"missing file": 1, "corrupt image": 1, "missing caption": 1, "duplicate": 1}
    assert report["settings"]["model"] == str(tiny_model_dir)
    # complete with the same settings: nothing to score, the summary again, exit 0
    assert main([*argv, "--out", str(ray_out), *ray_flags]) == 0
    captured = capsys.readouterr()
    assert "already complete with these settings" in captured.out + captured.err
    assert pq.read_table(ray_out).to_pylist() == ray_rows


def test_ray_engine_resumes_after_written_parts(local_ray, tiny_model_dir, pairs):
    """A scan stopped after two parts resumes on Ray after them; other settings are refused."""
    out = pairs.parent / "parts"
    words = WordSettings(batch_size=8)
    attributor = CLIP4DM(load_model(tiny_model_dir, device="cpu"), settings=words)
    written = []

    def stop_after_two(path):
        written.append(path)
        if len(written) == 2:
            raise KeyboardInterrupt

    kwargs = {"options": ScanSettings(part_size=8, progress=False)}
    spec = ModelSpec(name=str(tiny_model_dir))
    with pytest.raises(KeyboardInterrupt):
        scan(open_source(str(pairs), Columns()), attributor, out, {"m": 1}, on_part=stop_after_two, **kwargs)
    first_parts = pq.ParquetDataset(out).read().to_pylist()
    factory = functools.partial(open_source, str(pairs), Columns())
    with pytest.raises(ValueError, match="other settings"):
        scan_ray(factory, spec, out, {"m": 2}, words=words, **kwargs)
    result = scan_ray(factory, spec, out, {"m": 1}, words=words, **kwargs)
    assert result.resumed_from == 16 and result.scored_now == 24
    assert len(list(out.glob("part-*.parquet"))) == 5
    resumed = pq.ParquetDataset(out).read()
    assert json.loads(resumed.schema.metadata[METADATA_KEY]) == {"m": 1}
    assert resumed.column("index").to_pylist() == list(range(40))
    assert resumed.to_pylist()[:16] == first_parts  # untouched

    local_out = pairs.parent / "local"
    scan(open_source(str(pairs), Columns()), attributor, local_out, {"m": 1}, **kwargs)
    assert_same_rows(resumed.to_pylist(), pq.ParquetDataset(local_out).read().to_pylist())
