"""Broken checkpoint folders and bad devices fail with one clear line instead of loading garbage."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, PretrainedConfig

from clipalign import ModelLoadError, load_model
from clipalign.checkpoints import SYNTHETIC_CLIP
from clipalign.cli.main import main
from clipalign.models import CheckpointError, ClipAdapter, registry
from clipalign.models.checkpoint import check_tokenizer_size
from clipalign.testing import save_random_clip, tiny_clip_config

WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid tiny checkpoint; tests break copies of it."""
    return save_random_clip(tmp_path_factory.mktemp("valid"), tiny_clip_config(), SYNTHETIC_CLIP, seed=0)


@pytest.fixture
def broken(source: Path, tmp_path: Path) -> Path:
    """A fresh copy of ``source`` for a test to break."""
    return Path(shutil.copytree(source, tmp_path / "broken"))


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(path)
    return str(path)


def embeddings(model: ClipAdapter) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, text) embeddings of a fixed image and caption."""
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    with torch.no_grad():
        pixels = model.image_embeddings(model.preprocess([image]))
        text = model.text_embeddings(model.collate(model.encode_captions(["a dog"], "A photo of "))).embeds
    return pixels, text


def rewrite_weights(directory: Path, change) -> None:
    """Apply ``change`` to the state dict in ``model.safetensors`` and write it back."""
    state = load_file(directory / WEIGHTS)
    change(state)
    save_file(state, directory / WEIGHTS, metadata={"format": "pt"})


def test_valid_checkpoint_loads(source):
    model = load_model(source, device="cpu")
    assert len(model.encode_captions(["a dog"], "")[0].input_ids) == 4


@pytest.mark.parametrize("kept", [(), ("vocab.json",), ("merges.txt",)])
def test_missing_tokenizer_files(broken, kept):
    (broken / "tokenizer.json").unlink()
    for name in kept:
        shutil.copy(SYNTHETIC_CLIP / name, broken)
    with pytest.raises(
        ModelLoadError,
        match=r"no tokenizer files in .*broken \(tokenizer.json, vocab.json/merges.txt or spiece.model",
    ):
        load_model(broken, device="cpu")


def test_vocab_and_merges_are_enough(broken, source):
    (broken / "tokenizer.json").unlink()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(SYNTHETIC_CLIP / name, broken)
    ids = load_model(broken, device="cpu").encode_captions(["a dog"], "")[0].input_ids
    assert ids == load_model(source, device="cpu").encode_captions(["a dog"], "")[0].input_ids


def test_missing_preprocessor_config(broken):
    (broken / "preprocessor_config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"no preprocessor_config.json in .*broken"):
        load_model(broken, device="cpu")


def test_unreadable_config_in_a_directory_has_a_local_hint(broken):
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="complete checkpoint written by save_pretrained") as info:
        load_model(broken, device="cpu")
    assert "hf download" not in str(info.value)


def test_tokenizer_larger_than_the_embeddings(broken):
    tokenizer = AutoTokenizer.from_pretrained(broken)
    tokenizer.add_tokens(["<new-token>"])
    tokenizer.save_pretrained(broken)
    with pytest.raises(ModelLoadError, match="has 49409 tokens for a model with 49408 token embeddings"):
        load_model(broken, device="cpu")


@pytest.mark.parametrize(("tokens", "ok"), [(2, False), (24703, False), (24704, True), (49408, True)])
def test_tokenizer_size_check(tokens, ok):
    if ok:
        check_tokenizer_size("m", tokens, 49408)
    else:
        with pytest.raises(ModelLoadError, match="tokenizer files are missing or belong to another model"):
            check_tokenizer_size("m", tokens, 49408)


def test_hub_cache_without_tokenizer_files_is_not_asked_again(broken, tmp_path, monkeypatch):
    """A Hub name whose cached snapshot lacks the tokenizer: refused at once, with no second, online try."""
    (broken / "tokenizer.json").unlink()
    repo = tmp_path / "hub" / "models--acme--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    shutil.copytree(broken, repo / "snapshots" / "abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    tries = []
    load = registry._load
    monkeypatch.setattr(registry, "_load", lambda *args, **kw: tries.append(kw) or load(*args, **kw))
    with pytest.raises(CheckpointError, match="has 2 tokens for a model with 49408 token embeddings"):
        load_model("acme/tiny", device="cpu")
    assert tries == [{"local_files_only": True}]


def test_renamed_tensor(broken):
    rewrite_weights(broken, lambda s: s.__setitem__("foo.bar", s.pop("text_model.final_layer_norm.weight")))
    with pytest.raises(ModelLoadError) as info:
        load_model(broken, device="cpu")
    message = str(info.value)
    assert "do not match its config.json" in message and len(message.splitlines()) == 1
    assert "missing 1 (text_model.final_layer_norm.weight)" in message and "unexpected 1 (foo.bar)" in message


def test_many_missing_tensors_are_counted(broken):
    rewrite_weights(broken, lambda s: [s.pop(k) for k in list(s) if k.startswith("vision_model.encoder")])
    with pytest.raises(ModelLoadError, match=r"missing 64 \(vision_model\.encoder\.layers\.0\..*, \.\.\.\)"):
        load_model(broken, device="cpu")


def test_config_shape_mismatch(broken):
    config = json.loads((broken / "config.json").read_text())
    config["text_config"]["hidden_size"] = 64
    (broken / "config.json").write_text(json.dumps(config))
    shapes = r"wrong shape \(checkpoint vs config\) \d+ \(.*\(77, 32\) vs \(77, 64\)"
    with pytest.raises(ModelLoadError, match=shapes):
        load_model(broken, device="cpu")


@pytest.fixture
def pickled(broken: Path) -> Path:
    """The same weights as ``source`` in ``pytorch_model.bin`` only."""
    torch.save(load_file(broken / WEIGHTS), broken / "pytorch_model.bin")
    (broken / WEIGHTS).unlink()
    return broken


def test_pickle_weights_are_refused_by_default(pickled):
    with pytest.raises(ModelLoadError, match=r"pickle weights only .*allow_pickle=True"):
        load_model(pickled, device="cpu")


def test_pickle_weights_load_when_allowed(pickled, source):
    loaded = embeddings(load_model(pickled, device="cpu", allow_pickle=True))
    expected = embeddings(load_model(source, device="cpu"))
    for a, b in zip(loaded, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_allow_pickle_still_prefers_safetensors(broken, source):
    torch.save({"garbage": torch.zeros(1)}, broken / "pytorch_model.bin")
    loaded = embeddings(load_model(broken, device="cpu", allow_pickle=True))
    torch.testing.assert_close(loaded[0], embeddings(load_model(source, device="cpu"))[0], rtol=0, atol=0)


def flip_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:16] = bytes(b ^ 0xFF for b in data[:16])
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [flip_header, truncate, lambda p: p.write_bytes(b"")])
def test_corrupt_safetensors(broken, damage):
    damage(broken / WEIGHTS)
    with pytest.raises(ModelLoadError, match="weights file is corrupt or truncated") as info:
        load_model(broken, device="cpu")
    assert len(str(info.value).splitlines()) == 1


def test_non_finite_weights(broken):
    rewrite_weights(broken, lambda s: s["text_projection.weight"].view(-1)[3:5].fill_(float("nan")))
    with pytest.raises(ModelLoadError, match=r"NaN or inf values in 1 \(text_projection.weight\)"):
        load_model(broken, device="cpu")


def test_truncated_pickle_when_allowed(pickled):
    truncate(pickled / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        load_model(pickled, device="cpu", allow_pickle=True)


@pytest.mark.parametrize("device", ["foo", "cuda:x", "meta", 3.5])
def test_unknown_device(tmp_path, device):
    # the path does not exist: a ValueError, not a ModelLoadError, shows the device is checked first
    with pytest.raises(ValueError, match=r"unknown device '.*': use cpu, cuda, cuda:N or mps"):
        load_model(tmp_path / "absent", device=device)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_cuda_unavailable(tmp_path, monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available on this machine"):
        load_model(tmp_path / "absent", device=device)


def test_cuda_index_out_of_range(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"'cuda:2': this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        load_model(tmp_path / "absent", device="cuda:2")


def test_mps_unavailable(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="MPS is not available on this machine"):
        load_model(tmp_path / "absent", device="mps")


def test_device_checked_by_the_adapter_too(source):
    from clipalign.models import HFCLIPAdapter

    with pytest.raises(ValueError, match="unknown device 'foo'"):
        HFCLIPAdapter.from_pretrained(source, device="foo")


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_missing_tokenizer_is_one_line(broken, photo, capsys):
    (broken / "tokenizer.json").unlink()
    assert main(["words", photo, "a dog", "--model", str(broken)]) == 1
    assert "no tokenizer files in" in one_error_line(capsys)


def test_cli_renamed_tensor_is_one_line(broken, photo, capsys):
    rewrite_weights(broken, lambda s: s.__setitem__("foo.bar", s.pop("logit_scale")))
    assert main(["words", photo, "a dog", "--model", str(broken)]) == 1
    assert "missing 1 (logit_scale)" in one_error_line(capsys)


def test_cli_unknown_device_is_one_line(source, photo, capsys):
    assert main(["words", photo, "a dog", "--model", str(source), "--device", "foo"]) == 1
    assert "unknown device 'foo'" in one_error_line(capsys)


def test_cli_allow_pickle_loads_pickle_weights(pickled, tmp_path, capsys):
    """The CLI's --allow-pickle reaches load_model: refused without it, scored with it."""
    from PIL import Image

    from clipalign.cli.main import main

    image = tmp_path / "x.png"
    Image.new("RGB", (40, 30), (200, 20, 20)).save(image)
    argv = ["words", str(image), "a red square", "--model", str(pickled), "--json"]
    assert main(argv) == 1
    assert "--allow-pickle" in capsys.readouterr().err
    assert main([*argv, "--allow-pickle"]) == 0
    assert '"cosine"' in capsys.readouterr().out


