"""``clipalign models`` (families, aliases, the local Hugging Face cache) and the refusal of checkpoints
clipalign has no adapter for, remote-code ones (``auto_map``) above all, before any of their code runs."""

from __future__ import annotations

import json
import re
import shutil
from typing import ClassVar

import pytest
from PIL import Image
from test_startup import heavy_modules_after, help_code

from clipalign import load_model
from clipalign.cli.main import main
from clipalign.models.errors import UnsupportedModelError

EVIL_CODE = """
from pathlib import Path
Path(__file__).with_name("code-ran").write_text("remote code ran")
"""
"""A repository's own Python module that leaves a mark when anything imports it."""


def remote_code_folder(path, model_type="jina_clip"):
    """A checkpoint folder whose config.json points transformers at the folder's own Python code."""
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": model_type,
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"},
    }
    (path / "config.json").write_text(json.dumps(config))
    for module in ("configuration_evil.py", "modeling_evil.py"):
        (path / module).write_text(EVIL_CODE)
    return path


def snapshot(cache, repo_id, files, repo_type="models", commit="0" * 40):
    """A repository in the Hugging Face hub cache layout: refs/main and one snapshot holding ``files``."""
    repo = cache / f"{repo_type}--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    folder = repo / "snapshots" / commit
    folder.mkdir(parents=True)
    for name, content in files.items():
        (folder / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return folder


@pytest.fixture
def cache(tmp_path):
    cache = tmp_path / "hub"
    clip = {"model_type": "clip"}
    snapshot(cache, "openai/clip-vit-base-patch32", {"config.json": clip, "model.safetensors": "w"})
    snapshot(cache, "old/clip-bin", {"config.json": clip, "pytorch_model.bin": "w"})
    snapshot(cache, "some/clip-config-only", {"config.json": clip})
    jina = {"model_type": "jina_clip", "auto_map": {"AutoModel": "jinaai/jina-clip-implementation--m.M"}}
    snapshot(cache, "jinaai/jina-clip-v2", {"config.json": jina, "model.safetensors": "w"})
    snapshot(cache, "Salesforce/blip-base", {"config.json": {"model_type": "blip"}, "model.safetensors": "w"})
    snapshot(cache, "laion/open-clip-only", {"open_clip_config.json": {}, "open_clip_model.safetensors": "w"})
    snapshot(cache, "someone/captions", {"data.json": "[]"}, repo_type="datasets")
    return cache


def models_json(capsys, *argv):
    assert main(["models", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_families_and_aliases(capsys, tmp_path):
    report = models_json(capsys, "--cache-dir", str(tmp_path / "no-cache"))
    [clip] = [f for f in report["families"] if f["model_type"] == "clip"]
    assert clip["adapter"] == "clipalign.models.hf_clip.HFCLIPAdapter"
    assert "vocab.json" in clip["needs"] and "preprocessor_config.json" in clip["needs"]
    assert report["aliases"]["synthetic"].endswith("synthetic-clip")
    assert report["cache_dir"] == str(tmp_path / "no-cache") and report["cached"] == []


def test_cached_models_are_marked_loadable_or_not(capsys, cache):
    report = models_json(capsys, "--cache-dir", str(cache))
    status = {m["repo_id"]: (m["loadable"], m["model_type"], m["status"]) for m in report["cached"]}
    assert list(status) == sorted(status, key=str.lower)  # datasets are left out
    assert status["openai/clip-vit-base-patch32"] == (True, "clip", "loadable")
    assert status["old/clip-bin"][:2] == (True, "clip") and "--allow-pickle" in status["old/clip-bin"][2]
    assert status["some/clip-config-only"] == (False, "clip", "no weights downloaded")
    assert status["jinaai/jina-clip-v2"][0] is False and "remote code" in status["jinaai/jina-clip-v2"][2]
    assert status["Salesforce/blip-base"] == (False, "blip", "clipalign has no adapter for model_type 'blip'")
    assert status["laion/open-clip-only"][:2] == (False, None)
    assert "no config.json" in status["laion/open-clip-only"][2]
    assert len(status) == 6


def test_text_output_marks_each_cached_model(capsys, cache):
    assert main(["models", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "clip: clipalign.models.hf_clip.HFCLIPAdapter" in out and "synthetic: " in out
    assert re.search(r"✓ openai/clip-vit-base-patch32 \(clip, \d+ B\): loadable\n", out)
    assert "✗ jinaai/jina-clip-v2 (jina_clip" in out and "✗ Salesforce/blip-base (blip" in out


def test_remote_code_is_refused_before_any_of_it_runs(tmp_path):
    folder = remote_code_folder(tmp_path / "jina")
    with pytest.raises(UnsupportedModelError) as info:
        load_model(folder, device="cpu")
    message = str(info.value)
    assert "\n" not in message and "remote code" in message and "'jina_clip'" in message
    assert "supported families: clip" in message and "clipalign models" in message
    assert not (folder / "code-ran").exists()


def test_cli_refuses_remote_code_in_one_line(tmp_path, capsys):
    folder = remote_code_folder(tmp_path / "jina")
    image = tmp_path / "p.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["words", str(image), "a cup", "--model", str(folder)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot load model") and "remote code" in err
    assert len(err.splitlines()) == 1 and not (folder / "code-ran").exists()


def test_unsupported_architecture_names_the_supported_families(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "blip"}))
    with pytest.raises(
        UnsupportedModelError, match=r"no adapter for model_type 'blip'; supported families: clip"
    ):
        load_model(tmp_path, device="cpu")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["X"]}))
    with pytest.raises(UnsupportedModelError, match="names no model_type"):
        load_model(tmp_path, device="cpu")