def test_library_box_must_be_finite(adapter):
    from clipalign import TokenPatchInteractions
    from clipalign.testing import example_image

    [result] = TokenPatchInteractions(adapter, steps=2).attribute(
        [example_image()], ["a ball"], on_error="raise"
    )
    with pytest.raises(ValueError, match="four finite numbers"):
        result.box_word_scores((float("nan"), float("nan"), 5.0, 5.0))


class FailingConfig:
    """Its ``get_config_dict`` stands in for ``PretrainedConfig``'s, with which the registry reads
    config.json: raises what transformers raises for a Hub failure."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def get_config_dict(self, name: str, local_files_only: bool = False):
        raise OSError(f"cannot load {name}") from self.error


def hub_http_error(kind: type[Exception], status: int) -> Exception:
    import httpx2

    request = httpx2.Request("GET", "https://huggingface.co/api/models/acme/none")
    return kind(f"{status} Client Error", response=httpx2.Response(status, request=request))


def connection_error() -> Exception:
    """What huggingface_hub raises when DNS fails: LocalEntryNotFoundError, during the socket error."""
    exc = huggingface_hub.errors.LocalEntryNotFoundError("cannot find the requested files in the local cache")
    exc.__context__ = ConnectionError("[Errno -2] Name or service not known")
    return exc


@pytest.mark.parametrize(
    ("error", "problem"),
    [
        (
            lambda: hub_http_error(huggingface_hub.errors.RepositoryNotFoundError, 404),
            "there is no model 'acme/none' on the Hugging Face Hub",
        ),
        (
            lambda: hub_http_error(huggingface_hub.errors.GatedRepoError, 401),
            "acme/none is a gated model on the Hugging Face Hub",
        ),
        (connection_error, "could not reach the Hugging Face Hub ([Errno -2] Name or service not known)"),
    ],
)
def test_hub_failures_are_named_with_offline_hints(monkeypatch, error, problem):
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)  # as without HF_HUB_OFFLINE set
    monkeypatch.setattr(PretrainedConfig, "get_config_dict", FailingConfig(error()).get_config_dict)
    with pytest.raises(ModelLoadError) as info:
        load_model("acme/none", device="cpu")
    message = str(info.value)
    assert message.startswith(f"cannot load model 'acme/none': {problem}") and len(message.splitlines()) == 1
    assert "--model synthetic" in message and "`hf download acme/none --local-dir DIR`" in message
    assert "--model DIR" in message and "HF_HUB_OFFLINE" not in message


def test_a_path_that_does_not_exist_is_never_a_hub_name(monkeypatch, tmp_path):
    monkeypatch.setattr(
        PretrainedConfig,
        "get_config_dict",
        FailingConfig(RuntimeError("the Hub must not be asked")).get_config_dict,
    )
    for name in (str(tmp_path / "nope"), "./nope", "~/surely/not/here", "a/b/c"):
        with pytest.raises(ModelLoadError, match=r"the path '.*' does not exist$"):
            load_model(name, device="cpu")


def test_a_folder_without_config_is_not_sent_to_the_hub(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    monkeypatch.setattr(
        PretrainedConfig,
        "get_config_dict",
        FailingConfig(RuntimeError("the Hub must not be asked")).get_config_dict,
    )
    with pytest.raises(ModelLoadError) as info:
        load_model("models", device="cpu")
    message = str(info.value)
    assert "the folder 'models' has no config.json" in message and "hf download models" not in message
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is a file; pass the checkpoint's folder"):
        load_model("weights.bin", device="cpu")


def test_synthetic_is_the_bundled_model():
    model = load_model("synthetic", device="cpu")
    assert model.name == str(SYNTHETIC_CLIP) and model.num_text_layers == 4


@pytest.mark.slow
def test_hub_offline_mode_is_named_and_not_blamed_on_the_connection(photo):
    """HF_HUB_OFFLINE=1: the message says so, instead of "could not connect ... set HF_HUB_OFFLINE=1"."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "clipalign", "words", photo, "a dog", "--model", "acme/not-cached"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "acme/not-cached is not in the local Hugging Face cache, and HF_HUB_OFFLINE is set" in err
    assert "could not connect" not in err and "could not reach" not in err and "set HF_HUB_OFFLINE" not in err
    assert "--model synthetic" in err and "`hf download acme/not-cached --local-dir DIR`" in err