def test_a_supported_model_type_with_auto_map_loads_with_the_built_in_class(tiny_model_dir, tmp_path):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "clip")
    remote = remote_code_folder(tmp_path / "code")
    for module in ("configuration_evil.py", "modeling_evil.py"):
        shutil.copy(remote / module, folder / module)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModel": "modeling_evil.EvilModel",
    }
    (folder / "config.json").write_text(json.dumps(config))
    model = load_model(folder, device="cpu")
    assert type(model).__name__ == "HFCLIPAdapter" and not (folder / "code-ran").exists()


@pytest.mark.slow
def test_models_help_is_light():
    assert heavy_modules_after(help_code("models")) == []


class CachedConfig:
    """Its ``get_config_dict`` stands in for ``PretrainedConfig``'s, with which the registry reads
    config.json: a config.json found in the local cache only."""

    def __init__(self, config: dict) -> None:
        self.config = config

    def get_config_dict(self, name: str, local_files_only: bool = False):
        if not local_files_only:
            raise RuntimeError("the Hub must not be asked")
        return self.config, {}


def test_an_unsupported_cached_model_is_not_asked_for_again(monkeypatch):
    from transformers import PretrainedConfig

    monkeypatch.setattr(
        PretrainedConfig, "get_config_dict", CachedConfig({"model_type": "blip"}).get_config_dict
    )
    with pytest.raises(UnsupportedModelError, match="'acme/blip': clipalign has no adapter"):
        load_model("acme/blip", device="cpu")


class ToyAdapterFactory:
    """A toy family's adapter factory: records what it was asked to load."""

    loaded: ClassVar[list[str]] = []

    @classmethod
    def from_pretrained(cls, name_or_path, **settings):
        cls.loaded.append(str(name_or_path))
        return "toy adapter"


def test_register_adapter_by_name_or_object(monkeypatch, tmp_path, capsys):
    """A family registered as ``module:attribute`` is listed without importing it and imported when a
    checkpoint of its ``model_type`` loads; one registered as an object without ``needs`` is described
    by its docstring."""
    from clipalign.models import register_adapter, registry

    monkeypatch.setattr(registry, "_ADAPTERS", dict(registry._ADAPTERS))
    monkeypatch.setattr(registry, "_NEEDS", dict(registry._NEEDS))
    register_adapter("toy", "test_cli_models:ToyAdapterFactory", needs="config.json only")
    register_adapter("toy2", ToyAdapterFactory)
    report = models_json(capsys, "--cache-dir", str(tmp_path / "no-cache"))
    described = {f["model_type"]: f for f in report["families"]}
    assert described["toy"] == {
        "model_type": "toy",
        "adapter": "test_cli_models.ToyAdapterFactory",
        "needs": "config.json only",
    }
    assert described["toy2"]["needs"] == "A toy family's adapter factory: records what it was asked to load."
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "toy"}))
    assert load_model(folder, device="cpu") == "toy adapter"
    assert ToyAdapterFactory.loaded[-1] == str(folder)
